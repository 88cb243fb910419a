//! gRPC message framing: the 5-byte length prefix, reading frames from a body, and
//! bodies that map every frame (used to transcode between JSON and protobuf).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, StreamBody};
use micro_core::Status;
use tonic::body::Body;

/// Largest message accepted by default (4 MiB, as gRPC's default).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Frames one message.
pub fn encode(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Reads gRPC messages from a body, keeping its trailers.
pub struct FrameReader<B> {
    body: B,
    buf: BytesMut,
    trailers: Option<HeaderMap>,
    done: bool,
    max: usize,
}

impl<B> FrameReader<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// Reads from `body`.
    pub fn new(body: B) -> Self {
        FrameReader { body, buf: BytesMut::new(), trailers: None, done: false, max: MAX_MESSAGE }
    }

    /// The next message, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(Status::unimplemented("micro", "compressed messages are not supported"));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len > self.max {
                    return Err(Status::new(
                        micro_core::Code::ResourceExhausted,
                        "micro",
                        format!("message of {len} bytes is larger than the limit of {} bytes", self.max),
                    )
                    .with_http_status(413));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Status::bad_request("micro", "truncated gRPC message"));
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Err(e)) => {
                    return Err(Status::new(micro_core::Code::Cancelled, "micro", format!("reading body: {e}")));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
            }
        }
    }

    /// The trailers seen so far (complete once `next` returned `None`).
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }
}

/// Trailers carrying a status (`grpc-status: 0` for `Ok`).
pub fn status_trailers(result: &Result<(), Status>) -> HeaderMap {
    let mut h = HeaderMap::new();
    match result {
        Ok(()) => {
            h.insert(micro_core::metadata::GRPC_STATUS, http::HeaderValue::from_static("0"));
        }
        Err(s) => s.write_grpc_headers(&mut h),
    }
    h
}

/// A response body that sends `messages` as frames, then the status trailers.
pub fn stream_body<S>(messages: S) -> Body
where
    S: futures::Stream<Item = Result<Bytes, Status>> + Send + 'static,
{
    let s = async_stream::stream! {
        futures::pin_mut!(messages);
        let mut result = Ok(());
        while let Some(m) = futures::StreamExt::next(&mut messages).await {
            match m {
                Ok(m) => yield Ok::<_, Status>(Frame::data(encode(&m))),
                Err(e) => { result = Err(e); break; }
            }
        }
        yield Ok(Frame::trailers(status_trailers(&result)));
    };
    Body::new(StreamBody::new(s))
}

/// Maps every message of a gRPC body with `f`, passing trailers through.
///
/// In a response (`in_response`), a failure of `f` or of the body ends the stream with
/// error trailers; in a request it becomes a body error.
pub fn map_body<B, F>(body: B, in_response: bool, mut f: F) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
    F: FnMut(Bytes) -> Result<Bytes, Status> + Send + 'static,
{
    let s = async_stream::stream! {
        let mut reader = FrameReader::new(body);
        loop {
            match reader.next().await.and_then(|m| m.map(&mut f).transpose()) {
                Ok(Some(m)) => yield Ok::<_, Status>(Frame::data(encode(&m))),
                Ok(None) => {
                    if let Some(t) = reader.trailers() {
                        yield Ok(Frame::trailers(t.clone()));
                    }
                    break;
                }
                Err(e) if in_response => {
                    yield Ok(Frame::trailers(status_trailers(&Err(e))));
                    break;
                }
                Err(e) => {
                    yield Err(e);
                    break;
                }
            }
        }
    };
    Body::new(StreamBody::new(s))
}

/// A trailers-only gRPC response carrying `status`.
pub fn error_response(status: &Status, content_type: &str) -> http::Response<Body> {
    let mut res = http::Response::new(Body::empty());
    status.write_grpc_headers(res.headers_mut());
    res.headers_mut().insert(http::header::CONTENT_TYPE, header_value(content_type));
    res
}

/// A gRPC response with one message and `grpc-status: 0`.
pub fn unary_response(msg: Bytes, content_type: &str) -> http::Response<Body> {
    let mut res = http::Response::new(stream_body(futures::stream::iter([Ok(msg)])));
    res.headers_mut().insert(http::header::CONTENT_TYPE, header_value(content_type));
    res
}

fn header_value(s: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(s).unwrap_or(http::HeaderValue::from_static("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn reads_frames_split_across_chunks() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&encode(b"hello"));
        all.extend_from_slice(&encode(b""));
        all.extend_from_slice(&encode(b"world"));
        let mut r = FrameReader::new(Full::new(all.freeze()));
        assert_eq!(r.next().await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(r.next().await.unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(r.next().await.unwrap().as_deref(), Some(&b"world"[..]));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn rejects_truncated_and_oversize() {
        let mut r = FrameReader::new(Full::new(Bytes::from_static(&[0, 0, 0, 0, 9, 1])));
        assert!(r.next().await.is_err());
        let mut r = FrameReader::new(Full::new(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff])));
        assert_eq!(r.next().await.unwrap_err().http_status(), 413);
        let mut r = FrameReader::new(Full::new(Bytes::from_static(&[1, 0, 0, 0, 0])));
        assert!(r.next().await.is_err());
    }
}
