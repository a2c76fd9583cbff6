//! Decode + preprocess (`scorefleet-model`'s `preprocess.rs`), fed any bytes:
//! the path every fetched object takes in the worker.
//!
//! The limits are tighter than the worker's defaults (1 Mpx instead of 40) so
//! that each run stays fast; the limit logic is the same. `scripts/fuzz.sh`
//! runs this target with `-malloc_limit_mb=512`: with 1 Mpx allowed, the
//! decoder's own budget is under 100 MB, so any single allocation past 512 MB
//! means a header slipped past the limits (a decompression bomb).
//!
//! Besides "never panics", it checks:
//! - failures are typed `decode` or `too_large`, nothing else;
//! - a decoded image is non-empty and within the pixel limit;
//! - the model input has the manifest's shape and only finite values, for a
//!   grayscale and an RGB model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scorefleet_core::error::ErrorKind;
use scorefleet_fuzz::manifest::{Channels, Manifest};
use scorefleet_fuzz::preprocess::{ImagePreprocessor, Limits};
use std::sync::LazyLock;

const LIMITS: Limits = Limits { max_encoded_bytes: 4 << 20, max_pixels: 1 << 20 };

fn model(shape: [usize; 3], channels: Channels, invert: bool) -> ImagePreprocessor {
    let c = shape[0];
    let manifest = Manifest {
        name: "fuzz".into(),
        architecture: "digits".into(),
        input_shape: shape,
        channels,
        mean: vec![0.5; c],
        std: vec![0.25; c],
        invert,
        labels: vec!["x".into()],
        labels_file: None,
        weights: "none".into(),
        sha256: "0".repeat(64),
        notes: None,
        ..Manifest::default()
    };
    ImagePreprocessor::from_manifest(&manifest, LIMITS)
}

static MODELS: LazyLock<[ImagePreprocessor; 2]> =
    LazyLock::new(|| [model([1, 28, 28], Channels::Grayscale, true), model([3, 16, 24], Channels::Rgb, false)]);

fuzz_target!(|data: &[u8]| {
    let [gray, rgb] = &*MODELS;
    match gray.decode(data) {
        Ok(img) => {
            let pixels = u64::from(img.width()) * u64::from(img.height());
            assert!(pixels > 0 && pixels <= LIMITS.max_pixels, "{}×{} decoded", img.width(), img.height());
            for pre in [gray, rgb] {
                let chw = pre.to_chw(img.clone());
                assert_eq!(chw.shape, pre.shape());
                assert_eq!(chw.data.len(), chw.shape.iter().product::<usize>());
                assert!(chw.data.iter().all(|v| v.is_finite()), "non-finite model input");
            }
        }
        Err(e) => assert!(matches!(e.kind, ErrorKind::Decode | ErrorKind::TooLarge), "untyped failure: {e}"),
    }
});
