//! Weights files: where they come from, their identity, and burn-store I/O.
//!
//! Weights are safetensors in PyTorch layout (linear weights `[out, in]`,
//! BatchNorm `weight`/`bias`/`running_mean`/`running_var`), read and written
//! through burn-store's `SafetensorsStore` with `PyTorchToBurnAdapter` /
//! `BurnToPyTorchAdapter`, so the same file loads in PyTorch and here.
//!
//! A location is a local path or an `s3://bucket/key` URL. S3 objects are
//! fetched through any [`ObjectStore`] (the worker passes
//! `scorefleet_aws::S3Store`), once: they are cached on disk under their
//! sha256 and verified against the manifest before use, every time.
//!
//! [`verify`] is the one check of weights against a manifest's sha256: every
//! way bytes reach a model ([`resolve_weights`] for a location,
//! [`crate::load_model_from_bytes`] for bytes in memory) runs it once.

use crate::error::ModelError;
use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::traits::ObjectStore;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};

/// Weights larger than this are refused (resnet18 is ~45 MB; this leaves room for larger models).
pub const MAX_WEIGHTS_BYTES: u64 = 1 << 30;

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A local file.
    Path(PathBuf),
    /// An object in S3.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
}

impl WeightsSource {
    /// Parses a path or `s3://bucket/key`.
    pub fn parse(location: &str) -> Result<Self, ModelError> {
        match location.strip_prefix("s3://") {
            Some(rest) => match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(WeightsSource::S3 { bucket: bucket.into(), key: key.into() })
                }
                _ => Err(ModelError::Invalid(format!("{location:?} is not s3://bucket/key"))),
            },
            None => Ok(WeightsSource::Path(PathBuf::from(location))),
        }
    }
}

/// Fetches weights objects. Every [`ObjectStore`] is one; [`NoFetcher`] is for local-only use.
pub trait WeightsFetcher: Send + Sync {
    /// The whole object, at most `max_bytes`.
    fn fetch(&self, bucket: &str, key: &str, max_bytes: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send;
}

impl<S: ObjectStore> WeightsFetcher for S {
    fn fetch(&self, bucket: &str, key: &str, max_bytes: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send {
        self.get(bucket, key, max_bytes)
    }
}

/// A fetcher that refuses every download: for models whose weights are local.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFetcher;

impl WeightsFetcher for NoFetcher {
    #[allow(clippy::manual_async_fn)] // the trait's `+ Send` bound is spelled out
    fn fetch(&self, bucket: &str, key: &str, _: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send {
        let msg = format!("s3://{bucket}/{key}: no object store configured");
        async move { Err(JobError::new(ErrorKind::FetchDenied, msg)) }
    }
}

/// Reads the weights at `location` and checks them against `expected_sha256`
/// ([`verify`]): what it returns is verified.
///
/// S3 objects are cached as `<cache_dir>/<sha256>.safetensors`: a cached copy
/// is used if its bytes still hash right, else fetched again; an object that
/// does not hash right is refused and never cached.
pub async fn resolve_weights<F: WeightsFetcher>(
    location: &str,
    expected_sha256: &str,
    cache_dir: &Path,
    fetcher: &F,
) -> Result<Vec<u8>, ModelError> {
    let expected = expected_sha256.to_ascii_lowercase();
    match WeightsSource::parse(location)? {
        WeightsSource::Path(path) => {
            let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
            verify(location, &bytes, &expected)?;
            Ok(bytes)
        }
        WeightsSource::S3 { bucket, key } => {
            let cached = cache_dir.join(format!("{expected}.safetensors"));
            if let Ok(bytes) = std::fs::read(&cached)
                && verify(location, &bytes, &expected).is_ok()
            {
                return Ok(bytes);
            }
            let bytes = fetcher
                .fetch(&bucket, &key, MAX_WEIGHTS_BYTES)
                .await
                .map_err(|e| ModelError::Fetch { url: location.to_string(), message: e.to_string() })?;
            verify(location, &bytes, &expected)?;
            std::fs::create_dir_all(cache_dir).map_err(|e| ModelError::io(cache_dir, e))?;
            // Write then rename, so a crash never leaves a truncated file under the final name.
            let tmp = cache_dir.join(format!("{expected}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, &bytes).map_err(|e| ModelError::io(&tmp, e))?;
            std::fs::rename(&tmp, &cached).map_err(|e| ModelError::io(&cached, e))?;
            Ok(bytes)
        }
    }
}

/// Refuses `bytes` unless their sha256 is `expected` (hex, either case):
/// [`ModelError::ChecksumMismatch`] names `source_name` and both sums.
pub fn verify(source_name: &str, bytes: &[u8], expected: &str) -> Result<(), ModelError> {
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::ChecksumMismatch {
            source_name: source_name.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Loads PyTorch-layout safetensors `bytes` into `module` (every parameter must be present).
pub fn load_pytorch_safetensors<M: Module>(
    module: &mut M,
    bytes: Vec<u8>,
    source_name: &str,
) -> Result<(), ModelError> {
    load_pytorch_safetensors_remapped(module, bytes, source_name, &[])
}

/// Like [`load_pytorch_safetensors`], renaming keys first (`(regex, replacement)` pairs).
pub fn load_pytorch_safetensors_remapped<M: Module>(
    module: &mut M,
    bytes: Vec<u8>,
    source_name: &str,
    remap: &[(&str, &str)],
) -> Result<(), ModelError> {
    let mut store =
        SafetensorsStore::from_bytes(Some(bytes)).with_from_adapter(PyTorchToBurnAdapter).allow_partial(false);
    for (from, to) in remap {
        store = store.with_key_remapping(*from, *to);
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights { source_name: source_name.into(), message: e.to_string() })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(ModelError::Weights {
            source_name: source_name.into(),
            message: format!("missing {:?}, errors {:?}", result.missing, result.errors),
        });
    }
    Ok(())
}

/// Saves `module` as PyTorch-layout safetensors at `path`.
pub fn save_pytorch_safetensors<M: Module>(module: &M, path: &Path) -> Result<(), ModelError> {
    let mut store = SafetensorsStore::from_file(path).with_to_adapter(BurnToPyTorchAdapter).overwrite(true);
    module
        .save_into(&mut store)
        .map_err(|e| ModelError::Weights { source_name: path.display().to_string(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// One object at `s3://b/k`, counting downloads.
    struct OneObject {
        bytes: Vec<u8>,
        gets: AtomicUsize,
    }

    impl WeightsFetcher for OneObject {
        #[allow(clippy::manual_async_fn)]
        fn fetch(&self, _: &str, _: &str, _: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let bytes = self.bytes.clone();
            async move { Ok(bytes) }
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scorefleet-weights-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_mismatch_is_refused_naming_the_source_and_both_sums() {
        let dir = scratch("local");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("w.safetensors");
        std::fs::write(&path, b"weights").expect("write");
        let wrong = sha256_hex(b"other weights");
        let err =
            block_on(resolve_weights(&path.display().to_string(), &wrong, &dir, &NoFetcher)).expect_err("refused");
        let ModelError::ChecksumMismatch { source_name, expected, actual } = &err else { panic!("{err}") };
        assert_eq!((source_name.as_str(), expected.as_str()), (path.display().to_string().as_str(), wrong.as_str()));
        assert_eq!(actual, &sha256_hex(b"weights"));
        assert_eq!(
            err.to_string(),
            format!("weights {}: sha256 {actual} does not match the manifest's {wrong}", path.display())
        );
        // Upper-case hex in a manifest is the same sum.
        let upper = sha256_hex(b"weights").to_ascii_uppercase();
        assert!(block_on(resolve_weights(&path.display().to_string(), &upper, &dir, &NoFetcher)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_object_is_never_cached_and_a_bad_cache_entry_is_fetched_again() {
        let cache = scratch("s3");
        let good = sha256_hex(b"weights");
        let tampered = OneObject { bytes: b"weightz".to_vec(), gets: AtomicUsize::new(0) };
        let err = block_on(resolve_weights("s3://b/k", &good, &cache, &tampered)).expect_err("tampered");
        assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
        assert!(!cache.join(format!("{good}.safetensors")).exists(), "refused bytes were cached");

        std::fs::create_dir_all(&cache).expect("dir");
        std::fs::write(cache.join(format!("{good}.safetensors")), b"corrupt").expect("write");
        let s3 = OneObject { bytes: b"weights".to_vec(), gets: AtomicUsize::new(0) };
        for _ in 0..2 {
            let bytes = block_on(resolve_weights("s3://b/k", &good, &cache, &s3)).expect("fetched");
            assert_eq!(bytes, b"weights");
        }
        assert_eq!(s3.gets.load(Ordering::SeqCst), 1, "the corrupt entry is replaced, then served");
        let _ = std::fs::remove_dir_all(&cache);
    }
}
