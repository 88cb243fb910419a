//! Auth in the framework: signed access tokens (verified locally, without a call) and the
//! rules that decide who may call what.

pub mod token;
