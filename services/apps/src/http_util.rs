//! The HTTP parts of the API and of serving sites.

use super::NAME;
use bytes::Bytes;
use http::Response;
use micro_core::Status;

pub(crate) use micro::web::{Body, empty, query_param, reply, stream_body};

/// The JSON error answer of `st`.
pub(crate) fn error(st: &Status) -> Response<Body> {
    micro::json_error(st)
}

/// A request body of at most `most` bytes.
pub(crate) async fn collect_limited<B>(body: B, most: u64) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    micro::web::collect_limited(body, most, NAME).await
}

/// A JSON request body of at most `most` bytes (empty: `{}`).
pub(crate) async fn json_body<B>(body: B, most: u64) -> Result<serde_json::Value, Status>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    micro::web::json_body(body, most, NAME).await
}
