//! Conformance of `broker` backends.
