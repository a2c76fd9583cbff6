//! Small images for the report: fetch an object, decode it under limits,
//! shrink it to fit a square of [`SIZE`] pixels and encode it as a PNG
//! `data:` URI, so the HTML stays one self-contained file that works offline.
//!
//! Objects are fetched one at a time through the same [`ObjectStore`] port
//! (and S3 adapter) the worker reads the archive with, each under a byte cap,
//! so memory stays at about one object plus its decoded pixels. Only `s3://`
//! URLs are fetched: the worker's address-checking HTTPS client belongs to the
//! worker crate, and an unguarded client here would let a results file make
//! the producer fetch internal addresses.

use scorefleet_core::traits::ObjectStore;
use std::collections::HashMap;
use std::io::Cursor;

/// The longest side of a thumbnail, in pixels. Smaller images keep their size
/// (the page scales them up without smoothing).
pub const SIZE: u32 = 64;

/// Decoded images larger than this many pixels on either side are not
/// thumbnailed.
const MAX_SIDE: u32 = 16_384;
/// Most memory the decoder may allocate for one image.
const MAX_ALLOC_BYTES: u64 = 64 << 20;

/// Why an image has no thumbnail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThumbError {
    /// Not an `s3://` URL.
    #[error("not fetched: only s3:// URLs are fetched for thumbnails")]
    NotFetched,
    /// The fetch failed (missing, denied, too large, network).
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// The bytes are not an image the decoder accepts within its limits.
    #[error("does not decode: {0}")]
    Decode(String),
}

/// A `data:image/png;base64,…` URI of `bytes` shrunk to fit [`SIZE`].
pub fn data_uri(bytes: &[u8]) -> Result<String, ThumbError> {
    let decode = |e: image::ImageError| ThumbError::Decode(e.to_string());
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ThumbError::Decode(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(decode)?;
    let img = if img.width() > SIZE || img.height() > SIZE { img.thumbnail(SIZE, SIZE) } else { img };
    // 8-bit output keeps the PNG small; grey stays grey.
    let img = match (img.color().has_color(), img.color().has_alpha()) {
        (false, false) => image::DynamicImage::ImageLuma8(img.to_luma8()),
        (_, true) => image::DynamicImage::ImageRgba8(img.to_rgba8()),
        (true, false) => image::DynamicImage::ImageRgb8(img.to_rgb8()),
    };
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).map_err(decode)?;
    Ok(format!("data:image/png;base64,{}", base64(&png)))
}

/// Fetches and thumbnails each URL once, in order, through `store`, each
/// object capped at `max_bytes`. `on_each(done)` is called after every URL.
pub async fn fetch_all<S: ObjectStore>(
    store: &S,
    urls: &[String],
    max_bytes: u64,
    mut on_each: impl FnMut(usize),
) -> HashMap<String, Result<String, ThumbError>> {
    let mut out = HashMap::new();
    for (i, url) in urls.iter().enumerate() {
        if out.contains_key(url) {
            continue;
        }
        let thumb = match url.strip_prefix("s3://").and_then(|rest| rest.split_once('/')) {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                match store.get(bucket, key, max_bytes).await {
                    Ok(bytes) => data_uri(&bytes),
                    Err(e) => Err(ThumbError::Fetch(e.to_string())),
                }
            }
            _ => Err(ThumbError::NotFetched),
        };
        out.insert(url.clone(), thumb);
        on_each(i + 1);
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                s.push(char::from(ABC[(n >> shift) as usize & 63]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use scorefleet_core::error::{ErrorKind, JobError};

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("png");
        out
    }

    fn decode_uri(uri: &str) -> image::DynamicImage {
        let b64 = uri.strip_prefix("data:image/png;base64,").expect("png data uri");
        // Decode through the image crate: a wrong base64 or PNG fails here.
        let mut bytes = Vec::new();
        let clean: Vec<u8> = b64.bytes().filter(|&c| c != b'=').collect();
        let val = |c: u8| -> u32 {
            match c {
                b'A'..=b'Z' => u32::from(c - b'A'),
                b'a'..=b'z' => u32::from(c - b'a') + 26,
                b'0'..=b'9' => u32::from(c - b'0') + 52,
                b'+' => 62,
                _ => 63,
            }
        };
        for quad in clean.chunks(4) {
            let n = quad.iter().enumerate().fold(0u32, |n, (i, &c)| n | (val(c) << (18 - 6 * i)));
            bytes.extend_from_slice(&n.to_be_bytes()[1..quad.len()]);
        }
        image::load_from_memory(&bytes).expect("thumbnail decodes")
    }

    #[test]
    fn large_images_shrink_to_fit_and_small_ones_keep_their_size() {
        let big = decode_uri(&data_uri(&png(300, 150)).expect("thumb"));
        assert_eq!((big.width(), big.height()), (64, 32));
        let small = decode_uri(&data_uri(&png(28, 28)).expect("thumb"));
        assert_eq!((small.width(), small.height()), (28, 28));
    }

    #[test]
    fn broken_and_bomb_images_are_refused() {
        let good = png(28, 28);
        assert!(matches!(data_uri(&good[..good.len() / 2]), Err(ThumbError::Decode(_))));
        assert!(matches!(data_uri(b"this is not an image\n"), Err(ThumbError::Decode(_))));
        // A header claiming 100,000 × 100,000 pixels.
        let mut bomb = good.clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(data_uri(&bomb).is_err());
    }

    /// Hands out one PNG for key `ok.png`, `fetch_not_found` otherwise.
    struct Store(Vec<u8>, std::sync::Mutex<Vec<String>>);

    impl ObjectStore for Store {
        async fn get(&self, bucket: &str, key: &str, _max: u64) -> Result<Vec<u8>, JobError> {
            self.1.lock().expect("lock").push(format!("{bucket}/{key}"));
            if key == "ok.png" {
                Ok(self.0.clone())
            } else {
                Err(JobError::new(ErrorKind::FetchNotFound, "no such key"))
            }
        }
    }

    #[tokio::test]
    async fn fetches_each_s3_url_once_and_skips_the_rest() {
        let store = Store(png(10, 10), std::sync::Mutex::new(vec![]));
        let urls: Vec<String> =
            ["s3://b/ok.png", "s3://b/missing.png", "https://example.com/a.png", "s3://b/ok.png", "s3://nokey"]
                .map(String::from)
                .to_vec();
        let got = fetch_all(&store, &urls, 1 << 20, |_| {}).await;
        assert!(got["s3://b/ok.png"].as_ref().is_ok_and(|u| u.starts_with("data:image/png;base64,")));
        assert!(matches!(got["s3://b/missing.png"], Err(ThumbError::Fetch(_))));
        assert_eq!(got["https://example.com/a.png"], Err(ThumbError::NotFetched));
        assert_eq!(got["s3://nokey"], Err(ThumbError::NotFetched));
        assert_eq!(*store.1.lock().expect("lock"), ["b/ok.png", "b/missing.png"]);
    }
}
