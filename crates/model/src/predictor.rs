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
use crate::manifest::{Format, Layout, Manifest, Task};
use crate::nhwc::WinogradTile;
use crate::onnx::OnnxModel;
use crate::onnx::value::{Data, Value};
use crate::preprocess::{ImagePreprocessor, Limits};
use crate::resnet::{ResNet18, ResNet18Nhwc, ResNet18Raw};
use crate::weights::{self, WeightsFetcher};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::result::{ModelRef, NamedTensor, Prediction, Scored};
use scorefleet_core::traits::{Chw, Predictor};
use std::path::Path;

/// One of the networks this crate builds: the burn module (the reference) and
/// its NHWC form ([`crate::nhwc`]), which [`Network::forward`] runs.
#[derive(Debug, Clone)]
pub enum Network {
    /// The MNIST CNN.
    Digits {
        /// The burn module; dropped when the model is split for serving
        /// ([`LoadedModel::into_parts`]), so a worker holds one copy of the weights.
        reference: Option<Box<DigitsNet>>,
        /// The same weights, NHWC path.
        fast: Box<DigitsNhwc>,
    },
    /// ResNet-18, BatchNorm folded.
    ResNet18 {
        /// The burn module; dropped for serving, as for `Digits`.
        reference: Option<Box<ResNet18>>,
        /// The same weights, NHWC path.
        fast: Box<ResNet18Nhwc>,
    },
    /// An ONNX graph, every node on burn ops ([`crate::onnx`]).
    Onnx(Box<OnnxNet>),
}

/// An ONNX graph served as a network: which output a result is made of and
/// how images enter it.
#[derive(Debug, Clone)]
pub struct OnnxNet {
    /// The parsed, checked graph on its device.
    pub model: OnnxModel,
    /// Index of the output `classify` and `embed` use.
    output: usize,
    /// The graph takes `[n, h, w, c]` rather than `[n, c, h, w]`.
    nhwc: bool,
    /// Most images per run of the graph: 1 when its batch dimension is fixed
    /// at 1, with the CPU kernels as many as [`PART_INPUT_FLOATS`] allows,
    /// else unbounded.
    part: usize,
    /// The chosen output is a Softmax's.
    ends_in_softmax: bool,
}

impl OnnxNet {
    /// Checks that `model` takes an image of the manifest's shape and picks its output.
    pub fn new(model: OnnxModel, manifest: &Manifest, source_name: &str) -> Result<Self, ModelError> {
        let bad = |m: String| ModelError::Unsupported(format!("{source_name}: {m}"));
        let i = &model.inspection;
        let [input] = i.inputs.as_slice() else {
            return Err(bad(format!("the graph takes {} inputs; an image model takes one", i.inputs.len())));
        };
        let nhwc = manifest.layout == Layout::Nhwc;
        let [c, h, w] = manifest.input_shape;
        let want = if nhwc { [h, w, c] } else { [c, h, w] };
        if input.shape.len() != 4
            || input.shape[1..].iter().zip(want).any(|(d, want)| d.is_some_and(|d| d != want))
            || !input.dtype.starts_with('F')
        {
            return Err(bad(format!(
                "input {} is {} {}, not an image of {want:?} ({})",
                input.name,
                input.dtype,
                input.shape_string(),
                if nhwc { "nhwc" } else { "nchw" }
            )));
        }
        let output = match &manifest.output {
            Some(name) => i.outputs.iter().position(|o| &o.name == name).ok_or_else(|| {
                bad(format!(
                    "no output {name:?} (outputs: {:?})",
                    i.outputs.iter().map(|o| &o.name).collect::<Vec<_>>()
                ))
            })?,
            None => 0,
        };
        let ends_in_softmax = i.output_ops.get(output).is_some_and(|op| op == "Softmax");
        let part = if input.shape[0] == Some(1) {
            1
        } else if model.options.cpu_kernels {
            (PART_INPUT_FLOATS / (c * h * w).max(1)).clamp(1, 256)
        } else {
            usize::MAX
        };
        Ok(OnnxNet { model, output, nhwc, part, ends_in_softmax })
    }

    /// Every output of the graph for `images` ([n, c, h, w]), batch first.
    pub fn run(&self, images: Tensor<4>) -> Result<Vec<Value>, ModelError> {
        let n = images.dims()[0];
        // With at least two images per thread, at least one part per thread.
        let threads = rayon::current_num_threads().max(1);
        let part = if self.model.options.cpu_kernels && n >= 2 * threads {
            self.part.min(n.div_ceil(threads))
        } else {
            self.part
        };
        if n > part {
            // Parts of the batch through the whole graph, in parallel: each
            // part's activations stay in its core's cache.
            use rayon::prelude::*;
            let starts: Vec<usize> = (0..n).step_by(part).collect();
            let parts = starts
                .into_par_iter()
                .map(|i| self.run_part(images.clone().narrow(0, i, part.min(n - i))))
                .collect::<Result<Vec<_>, _>>()?;
            return concat_batches(parts);
        }
        self.run_part(images)
    }

    /// One part of a batch through the graph.
    fn run_part(&self, images: Tensor<4>) -> Result<Vec<Value>, ModelError> {
        let x = if self.nhwc { images.permute([0, 2, 3, 1]) } else { images };
        let shape = x.dims().to_vec();
        let x = Value {
            data: Data::F(x.reshape(crate::onnx::value::padded(&shape).map_err(ModelError::Inference)?)),
            shape,
        };
        self.model.run(vec![x])
    }

    /// The chosen output as `[n, rest]`.
    fn forward(&self, images: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        let n = images.dims()[0];
        let out = self.run(images)?.swap_remove(self.output);
        if out.shape.first() != Some(&n) {
            return Err(ModelError::Inference(format!("output {:?} for {n} images", out.shape)));
        }
        let rest = out.len() / n.max(1);
        Ok(out.into_float("output").map_err(ModelError::Inference)?.reshape([n, rest]))
    }
}

/// Input floats per run of a graph served with the CPU kernels: a batch is
/// cut into parts of this size (4 images of 3×224×224, 256 of digits) that go
/// through the whole graph in parallel, each part's activations staying in
/// its core's caches. Measured at batch 32 on one thread (CPU time per
/// image): SqueezeNet 1.42× as fast with parts of 4 as with one of 32,
/// MobileNetV2 1.28×, ResNet-50 0.99×; digits loses with parts under 16
/// (per-node costs dominate a 28×28 model).
pub const PART_INPUT_FLOATS: usize = 4 * 3 * 224 * 224;

/// The outputs of batches run one by one, concatenated along the batch axis.
fn concat_batches(parts: Vec<Vec<Value>>) -> Result<Vec<Value>, ModelError> {
    let outputs = parts.first().map_or(0, Vec::len);
    (0..outputs)
        .map(|k| {
            let vals: Vec<&Value> = parts.iter().map(|p| &p[k]).collect();
            let mut shape = vals[0].shape.clone();
            if shape.is_empty() {
                return Err(ModelError::Inference("a scalar output cannot be batched".into()));
            }
            shape[0] = vals.iter().map(|v| v.shape[0]).sum();
            let ax = vals[0].axis(0);
            let t = Tensor::cat(
                vals.iter().map(|v| v.float("output")).collect::<Result<Vec<_>, _>>().map_err(ModelError::Inference)?,
                ax,
            );
            Ok(Value { data: Data::F(t), shape })
        })
        .collect()
}

impl Network {
    /// Builds `architecture` and loads PyTorch-layout safetensors `bytes` into
    /// it, with the CPU kernels it is served with ([`WinogradTile::SERVED`]).
    pub fn load(
        architecture: &str,
        classes: usize,
        bytes: Vec<u8>,
        source_name: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::load_with(architecture, classes, bytes, source_name, device, Some(WinogradTile::SERVED))
    }

    /// [`Network::load`] with the Winograd tile of the NHWC path's 3×3
    /// stride-1 convolutions chosen (`None`: all on im2col + GEMM; benchmarks
    /// compare the two).
    pub fn load_with(
        architecture: &str,
        classes: usize,
        bytes: Vec<u8>,
        source_name: &str,
        device: &Device,
        winograd: Option<WinogradTile>,
    ) -> Result<Self, ModelError> {
        match architecture {
            "digits" => {
                if classes != crate::digits::CLASSES {
                    return Err(ModelError::Invalid(format!("digits has 10 classes, the manifest lists {classes}")));
                }
                let mut net = DigitsNet::new(device);
                weights::load_pytorch_safetensors(&mut net, bytes, source_name)?;
                Ok(Network::Digits { fast: Box::new(DigitsNhwc::new(&net)?), reference: Some(Box::new(net)) })
            }
            "resnet18" => {
                let mut raw = ResNet18Raw::new(classes, device);
                raw.load_pytorch(bytes, source_name)?;
                let net = raw.fold();
                Ok(Network::ResNet18 {
                    fast: Box::new(ResNet18Nhwc::new(&net, winograd)?),
                    reference: Some(Box::new(net)),
                })
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
            Network::Onnx(net) => net.forward(images),
        }
    }

    /// images: [batch, channels, height, width], normalised → logits: [batch, classes]
    /// through the burn modules' own `forward` (the reference the NHWC path is tested against).
    pub fn forward_reference(&self, images: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        match self {
            Network::Digits { reference: Some(r), .. } => Ok(r.forward(images)),
            Network::ResNet18 { reference: Some(r), .. } => Ok(r.forward(images)),
            Network::Digits { reference: None, .. } | Network::ResNet18 { reference: None, .. } => {
                Err(ModelError::Invalid("the burn module was dropped when the model was split for serving".into()))
            }
            // A graph has one path: burn's ops.
            Network::Onnx(net) => net.forward(images),
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
    load_model_at(&manifest_path.display().to_string(), weights_override, cache_dir, fetcher, backend).await
}

/// [`load_model`] for a manifest at a path or an `s3://bucket/key` URL; its
/// relative `graph`, `weights` and `labels_file` are resolved beside it.
pub async fn load_model_at<F: WeightsFetcher>(
    manifest_location: &str,
    artifact_override: Option<&str>,
    cache_dir: &Path,
    fetcher: &F,
    backend: BackendKind,
) -> Result<LoadedModel, ModelError> {
    let (manifest, base) = load_manifest(manifest_location, fetcher).await?;
    let location = artifact_override.map(String::from).unwrap_or_else(|| manifest.artifact_location(&base));
    let bytes = weights::resolve_weights(&location, &manifest.sha256, cache_dir, fetcher).await?;
    build_model(manifest, bytes, &location, backend)
}

/// Largest manifest or labels file read from S3.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// A small text file (manifest, labels) from a path or `s3://`.
async fn read_text<F: WeightsFetcher>(location: &str, fetcher: &F) -> Result<String, ModelError> {
    match weights::WeightsSource::parse(location)? {
        weights::WeightsSource::Path(p) => std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e)),
        weights::WeightsSource::S3 { bucket, key } => {
            let bytes = fetcher
                .fetch(&bucket, &key, MAX_MANIFEST_BYTES)
                .await
                .map_err(|e| ModelError::Fetch { url: location.to_string(), message: e.to_string() })?;
            String::from_utf8(bytes)
                .map_err(|_| ModelError::Manifest { path: location.to_string(), message: "not UTF-8".into() })
        }
    }
}

/// A manifest from a path or `s3://` (and its `labels_file` beside it), with
/// the base its relative locations resolve against: its directory or `s3://bucket/prefix`.
pub async fn load_manifest<F: WeightsFetcher>(location: &str, fetcher: &F) -> Result<(Manifest, String), ModelError> {
    let base = match location.rsplit_once('/') {
        Some(("", _)) => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
        None => ".".to_string(),
    };
    let manifest = Manifest::from_json(&read_text(location, fetcher).await?, location)?;
    let labels = match manifest.labels_to_read() {
        Some(file) => Some(read_text(&crate::manifest::resolve_relative(&base, file), fetcher).await?),
        None => None,
    };
    Ok((manifest.finish(labels.as_deref(), location)?, base))
}

/// Builds a model from a manifest and weights bytes already in memory
/// (checked against the manifest: [`weights::verify`]).
pub fn load_model_from_bytes(
    manifest: Manifest,
    bytes: Vec<u8>,
    source_name: &str,
    backend: BackendKind,
) -> Result<LoadedModel, ModelError> {
    weights::verify(source_name, &bytes, &manifest.sha256)?;
    build_model(manifest, bytes, source_name, backend)
}

/// A model from bytes [`weights::verify`] has passed.
fn build_model(
    manifest: Manifest,
    bytes: Vec<u8>,
    source_name: &str,
    backend: BackendKind,
) -> Result<LoadedModel, ModelError> {
    let device = backend.device();
    let network = match manifest.format {
        Format::Safetensors => {
            Network::load(&manifest.architecture, manifest.labels.len(), bytes, source_name, &device)?
        }
        Format::Onnx => {
            let model = OnnxModel::from_bytes(&bytes, &device).map_err(|e| match e {
                ModelError::Unsupported(m) => ModelError::Unsupported(format!("{source_name}: {m}")),
                ModelError::Onnx(m) => ModelError::Onnx(format!("{source_name}: {m}")),
                other => other,
            })?;
            Network::Onnx(Box::new(OnnxNet::new(model, &manifest, source_name)?))
        }
    };
    let model_ref = ModelRef { name: manifest.name.clone(), version: manifest.version() };
    Ok(LoadedModel { manifest, model_ref, network, device, backend })
}

impl LoadedModel {
    /// The preprocessing this model expects.
    pub fn preprocessor(&self, limits: Limits) -> ImagePreprocessor {
        ImagePreprocessor::from_manifest(&self.manifest, limits)
    }

    /// Splits into the decode pool's [`Preprocessor`](scorefleet_core::traits::Preprocessor)
    /// and the inference thread's [`Predictor`].
    pub fn into_parts(mut self, limits: Limits) -> (ImagePreprocessor, BurnPredictor) {
        // Serving runs the NHWC form (or the graph): the burn module's copy of
        // the weights goes.
        match &mut self.network {
            Network::Digits { reference, .. } => *reference = None,
            Network::ResNet18 { reference, .. } => *reference = None,
            Network::Onnx(_) => {}
        }
        (self.preprocessor(limits), BurnPredictor { model: self })
    }

    /// Whether `classify` applies a softmax: the manifest says, or the graph
    /// does not end in one (the built-in networks end in logits).
    fn applies_softmax(&self) -> bool {
        match (&self.network, self.manifest.softmax) {
            (_, Some(forced)) => forced,
            (Network::Onnx(net), None) => !net.ends_in_softmax,
            _ => true,
        }
    }

    /// images: [batch, c, h, w] as `Chw`s, checked against the input shape.
    fn input_tensor(&self, batch: &[Chw]) -> Result<Tensor<4>, JobError> {
        let shape = self.manifest.input_shape;
        if let Some((i, bad)) =
            batch.iter().enumerate().find(|(_, c)| c.shape != shape || c.data.len() != shape.iter().product::<usize>())
        {
            return Err(JobError::new(
                ErrorKind::Inference,
                format!("item {i} has shape {:?} ({} values), the model takes {shape:?}", bad.shape, bad.data.len()),
            ));
        }
        let mut flat = Vec::with_capacity(batch.len() * shape.iter().product::<usize>());
        for c in batch {
            flat.extend_from_slice(&c.data);
        }
        Ok(Tensor::<4>::from_data(TensorData::new(flat, [batch.len(), shape[0], shape[1], shape[2]]), &self.device))
    }

    /// What the model's task makes of each image: `k` labels, a vector or tensors.
    pub fn score(&self, batch: &[Chw], k: usize) -> Result<Vec<Scored>, JobError> {
        let inference = |e: ModelError| JobError::new(ErrorKind::Inference, e.to_string());
        match self.manifest.task {
            Task::Classify => Ok(self
                .probabilities(batch)?
                .iter()
                .map(|r| Scored { top_k: top_k(r, &self.manifest.labels, k), ..Scored::default() })
                .collect()),
            _ if batch.is_empty() => Ok(Vec::new()),
            Task::Embed => {
                let rows = self.network.forward(self.input_tensor(batch)?).map_err(inference)?;
                let [n, d] = rows.dims();
                let values = rows
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .map_err(|e| JobError::new(ErrorKind::Inference, format!("reading the output: {e:?}")))?;
                Ok(values
                    .chunks(d.max(1))
                    .take(n)
                    .map(|v| {
                        let mut v = v.to_vec();
                        if self.manifest.normalize {
                            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                            if norm > 0.0 {
                                v.iter_mut().for_each(|x| *x /= norm);
                            }
                        }
                        Scored { embedding: Some(v), ..Scored::default() }
                    })
                    .collect())
            }
            Task::Raw => {
                let Network::Onnx(net) = &self.network else {
                    return Err(JobError::new(ErrorKind::Inference, "task raw needs an ONNX graph"));
                };
                let n = batch.len();
                let outs = net.run(self.input_tensor(batch)?).map_err(inference)?;
                let names: Vec<String> = net.model.inspection.outputs.iter().map(|p| p.name.clone()).collect();
                let mut per_image: Vec<Scored> = (0..n).map(|_| Scored::default()).collect();
                for (name, out) in names.iter().zip(outs) {
                    if self.manifest.output.as_ref().is_some_and(|o| o != name) {
                        continue;
                    }
                    if out.shape.first() != Some(&n) {
                        return Err(JobError::new(
                            ErrorKind::Inference,
                            format!("output {name} is {:?} for {n} images", out.shape),
                        ));
                    }
                    let shape = out.shape[1..].to_vec();
                    let values = out.to_f32s().map_err(|e| JobError::new(ErrorKind::Inference, e))?;
                    let each = values.len() / n;
                    for (s, chunk) in per_image.iter_mut().zip(values.chunks(each.max(1))) {
                        s.outputs.push(NamedTensor { name: name.clone(), shape: shape.clone(), data: chunk.to_vec() });
                    }
                }
                Ok(per_image)
            }
        }
    }

    /// Softmax probabilities: images: [batch, c, h, w] as `Chw`s → `batch` rows of `classes` values.
    pub fn probabilities(&self, batch: &[Chw]) -> Result<Vec<Vec<f32>>, JobError> {
        let images = self.input_tensor(batch)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let logits = self.network.forward(images).map_err(|e| JobError::new(ErrorKind::Inference, e.to_string()))?;
        let probs = if self.applies_softmax() { softmax(logits, 1) } else { logits };
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

    fn score(&mut self, batch: &[Chw], k: usize) -> Result<Vec<Scored>, JobError> {
        self.model.score(batch, k)
    }
}
