//! Metadata keys carried on every call (gRPC metadata and HTTP headers alike).

/// The namespace a call acts in.
pub const NAMESPACE: &str = "micro-namespace";
/// The request id, generated at the edge when absent.
pub const REQUEST_ID: &str = "micro-id";
/// The name of the calling service.
pub const FROM_SERVICE: &str = "micro-from-service";
/// Bearer credentials (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// gRPC deadline (`<digits><unit>`; units `H M S m u n`).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// gRPC status code trailer.
pub const GRPC_STATUS: &str = "grpc-status";
/// gRPC status message trailer (percent-encoded).
pub const GRPC_MESSAGE: &str = "grpc-message";

/// Content type of gRPC with protobuf messages.
pub const CONTENT_TYPE_GRPC: &str = "application/grpc";
/// Content type of gRPC with JSON messages.
pub const CONTENT_TYPE_GRPC_JSON: &str = "application/grpc+json";
/// Content type of plain JSON (HTTP/1.1 unary calls).
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Parses a `grpc-timeout` value (`100m`, `5S`, `1H` …) into a duration.
///
/// Returns `None` for a malformed value (at most 8 digits and one unit letter).
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (milliseconds, rounded up).
pub fn format_grpc_timeout(d: std::time::Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms < 100_000_000 { format!("{ms}m") } else { format!("{}S", d.as_secs().min(99_999_999)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeout_round_trips() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(&format_grpc_timeout(Duration::from_secs(5))), Some(Duration::from_secs(5)));
        for bad in ["", "m", "10", "10x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
