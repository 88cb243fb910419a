//! The dashboard's static files, embedded in the binary: (path, content type, text).

use axum::body::Body;
use bytes::Bytes;
use http::{Response, header};

pub(crate) const FILES: &[(&str, &str, &str)] = &[
    ("/assets/app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
    ("/assets/app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("/assets/icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
    ("/manifest.webmanifest", "application/manifest+json", include_str!("assets/manifest.webmanifest")),
    ("/sw.js", "text/javascript; charset=utf-8", include_str!("assets/sw.js")),
];

/// One of the files, as a response.
pub(crate) fn response(kind: &'static str, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(Bytes::from_static(text.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("public, max-age=300"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    r
}
