//! Thumbnails of images: decoded within limits (no decompression bombs), scaled to fit
//! the asked box keeping the aspect ratio, encoded as PNG (JPEG for JPEG photos).

use super::{NAME, bad};
use image::ImageFormat;
use micro_core::Status;

/// The largest image a thumbnail is made of.
pub(crate) const MAX_SOURCE: u64 = 32 << 20;

/// The largest side of a thumbnail.
const MAX_SIDE: u32 = 2000;

/// The largest image decoded, in pixels a side.
const MAX_DIMENSION: u32 = 12_000;

/// `WxH` of `?thumb=`.
pub(crate) fn size(v: &str) -> Result<(u32, u32), Status> {
    let parsed = v.split_once('x').and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if (1..=MAX_SIDE).contains(&w) && (1..=MAX_SIDE).contains(&h) => Ok((w, h)),
        _ => Err(bad(format!("thumb is WIDTHxHEIGHT, each 1 to {MAX_SIDE} (like 200x200)"))),
    }
}

/// The image format of a content type thumbnails are made of.
pub(crate) fn format_of(content_type: &str) -> Option<ImageFormat> {
    match content_type.split(';').next().unwrap_or("").trim() {
        "image/png" => Some(ImageFormat::Png),
        "image/jpeg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// The content type of a thumbnail of a `format` image.
pub(crate) fn output_type(format: ImageFormat) -> &'static str {
    if format == ImageFormat::Jpeg { "image/jpeg" } else { "image/png" }
}

/// A thumbnail of `source` fitting `w`×`h`.
pub(crate) fn make(source: &[u8], format: ImageFormat, w: u32, h: u32) -> Result<Vec<u8>, Status> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(source), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(format!("the image cannot be read: {e}")))?;
    let small = img.thumbnail(w, h);
    let mut out = std::io::Cursor::new(Vec::new());
    let written = if format == ImageFormat::Jpeg {
        small.to_rgb8().write_to(&mut out, ImageFormat::Jpeg)
    } else {
        small.write_to(&mut out, ImageFormat::Png)
    };
    written.map_err(|e| Status::internal(NAME, format!("encoding a thumbnail: {e}")))?;
    Ok(out.into_inner())
}
