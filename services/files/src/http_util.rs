//! The HTTP parts of serving files: replies, bodies, headers and ranges.

use super::NAME;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use http_body_util::{BodyExt, StreamBody};
use micro_core::Status;

pub(crate) use micro::web::{Body, empty, empty_body, query_param, reply};

/// The JSON error answer of `st`.
pub(crate) fn error(st: &Status) -> Response<Body> {
    micro::json_error(st)
}

/// A request body as a stream of its data.
pub(crate) fn body_stream<B>(body: B) -> impl futures::Stream<Item = Result<Bytes, Status>> + Send + Unpin + 'static
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    micro::web::body_stream(body, NAME)
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

/// A header's value as text.
pub(crate) fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// Types shown in the page that links them; every other one is downloaded.
const INLINE: [&str; 10] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "application/pdf",
    "text/plain",
    "video/",
    "audio/",
    "text/csv",
];

/// The headers of a file's content: its type, how it is shown (only types that run no
/// script inline, everything else a download), its validator and caching, and a policy
/// that runs nothing of it whatever a browser makes of it.
pub(crate) fn file_headers(
    h: &mut HeaderMap,
    content_type: &str,
    name: &str,
    etag: &str,
    cache: &'static str,
    public: bool,
) {
    let base = content_type.split(';').next().unwrap_or("").trim();
    let inline = INLINE.iter().any(|t| if t.ends_with('/') { base.starts_with(t) } else { base == *t });
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    let ascii: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || " .-_()".contains(c) { c } else { '_' }).collect();
    let encoded = percent_encoding::utf8_percent_encode(name, super::NAME_CHARS);
    let disposition =
        format!("{}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}", if inline { "inline" } else { "attachment" });
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    let corp = if public { "cross-origin" } else { "same-site" };
    h.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static(corp));
}

/// What part of a file a request asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Range {
    Full,
    /// From the first to the last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// The one range a request asks for (`Range: bytes=…`), unless `If-Range` names another
/// version; several ranges are answered with the whole file.
pub(crate) fn range(headers: &HeaderMap, size: u64, etag: &str) -> Range {
    let Some(spec) = header_str(headers, header::RANGE) else { return Range::Full };
    if let Some(v) = header_str(headers, header::IF_RANGE)
        && v.trim() != etag
    {
        return Range::Full;
    }
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Range::Full };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return Range::Full };
    let (a, b) = (a.trim(), b.trim());
    let (first, last) = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
        (Ok(_), Ok(_)) => return Range::Full,
        (Ok(a), Err(_)) if b.is_empty() => (a, size.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 {
                return Range::Unsatisfiable;
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        _ => return Range::Full,
    };
    if size == 0 || first >= size {
        return Range::Unsatisfiable;
    }
    Range::Part(first, last)
}

/// `Content-Range: bytes {first}-{last}/{size}` of a chunk.
pub(crate) fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b, t) = (a.trim().parse().ok()?, b.trim().parse().ok()?, total.trim().parse().ok()?);
    (a <= b).then_some((a, b, t))
}

/// A body of `len` bytes of `chunks` from byte `start`.
pub(crate) fn slice_body(chunks: micro_core::blob::Chunks, start: u64, len: u64) -> Body {
    let mut skip = start;
    let mut left = len;
    let stream = chunks
        .take_while(move |_| {
            let more = left > 0;
            async move { more }
        })
        .filter_map(move |r| {
            let out = match r {
                Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                Ok(mut b) => {
                    if skip >= b.len() as u64 {
                        skip -= b.len() as u64;
                        None
                    } else {
                        let mut b = b.split_off(skip as usize);
                        skip = 0;
                        if b.len() as u64 > left {
                            b.truncate(left as usize);
                        }
                        left -= b.len() as u64;
                        let _ = &mut b;
                        Some(Ok(http_body::Frame::data(b)))
                    }
                }
            };
            async move { out }
        });
    Body::new(StreamBody::new(stream).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&HeaderMap::new(), 10, "e"), Range::Full);
        assert_eq!(range(&with_range("bytes=0-4"), 10, "e"), Range::Part(0, 4));
        assert_eq!(range(&with_range("bytes=5-"), 10, "e"), Range::Part(5, 9));
        assert_eq!(range(&with_range("bytes=-3"), 10, "e"), Range::Part(7, 9));
        assert_eq!(range(&with_range("bytes=-30"), 10, "e"), Range::Part(0, 9));
        assert_eq!(range(&with_range("bytes=8-100"), 10, "e"), Range::Part(8, 9));
        assert_eq!(range(&with_range("bytes=10-"), 10, "e"), Range::Unsatisfiable);
        assert_eq!(range(&with_range("bytes=-0"), 10, "e"), Range::Unsatisfiable);
        assert_eq!(range(&with_range("bytes=0-1,4-5"), 10, "e"), Range::Full);
        assert_eq!(range(&with_range("items=0-1"), 10, "e"), Range::Full);
        assert_eq!(range(&with_range("bytes=5-2"), 10, "e"), Range::Full);
        assert_eq!(content_range("bytes 0-99/1000"), Some((0, 99, 1000)));
        assert_eq!(content_range("bytes 9-1/1000"), None);
        assert_eq!(content_range("bytes */1000"), None);
    }
}
