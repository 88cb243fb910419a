//! Conversions between Micro's [`Status`] and tonic's.

pub use micro_core::{Code, Status};

/// A Micro status as a tonic status (for handlers generated from protos).
pub fn to_tonic(s: &Status) -> tonic::Status {
    let msg = if s.id().is_empty() { s.detail().to_string() } else { format!("{}: {}", s.id(), s.detail()) };
    tonic::Status::new(tonic::Code::from_i32(s.code().grpc()), msg)
}

const PCT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A tonic status as a Micro status (the id is recovered from `"<id>: <detail>"`).
pub fn from_tonic(s: &tonic::Status) -> Status {
    let mut h = http::HeaderMap::new();
    h.insert(micro_core::metadata::GRPC_STATUS, http::HeaderValue::from(s.code() as i32));
    if let Ok(v) = http::HeaderValue::from_str(&percent_encoding::utf8_percent_encode(s.message(), PCT).to_string()) {
        h.insert(micro_core::metadata::GRPC_MESSAGE, v);
    }
    match Status::from_grpc_headers(&h) {
        Some(Err(st)) => st,
        _ => Status::new(Code::Unknown, "", s.message()),
    }
}
