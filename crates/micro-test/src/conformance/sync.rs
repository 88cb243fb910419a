//! Conformance of `sync` backends.
