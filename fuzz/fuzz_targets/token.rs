//! Access-token verification on arbitrary input: never panics, never accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_server::Signer;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static VERIFIER: OnceLock<micro::auth::token::Verifier> = OnceLock::new();
    let v = VERIFIER.get_or_init(|| Signer::ephemeral().verifier());
    let token = String::from_utf8_lossy(data);
    assert!(v.verify(&token).is_err(), "accepted a token nobody signed");
});
