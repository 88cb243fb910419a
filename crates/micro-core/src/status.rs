//! One status type for every transport, with a fixed code table.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The status codes of Micro: the gRPC codes, each with a fixed HTTP status.
///
/// | Code | gRPC | HTTP |
/// |---|---|---|
/// | `Ok` | 0 | 200 |
/// | `Cancelled` | 1 | 408 |
/// | `Unknown` | 2 | 500 |
/// | `InvalidArgument` | 3 | 400 |
/// | `DeadlineExceeded` | 4 | 504 |
/// | `NotFound` | 5 | 404 |
/// | `AlreadyExists` | 6 | 409 |
/// | `PermissionDenied` | 7 | 403 |
/// | `ResourceExhausted` | 8 | 429 |
/// | `FailedPrecondition` | 9 | 400 |
/// | `Aborted` | 10 | 409 |
/// | `OutOfRange` | 11 | 400 |
/// | `Unimplemented` | 12 | 501 |
/// | `Internal` | 13 | 500 |
/// | `Unavailable` | 14 | 503 |
/// | `DataLoss` | 15 | 500 |
/// | `Unauthenticated` | 16 | 401 |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error with no better code.
    Unknown = 2,
    /// The request is malformed or invalid.
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// The service, endpoint or entity does not exist.
    NotFound = 5,
    /// The entity already exists.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A quota or limit was hit.
    ResourceExhausted = 8,
    /// The system is not in a state that allows this.
    FailedPrecondition = 9,
    /// The operation was aborted (usually a concurrency conflict).
    Aborted = 10,
    /// A value is out of its valid range.
    OutOfRange = 11,
    /// The endpoint is not implemented.
    Unimplemented = 12,
    /// A bug or broken invariant on the server.
    Internal = 13,
    /// The service is unreachable or overloaded; the call may be retried.
    Unavailable = 14,
    /// Data was lost or corrupted.
    DataLoss = 15,
    /// No valid credentials.
    Unauthenticated = 16,
}

impl Code {
    /// The gRPC code number.
    pub fn grpc(self) -> i32 {
        self as i32
    }

    /// The code for a gRPC code number (unknown numbers map to `Unknown`).
    pub fn from_grpc(n: i32) -> Code {
        use Code::*;
        match n {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The HTTP status of this code.
    pub fn http(self) -> u16 {
        use Code::*;
        match self {
            Ok => 200,
            Cancelled => 408,
            Unknown | Internal | DataLoss => 500,
            InvalidArgument | FailedPrecondition | OutOfRange => 400,
            DeadlineExceeded => 504,
            NotFound => 404,
            AlreadyExists | Aborted => 409,
            PermissionDenied => 403,
            ResourceExhausted => 429,
            Unimplemented => 501,
            Unavailable => 503,
            Unauthenticated => 401,
        }
    }

    /// The code for an HTTP status (the inverse of [`Code::http`], plus common extras).
    pub fn from_http(status: u16) -> Code {
        use Code::*;
        match status {
            200..=299 => Ok,
            400 | 405 | 411 | 415 | 422 => InvalidArgument,
            401 => Unauthenticated,
            403 => PermissionDenied,
            404 => NotFound,
            408 => Cancelled,
            409 => AlreadyExists,
            412 => FailedPrecondition,
            413 | 429 => ResourceExhausted,
            416 => OutOfRange,
            501 => Unimplemented,
            502 | 503 => Unavailable,
            504 => DeadlineExceeded,
            400..=499 => FailedPrecondition,
            _ => Internal,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The outcome of a failed call, the same over gRPC, HTTP and the CLI.
///
/// Over HTTP it is the JSON body `{"id","code","detail","status"}` where `code` is the
/// HTTP status; over gRPC it is `grpc-status` and `grpc-message` with the same detail.
///
/// The error that caused it, when there is one, stays attached as its
/// [`std::error::Error::source`] (for logs and callers in the same process); only the
/// code, id and detail cross the wire, and two statuses are equal when those are.
#[derive(Clone, Debug)]
pub struct Status {
    code: Code,
    http: u16,
    id: String,
    detail: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PartialEq for Status {
    fn eq(&self, other: &Status) -> bool {
        (self.code, self.http, &self.id, &self.detail) == (other.code, other.http, &other.id, &other.detail)
    }
}

impl Eq for Status {}

impl Status {
    /// A status with a code, the id of the service that reports it, and a detail.
    pub fn new(code: Code, id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status { code, http: code.http(), id: id.into(), detail: detail.into(), source: None }
    }

    /// Keeps `cause` as the status's source (it is not sent to callers).
    pub fn with_source(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Status {
        self.source = Some(Arc::new(cause));
        self
    }

    /// Overrides the HTTP status (for example 413 for an oversize body, which gRPC
    /// reports as `ResourceExhausted`).
    pub fn with_http_status(mut self, http: u16) -> Status {
        self.http = http;
        self
    }

    /// Sets the id (the reporting service) if none was set.
    pub fn or_id(mut self, id: &str) -> Status {
        if self.id.is_empty() {
            self.id = id.to_string();
        }
        self
    }

    /// 400 / `InvalidArgument`.
    pub fn bad_request(id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, id, detail)
    }
    /// 404 / `NotFound`.
    pub fn not_found(id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status::new(Code::NotFound, id, detail)
    }
    /// 500 / `Internal`.
    pub fn internal(id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status::new(Code::Internal, id, detail)
    }
    /// 503 / `Unavailable`.
    pub fn unavailable(id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status::new(Code::Unavailable, id, detail)
    }
    /// 504 / `DeadlineExceeded`.
    pub fn deadline_exceeded(id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status::new(Code::DeadlineExceeded, id, detail)
    }
    /// 501 / `Unimplemented`.
    pub fn unimplemented(id: impl Into<String>, detail: impl Into<String>) -> Status {
        Status::new(Code::Unimplemented, id, detail)
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }
    /// The HTTP status.
    pub fn http_status(&self) -> u16 {
        self.http
    }
    /// The id of the service that reported the error.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The JSON error body.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            id: self.id.clone(),
            code: self.http,
            detail: self.detail.clone(),
            status: reason(self.http).to_string(),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Parses a JSON error body; `None` if it is not one.
    pub fn from_json(body: &[u8]) -> Option<Status> {
        let b: ErrorBody = serde_json::from_slice(body).ok()?;
        if b.code < 400 {
            return None;
        }
        Some(Status { code: Code::from_http(b.code), http: b.code, id: b.id, detail: b.detail, source: None })
    }

    /// The status carried by gRPC `grpc-status`/`grpc-message` headers or trailers,
    /// `None` if there is no `grpc-status`; `Ok(())` when it is 0.
    pub fn from_grpc_headers(headers: &http::HeaderMap) -> Option<Result<(), Status>> {
        let code = headers.get(crate::metadata::GRPC_STATUS)?;
        let code: i32 = code.to_str().ok().and_then(|s| s.trim().parse().ok()).unwrap_or(2);
        if code == 0 {
            return Some(Ok(()));
        }
        let detail = headers
            .get(crate::metadata::GRPC_MESSAGE)
            .and_then(|v| v.to_str().ok())
            .map(|m| percent_encoding::percent_decode_str(m).decode_utf8_lossy().into_owned())
            .unwrap_or_default();
        let (id, detail) = split_id(&detail);
        Some(Err(Status::new(Code::from_grpc(code), id, detail)))
    }

    /// Writes `grpc-status` and `grpc-message` into a header map (trailers or a
    /// trailers-only response).
    pub fn write_grpc_headers(&self, headers: &mut http::HeaderMap) {
        headers.insert(crate::metadata::GRPC_STATUS, http::HeaderValue::from(self.code.grpc()));
        let msg = if self.id.is_empty() { self.detail.clone() } else { format!("{}: {}", self.id, self.detail) };
        let enc = percent_encoding::utf8_percent_encode(&msg, GRPC_MESSAGE_SET).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&enc) {
            headers.insert(crate::metadata::GRPC_MESSAGE, v);
        }
    }
}

// The gRPC spec: percent-encode everything outside printable ASCII, plus '%'.
const GRPC_MESSAGE_SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(0x7f);

/// Splits a `"<id>: <detail>"` gRPC message written by [`Status::write_grpc_headers`]
/// back into its parts; messages from other servers keep an empty id.
fn split_id(msg: &str) -> (&str, &str) {
    match msg.split_once(": ") {
        Some((id, rest))
            if !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            (id, rest)
        }
        _ => ("", msg),
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id.is_empty() {
            write!(f, "{} ({}): {}", reason(self.http), self.http, self.detail)
        } else {
            write!(f, "{}: {} ({}): {}", self.id, reason(self.http), self.http, self.detail)
        }
    }
}

impl std::error::Error for Status {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    id: String,
    code: u16,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    status: String,
}

/// The reason phrase of an HTTP status.
pub fn reason(http: u16) -> &'static str {
    http::StatusCode::from_u16(http).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_table_round_trips() {
        for n in 0..=16 {
            let c = Code::from_grpc(n);
            assert_eq!(c.grpc(), n);
        }
        for (c, h) in [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Internal, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ] {
            assert_eq!(c.http(), h);
            assert_eq!(Code::from_http(h), c);
        }
    }

    #[test]
    fn a_cause_is_kept_as_the_source_and_never_sent() {
        use std::error::Error;
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let s = Status::unavailable("store", "the database is unreachable").with_source(cause);
        let source = s.source().expect("a source");
        assert_eq!(source.to_string(), "refused");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert_eq!(s, Status::unavailable("store", "the database is unreachable"), "equal without the cause");
        assert!(!String::from_utf8(s.to_json()).unwrap().contains("refused"));
        assert!(Status::internal("x", "y").source().is_none());
    }

    #[test]
    fn json_body() {
        let s = Status::not_found("helloworld", "no such user").with_http_status(404);
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v, serde_json::json!({"id":"helloworld","code":404,"detail":"no such user","status":"Not Found"}));
        assert_eq!(Status::from_json(&s.to_json()), Some(s));
        assert_eq!(Status::from_json(b"{\"x\":1}"), None);
    }

    #[test]
    fn grpc_headers_round_trip() {
        let s = Status::bad_request("store", "bad key: 100% ünïcode\n");
        let mut h = http::HeaderMap::new();
        s.write_grpc_headers(&mut h);
        assert_eq!(Status::from_grpc_headers(&h), Some(Err(s)));
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        assert_eq!(Status::from_grpc_headers(&ok), Some(Ok(())));
    }
}
