//! Decode and preprocess. Image decoding and resizing are CPU work and must
//! not stall the async stages, so they run on tokio's blocking pool, except
//! for images whose header says they are tiny (≤ [`INLINE_MAX_PIXELS`]):
//! those decode in well under a millisecond, less than the hand-off to
//! another thread and back costs, and run in place. The [`Preprocessor`]
//! enforces the size and pixel limits (decompression bombs fail as
//! `too_large`/`decode` for their own job only); a header that cannot be read
//! goes to the pool and fails there with its typed error.

use crate::metrics::{Metrics, Stage};
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::traits::{Chw, Preprocessor};
use std::sync::Arc;
use std::time::Instant;

/// Largest image, in pixels, decoded on the calling task (64 × 64: digits
/// and thumbnails). A 224 × 224 JPEG takes a millisecond or more to decode
/// and resize: run in place on the worker's one runtime thread, it held up
/// receives and claims and halved ResNet-18 batch fill in bench/fleet.
pub const INLINE_MAX_PIXELS: u64 = 64 * 64;

/// Bytes → model input.
pub(crate) async fn decode<P: Preprocessor>(pre: &Arc<P>, metrics: &Metrics, bytes: Vec<u8>) -> Result<Chw, JobError> {
    let started = Instant::now();
    let pre = pre.clone();
    let decoded = if is_small(&bytes) {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pre.preprocess(&bytes)))
            .map_err(|p| crate::supervise::panic_message(p.as_ref()))
    } else {
        tokio::task::spawn_blocking(move || pre.preprocess(&bytes)).await.map_err(|e| e.to_string())
    };
    metrics.observe(Stage::Decode, started.elapsed());
    match decoded {
        Ok(r) => r,
        // A panic in a decoder is a bug, but it must cost one job, not the worker.
        Err(e) => Err(JobError::new(ErrorKind::Decode, format!("decoder failed: {e}"))),
    }
}

/// Largest encoded image decoded in place: a tiny header over a long stream
/// of data still goes to the pool.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;

/// Whether the image is small enough to decode in place: at most
/// [`INLINE_MAX_BYTES`] encoded, in a format whose header bounds the decode
/// work (PNG, JPEG, BMP, WebP), naming at most [`INLINE_MAX_PIXELS`] pixels.
/// GIF is never decoded in place: its logical screen does not bound its first
/// frame, so a 1×1 header can carry a frame of many megapixels. Reads the
/// header only (format sniffing and dimensions), never the pixels.
pub fn is_small(bytes: &[u8]) -> bool {
    use image::ImageFormat::{Bmp, Jpeg, Png, WebP};
    if bytes.len() > INLINE_MAX_BYTES {
        return false;
    }
    let reader = match image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format() {
        Ok(r) if matches!(r.format(), Some(Png | Jpeg | Bmp | WebP)) => r,
        _ => return false,
    };
    reader.into_dimensions().is_ok_and(|(w, h)| u64::from(w) * u64::from(h) <= INLINE_MAX_PIXELS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::GrayImage::new(w, h).write_to(&mut out, image::ImageFormat::Png).expect("encode a PNG");
        out.into_inner()
    }

    #[test]
    fn only_images_whose_header_is_small_decode_in_place() {
        assert!(is_small(&png(28, 28)));
        assert!(is_small(&png(64, 64)));
        assert!(!is_small(&png(65, 64)), "over the limit goes to the pool");
        assert!(!is_small(&png(224, 224)), "photo-sized images go to the pool");
        assert!(!is_small(b"not an image"), "unknown bytes go to the pool (and fail there)");
        assert!(!is_small(&[]));
        assert!(!is_small(&png(28, 28)[..20]), "a header cut short goes to the pool");
    }

    #[test]
    fn gifs_and_long_streams_never_decode_in_place() {
        let mut gif = std::io::Cursor::new(Vec::new());
        image::RgbaImage::new(8, 8).write_to(&mut gif, image::ImageFormat::Gif).expect("encode a GIF");
        assert!(!is_small(gif.get_ref()), "a GIF's screen does not bound its frames");
        let mut long = png(8, 8);
        long.resize(INLINE_MAX_BYTES + 1, 0);
        assert!(!is_small(&long), "a tiny header over a long stream goes to the pool");
    }
}
