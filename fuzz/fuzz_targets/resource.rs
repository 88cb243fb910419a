//! Resource parsing and rule decisions on arbitrary input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_core::auth::{Access, Rule, decide, parse_resource};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (scope, res) = s.split_once('\n').unwrap_or(("", s));
    if let Ok(r) = parse_resource(res) {
        assert_eq!(parse_resource(&r.to_string()).ok(), Some(r.clone()));
        let rule = Rule { id: "f".into(), scope: scope.into(), resource: r.clone(), access: Access::Denied, priority: 1 };
        let _ = decide(&[rule], None, "micro", &r);
    }
});
