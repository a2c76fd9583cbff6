//! A loaded model: network + manifest + identity; softmax and top-k; the
//! [`Predictor`] the worker's inference thread owns.
//!
//! ```no_run
//! # async fn f() -> Result<(), scorefleet_model::ModelError> {
//! use scorefleet_model::{BackendKind, Limits, load_model, weights::NoFetcher};
//! use scorefleet_core::traits::{Predictor, Preprocessor};
//! let manifest = scorefleet_model::manifest::repo_manifest("digits");
//! let model = load_model(&manifest, None, std::path::Path::new("/tmp/cache"), &NoFetcher, BackendKind::default_kind().unwrap()).await?;
//! let (pre, mut predictor) = model.into_parts(Limits::default());
//! let chw = pre.preprocess(&std::fs::read("seven.png").unwrap()).unwrap();
//! let top = predictor.predict(&[chw], 3).unwrap();
//! # Ok(()) }
//! ```

use crate::backend::BackendKind;
use crate::digits::{DigitsNet, DigitsNhwc};
use crate::error::ModelError;
use crate::manifest::Manifest;
use crate::preprocess::{ImagePreprocessor, Limits};
use crate::resnet::{ResNet18, ResNet18Nhwc, ResNet18Raw};
use crate::weights::{self, WeightsFetcher};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::result::{ModelRef, Prediction};
use scorefleet_core::traits::{Chw, Predictor};
use std::path::Path;

/// One of the networks this crate builds: the burn module (the reference) and
/// its NHWC form ([`crate::nhwc`]), which [`Network::forward`] runs.
#[derive(Debug, Clone)]
pub enum Network {
    /// The MNIST CNN.
    Digits {
        /// The burn module.
        reference: Box<DigitsNet>,
        /// The same weights, NHWC path.
        fast: Box<DigitsNhwc>,
    },
    /// ResNet-18, BatchNorm folded.
    ResNet18 {
        /// The burn module.
        reference: Box<ResNet18>,
        /// The same weights, NHWC path.
        fast: Box<ResNet18Nhwc>,
    },
}

impl Network {
    /// Builds `architecture` and loads PyTorch-layout safetensors `bytes` into it.
    pub fn load(
        architecture: &str,
        classes: usize,
        bytes: Vec<u8>,
        source_name: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        match architecture {
            "digits" => {
                if classes != crate::digits::CLASSES {
                    return Err(ModelError::Invalid(format!("digits has 10 classes, the manifest lists {classes}")));
                }
                let mut net = DigitsNet::new(device);
                weights::load_pytorch_safetensors(&mut net, bytes, source_name)?;
                Ok(Network::Digits { fast: Box::new(DigitsNhwc::new(&net)?), reference: Box::new(net) })
            }
            "resnet18" => {
                let mut raw = ResNet18Raw::new(classes, device);
                raw.load_pytorch(bytes, source_name)?;
                let net = raw.fold();
                Ok(Network::ResNet18 { fast: Box::new(ResNet18Nhwc::new(&net)?), reference: Box::new(net) })
            }
            other => Err(ModelError::Invalid(format!("unknown architecture {other:?} (digits, resnet18)"))),
        }
    }

    /// images: [batch, channels, height, width], normalised → logits: [batch, classes]
    /// (the NHWC path).
    pub fn forward(&self, images: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        match self {
            Network::Digits { fast, .. } => fast.forward(images),
            Network::ResNet18 { fast, .. } => fast.forward(images),
        }
    }

    /// images: [batch, channels, height, width], normalised → logits: [batch, classes]
    /// through the burn modules' own `forward` (the reference the NHWC path is tested against).
    pub fn forward_reference(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Network::Digits { reference, .. } => reference.forward(images),
            Network::ResNet18 { reference, .. } => reference.forward(images),
        }
    }
}

/// A model ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// Its description.
    pub manifest: Manifest,
    /// Name and `sha256:` version, as results carry them.
    pub model_ref: ModelRef,
    /// The network, on `device`.
    pub network: Network,
    /// Where it runs.
    pub device: Device,
    /// Which backend `device` is.
    pub backend: BackendKind,
}

/// Loads the model a manifest describes, its weights from the manifest's
/// location or from `weights_override` (a path or `s3://` URL), verified
/// against the manifest's sha256 (S3 objects cached in `cache_dir`).
pub async fn load_model<F: WeightsFetcher>(
    manifest_path: &Path,
    weights_override: Option<&str>,
    cache_dir: &Path,
    fetcher: &F,
    backend: BackendKind,
) -> Result<LoadedModel, ModelError> {
    let manifest = Manifest::load(manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let location = weights_override.map(String::from).unwrap_or_else(|| manifest.weights_location(dir));
    let bytes = weights::resolve_weights(&location, &manifest.sha256, cache_dir, fetcher).await?;
    load_model_from_bytes(manifest, bytes, &location, backend)
}

/// Builds a model from a manifest and weights bytes already in memory (checked against the manifest).
pub fn load_model_from_bytes(
    manifest: Manifest,
    bytes: Vec<u8>,
    source_name: &str,
    backend: BackendKind,
) -> Result<LoadedModel, ModelError> {
    let actual = weights::sha256_hex(&bytes);
    if actual != manifest.sha256.to_ascii_lowercase() {
        return Err(ModelError::ChecksumMismatch {
            source_name: source_name.into(),
            expected: manifest.sha256.clone(),
            actual,
        });
    }
    let device = backend.device();
    let network = Network::load(&manifest.architecture, manifest.labels.len(), bytes, source_name, &device)?;
    let model_ref = ModelRef { name: manifest.name.clone(), version: manifest.version() };
    Ok(LoadedModel { manifest, model_ref, network, device, backend })
}

/// Loads the `digits` network of a manifest whose weights are a local file (training tools).
pub fn load_digits_net(manifest_path: &Path, device: &Device) -> Result<(Manifest, DigitsNet), ModelError> {
    let manifest = Manifest::load(manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let location = manifest.weights_location(dir);
    let bytes = std::fs::read(&location).map_err(|e| ModelError::io(&location, e))?;
    let actual = weights::sha256_hex(&bytes);
    if actual != manifest.sha256 {
        return Err(ModelError::ChecksumMismatch { source_name: location, expected: manifest.sha256.clone(), actual });
    }
    let mut net = DigitsNet::new(device);
    weights::load_pytorch_safetensors(&mut net, bytes, &location)?;
    Ok((manifest, net))
}

impl LoadedModel {
    /// The preprocessing this model expects.
    pub fn preprocessor(&self, limits: Limits) -> ImagePreprocessor {
        ImagePreprocessor::from_manifest(&self.manifest, limits)
    }

    /// Splits into the decode pool's [`Preprocessor`](scorefleet_core::traits::Preprocessor)
    /// and the inference thread's [`Predictor`].
    pub fn into_parts(self, limits: Limits) -> (ImagePreprocessor, BurnPredictor) {
        (self.preprocessor(limits), BurnPredictor { model: self })
    }

    /// Softmax probabilities: images: [batch, c, h, w] as `Chw`s → `batch` rows of `classes` values.
    pub fn probabilities(&self, batch: &[Chw]) -> Result<Vec<Vec<f32>>, JobError> {
        let shape = self.manifest.input_shape;
        if let Some((i, bad)) =
            batch.iter().enumerate().find(|(_, c)| c.shape != shape || c.data.len() != shape.iter().product::<usize>())
        {
            return Err(JobError::new(
                ErrorKind::Inference,
                format!("item {i} has shape {:?} ({} values), the model takes {shape:?}", bad.shape, bad.data.len()),
            ));
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut flat = Vec::with_capacity(batch.len() * shape.iter().product::<usize>());
        for c in batch {
            flat.extend_from_slice(&c.data);
        }
        let images =
            Tensor::<4>::from_data(TensorData::new(flat, [batch.len(), shape[0], shape[1], shape[2]]), &self.device);
        let logits = self.network.forward(images).map_err(|e| JobError::new(ErrorKind::Inference, e.to_string()))?;
        let probs = softmax(logits, 1);
        let [rows, classes] = probs.dims();
        let values = probs
            .into_data()
            .try_to_vec_as::<f32>()
            .map_err(|e| JobError::new(ErrorKind::Inference, format!("reading the output: {e:?}")))?;
        if rows != batch.len() || values.len() != rows * classes {
            return Err(JobError::new(
                ErrorKind::Inference,
                format!("output [{rows}, {classes}] for {} images", batch.len()),
            ));
        }
        Ok(values.chunks(classes).map(<[f32]>::to_vec).collect())
    }
}

/// The `k` best labels of one probability row, best first (ties: lower index first).
pub fn top_k(probs: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| Prediction { label: labels.get(i).cloned().unwrap_or_else(|| i.to_string()), score: probs[i] })
        .collect()
}

/// A loaded model as the worker's [`Predictor`].
#[derive(Debug)]
pub struct BurnPredictor {
    model: LoadedModel,
}

impl BurnPredictor {
    /// The model inside.
    pub fn loaded(&self) -> &LoadedModel {
        &self.model
    }
}

impl Predictor for BurnPredictor {
    fn model(&self) -> &ModelRef {
        &self.model.model_ref
    }

    fn predict(&mut self, batch: &[Chw], k: usize) -> Result<Vec<Vec<Prediction>>, JobError> {
        let rows = self.model.probabilities(batch)?;
        Ok(rows.iter().map(|r| top_k(r, &self.model.manifest.labels, k)).collect())
    }
}
