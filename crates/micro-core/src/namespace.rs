//! Namespaces: every registry entry, key, topic and account lives in one.

/// The namespace used when nothing else names one.
pub const DEFAULT: &str = "micro";

/// Checks that a namespace name is valid: 1–63 characters of `a-z`, `0-9` and `-`,
/// starting with a letter or digit.
pub fn validate(ns: &str) -> Result<(), crate::Status> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(crate::Status::bad_request(
            "micro",
            format!("invalid namespace {ns:?}: use 1-63 characters of a-z, 0-9 and '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn validates_names() {
        assert!(super::validate("micro").is_ok());
        assert!(super::validate("team-1").is_ok());
        for bad in ["", "-x", "Foo", "a.b", "a/b", &"x".repeat(64)] {
            assert!(super::validate(bad).is_err(), "{bad}");
        }
    }
}
