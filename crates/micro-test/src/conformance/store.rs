//! Conformance of `store` backends.
