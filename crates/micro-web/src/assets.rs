//! The dashboard's static files, embedded in the binary.

use bytes::Bytes;
use http::{Response, header};
use tonic::body::Body;

const FILES: &[(&str, &str, &str)] = &[
    ("/assets/app.css", "text/css; charset=utf-8", include_str!("assets/app.css")),
    ("/assets/app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("/assets/icon.svg", "image/svg+xml", include_str!("assets/icon.svg")),
    ("/manifest.webmanifest", "application/manifest+json", include_str!("assets/manifest.webmanifest")),
    ("/sw.js", "text/javascript; charset=utf-8", include_str!("assets/sw.js")),
];

/// The file at `path`, if it is one of the assets.
pub(crate) fn serve(path: &str) -> Option<Response<Body>> {
    let (_, kind, text) = FILES.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(text.as_bytes()))));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("public, max-age=300"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    Some(r)
}
