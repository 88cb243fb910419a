//! `application/x-www-form-urlencoded` text — query strings and HTML forms — decoded the
//! one way the project does it: `+` is a space, `%XX` a byte, and the result must be UTF-8.

use micro_core::Status;

/// The `name=value` pairs of `text`, in order (a name without `=` has an empty value).
pub fn pairs(text: &str) -> Result<Vec<(String, String)>, Status> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// One name or value.
pub fn decode(s: &str) -> Result<String, Status> {
    unescape(&s.replace('+', " "))
}

/// `%XX` escapes only (a path segment, where `+` is itself). A `%` not followed by two
/// hex digits is refused, as are bytes that are not UTF-8.
pub fn unescape(s: &str) -> Result<String, Status> {
    let b = s.as_bytes();
    let malformed = b.iter().enumerate().any(|(i, c)| {
        *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(Status::bad_request(
            "micro",
            format!("malformed percent escape in {s:?}: use %XX with two hex digits"),
        ));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Status::bad_request("micro", "the query string, form or path is not valid UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        let p = pairs("a=1&b=hello+world&c=%26%3D%C3%A9&d&&a=2").unwrap();
        let want = [("a", "1"), ("b", "hello world"), ("c", "&=é"), ("d", ""), ("a", "2")];
        assert_eq!(p, want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
        // A `%` without two hex digits, and bytes that are not UTF-8, are refused.
        for bad in ["100%", "%zz", "%4", "a%g0"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert!(pairs("x=%ff").is_err());
        assert_eq!(unescape("a+b%20c").unwrap(), "a+b c");
    }
}
