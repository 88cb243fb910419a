//! Conformance of `blob` backends.
