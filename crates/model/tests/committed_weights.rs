//! The committed `digits` weights: identity, accuracy on the first 1,000
//! MNIST test images (committed in data/mnist), the serving path from PNG
//! bytes, and the refusal of weights that do not match the manifest.

use futures::executor::block_on;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::traits::{ObjectStore, Predictor, Preprocessor};
use scorefleet_model::manifest::{Manifest, repo_manifest};
use scorefleet_model::mnist::{self, Mnist};
use scorefleet_model::predictor::{Network, load_model};
use scorefleet_model::weights::NoFetcher;
use scorefleet_model::{BackendKind, Limits, ModelError, sha256_hex, train};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

fn backend() -> BackendKind {
    BackendKind::default_kind().expect("a backend")
}

fn cache_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("scorefleet-model-cache-{tag}-{}", std::process::id()))
}

#[test]
fn committed_digits_weights_match_their_manifest_and_score_the_sample() {
    let manifest_path = repo_manifest("digits");
    let manifest = Manifest::load(&manifest_path).expect("manifest");
    let bytes = std::fs::read(manifest_path.parent().expect("dir").join(&manifest.weights)).expect("weights");
    assert!(bytes.len() <= 4 << 20, "weights must stay under 4 MB");
    assert_eq!(manifest.version(), format!("sha256:{}", sha256_hex(&bytes)));

    let model = block_on(load_model(&manifest_path, None, &cache_dir("local"), &NoFetcher, backend())).expect("load");
    assert_eq!(model.model_ref.name, "digits");
    assert_eq!(model.model_ref.version, format!("sha256:{}", sha256_hex(&bytes)));

    let sample = Mnist::test(&mnist::default_dir()).expect("mnist").take(1000);
    let Network::Digits { reference: Some(reference), .. } = &model.network else { panic!("digits network") };
    // The served (NHWC) path and the burn module must both score, and agree.
    let served = train::predict_classes(|x| model.network.forward(x), &sample, 250, &model.device).expect("served");
    let module = train::predict_classes(|x| Ok(reference.forward(x)), &sample, 250, &model.device).expect("module");
    let acc = served.iter().zip(&sample.labels).filter(|(p, l)| **p == **l as usize).count() as f64 / 1000.0;
    assert!(acc >= 0.98, "accuracy {acc} on the first 1,000 test images");
    assert_eq!(served, module, "the NHWC path and the burn module disagree on a test image");
    assert!(train::evaluate(reference, &sample, 250, &model.device).expect("eval") >= 0.98);
}

#[test]
fn png_bytes_through_the_preprocessor_and_predictor_give_the_labels() {
    let model =
        block_on(load_model(&repo_manifest("digits"), None, &cache_dir("png"), &NoFetcher, backend())).expect("load");
    let (pre, mut predictor) = model.into_parts(Limits::default());
    let sample = Mnist::test(&mnist::default_dir()).expect("mnist").take(64);
    let chws: Vec<_> = (0..sample.len())
        .map(|i| {
            let img = image::GrayImage::from_raw(28, 28, sample.image(i).to_vec()).expect("28x28");
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png).expect("png");
            pre.preprocess(png.get_ref()).expect("preprocess")
        })
        .collect();
    let top = predictor.predict(&chws, 3).expect("predict");
    assert_eq!(top.len(), 64);
    let correct = top.iter().zip(&sample.labels).filter(|(t, l)| t[0].label == l.to_string()).count();
    assert!(correct >= 62, "{correct}/64 correct");
    for t in &top {
        assert_eq!(t.len(), 3);
        assert!(t[0].score >= t[1].score && t[1].score >= t[2].score);
        assert!(t.iter().all(|p| (0.0..=1.0).contains(&p.score)));
    }
    // A wrong shape is this batch's error, not a panic.
    let bad = scorefleet_core::traits::Chw { shape: [3, 28, 28], data: vec![0.0; 3 * 784] };
    assert_eq!(predictor.predict(&[bad], 1).expect_err("shape").kind, ErrorKind::Inference);
    assert!(predictor.predict(&[], 1).expect("empty").is_empty());
}

/// `((bucket, key), bytes)`.
type Objects = Vec<((String, String), Vec<u8>)>;

/// An in-memory S3 that counts its GETs.
#[derive(Debug)]
struct FakeS3 {
    objects: Mutex<Objects>,
    gets: AtomicUsize,
}

impl ObjectStore for FakeS3 {
    fn get(&self, bucket: &str, key: &str, _max: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let found = self
            .objects
            .lock()
            .expect("lock")
            .iter()
            .find(|((b, k), _)| b == bucket && k == key)
            .map(|(_, v)| v.clone());
        async move { found.ok_or_else(|| JobError::new(ErrorKind::FetchNotFound, "no such key")) }
    }
}

#[test]
fn s3_weights_are_fetched_once_cached_and_verified() {
    let manifest_path = repo_manifest("digits");
    let manifest = Manifest::load(&manifest_path).expect("manifest");
    let bytes = std::fs::read(manifest_path.parent().expect("dir").join(&manifest.weights)).expect("weights");
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let s3 = FakeS3 {
        objects: Mutex::new(vec![
            (("models".into(), "digits.safetensors".into()), bytes),
            (("models".into(), "bad.safetensors".into()), tampered),
        ]),
        gets: AtomicUsize::new(0),
    };
    let cache = cache_dir("s3");
    let _ = std::fs::remove_dir_all(&cache);
    for _ in 0..2 {
        let m = block_on(load_model(&manifest_path, Some("s3://models/digits.safetensors"), &cache, &s3, backend()))
            .expect("load from s3");
        assert_eq!(m.model_ref.version, manifest.version());
    }
    assert_eq!(s3.gets.load(Ordering::SeqCst), 1, "the second load is served from the cache");

    let err =
        block_on(load_model(&manifest_path, Some("s3://models/bad.safetensors"), &cache_dir("bad"), &s3, backend()))
            .expect_err("tampered weights");
    assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("does not match the manifest"), "{err}");

    let err = block_on(load_model(&manifest_path, Some("s3://models/missing"), &cache_dir("missing"), &s3, backend()))
        .expect_err("missing");
    assert!(matches!(err, ModelError::Fetch { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}
