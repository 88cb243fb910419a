//! Conformance of `config` backends.
