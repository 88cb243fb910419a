//! Conformance of `events` backends.
