//! Pieces of plain HTTP handlers (what products the gateway serves as HTTP, like files
//! and apps, are made of): JSON answers, request bodies read within a limit, query
//! parameters, streamed bodies.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use micro_core::{Code, Status};
use serde_json::Value;

/// The body of the answers (the gateway's).
pub type Body = tonic::body::Body;

/// A JSON answer, not to be cached.
pub fn reply(status: StatusCode, v: &Value) -> Response<Body> {
    let mut res = Response::new(Body::new(Full::new(Bytes::from(v.to_string()))));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `s` as HTML text or an attribute's value: `& < > " '` escaped.
///
/// ```
/// assert_eq!(micro::web::escape_html(r#"<a href="x">O'Neil & co</a>"#),
///            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;");
/// ```
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An answer without a body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(empty_body());
    *res.status_mut() = status;
    res
}

/// An empty body.
pub fn empty_body() -> Body {
    Body::new(Full::new(Bytes::new()))
}

/// A query parameter, percent-decoded (`+` a space); the first when given twice.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().to_string())
    })
}

/// The name of a parameter a query gives twice, if any (which of two values a cache or
/// a proxy on the way takes is anybody's guess: refuse such a query).
pub fn repeated_param(query: Option<&str>) -> Option<&str> {
    let mut names: Vec<&str> = query?.split('&').map(|p| p.split('=').next().unwrap_or("")).collect();
    names.sort_unstable();
    names.windows(2).find(|w| w[0] == w[1] && !w[0].is_empty()).map(|w| w[0])
}

/// A request body as a stream of its data; `service` names the errors.
pub fn body_stream<B>(
    body: B,
    service: &'static str,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + Unpin + 'static
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    http_body_util::BodyStream::new(body).filter_map(move |frame| {
        futures::future::ready(match frame {
            Ok(f) => f.into_data().ok().map(Ok),
            Err(e) => Some(Err(Status::new(Code::InvalidArgument, service, format!("reading the request body: {e}")))),
        })
    })
}

/// A request body of at most `most` bytes.
pub async fn collect_limited<B>(body: B, most: u64, service: &'static str) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    let mut stream = body_stream(body, service);
    let mut out = Vec::new();
    while let Some(b) = stream.next().await {
        let b = b?;
        if out.len() as u64 + b.len() as u64 > most {
            return Err(Status::new(Code::ResourceExhausted, service, format!("the body has more than {most} bytes"))
                .with_http_status(413));
        }
        out.extend_from_slice(&b);
    }
    Ok(Bytes::from(out))
}

/// A JSON object as a request body of at most `most` bytes (an empty body: `{}`).
pub async fn json_body<B>(body: B, most: u64, service: &'static str) -> Result<Value, Status>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    let bytes = collect_limited(body, most, service).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Status::new(Code::InvalidArgument, service, format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Status::new(Code::InvalidArgument, service, "the body is a JSON object"));
    }
    Ok(v)
}

/// Reads and drops what is left of a request body refused before it was read (at most
/// `most` bytes, for at most 2 s), so a client still sending it reads the answer instead
/// of a reset connection.
pub async fn drain<B>(body: B, most: u64)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync + 'static,
{
    let read = async {
        let mut stream = body_stream(body, "web");
        let mut n = 0u64;
        while let Some(Ok(b)) = stream.next().await {
            n += b.len() as u64;
            if n > most {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
}

/// A streamed body of `chunks`.
pub fn stream_body(chunks: impl Stream<Item = Result<Bytes, Status>> + Send + 'static) -> Body {
    let frames = chunks.map(|r| r.map(http_body::Frame::data).map_err(|e| std::io::Error::other(e.to_string())));
    Body::new(StreamBody::new(frames).boxed_unsync())
}
