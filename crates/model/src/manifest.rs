//! The model manifest: what a weights file is and how to feed it.
//!
//! ```json
//! {"name":"digits","architecture":"digits","input_shape":[1,28,28],"channels":"grayscale",
//!  "mean":[0.1307],"std":[0.3081],"labels":["0",…,"9"],
//!  "weights":"digits.safetensors","sha256":"…"}
//! ```
//! `weights` is a path relative to the manifest, an absolute path, or an
//! `s3://bucket/key` URL; `labels` may instead be read from `labels_file`
//! (one label per line, relative to the manifest).
//!
//! An ONNX model names its graph instead of weights, and says how to feed it:
//!
//! ```json
//! {"name":"squeezenet","format":"onnx","graph":"squeezenet.onnx","sha256":"…",
//!  "input_shape":[3,224,224],"layout":"nchw","channels":"rgb","channel_order":"rgb",
//!  "resize":"shorter_side_crop","crop_fraction":0.875,"pixel_scale":1.0,
//!  "mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225],
//!  "task":"classify","labels_file":"synset.txt"}
//! ```
//!
//! `sha256` is then the graph file's (the result's `model.version`); `task` is
//! `classify` (softmax unless the graph ends in one, then top-k), `embed` (the
//! output as a float vector, `normalize` for L2) or `raw` (the outputs as
//! tensors); `output` names the graph output to use (default: the first).

use crate::error::ModelError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How decoded pixels become input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channels {
    /// One channel, luma.
    Grayscale,
    /// Three channels, R, G, B.
    Rgb,
}

impl Channels {
    /// 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Channels::Grayscale => 1,
            Channels::Rgb => 3,
        }
    }
}

/// What kind of artifact the manifest describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One of this crate's networks (`architecture`) with safetensors `weights`.
    #[default]
    Safetensors,
    /// An ONNX graph (`graph`), run by [`crate::onnx`].
    Onnx,
}

/// How an image is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// To the input size exactly, the aspect ratio not kept.
    Stretch,
    /// The shorter side to input / `crop_fraction`, aspect kept, then the centre
    /// cropped (torchvision's `Resize` + `CenterCrop`).
    ShorterSideCrop,
    /// The whole image scaled to fit, aspect kept, centred on `pad_value`
    /// (letterbox, as OCR and detector exports expect).
    Letterbox,
}

/// Order of the colour channels in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// R, G, B (PyTorch exports).
    #[default]
    Rgb,
    /// B, G, R (Caffe and OpenCV exports).
    Bgr,
}

/// Memory layout of the graph's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[batch, channels, height, width]`.
    #[default]
    Nchw,
    /// `[batch, height, width, channels]` (TensorFlow exports).
    Nhwc,
}

/// What a result carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The `top_k` labels.
    #[default]
    Classify,
    /// The output as a float vector (`embedding`).
    Embed,
    /// The outputs as tensors.
    Raw,
}

fn one() -> f32 {
    1.0
}

/// Describes one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name as it appears in results (`digits`, `resnet18`, …).
    pub name: String,
    /// `safetensors` (default) or `onnx`.
    #[serde(default)]
    pub format: Format,
    /// Which network builds it (`digits` or `resnet18`; not used by ONNX models).
    #[serde(default)]
    pub architecture: String,
    /// The ONNX graph: relative path, absolute path or `s3://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
    /// Layout of the graph's input (ONNX models).
    #[serde(default)]
    pub layout: Layout,
    /// How images reach the input size (default: stretch; `resnet18`: shorter side + crop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
    /// Crop fraction of `shorter_side_crop` (default 0.875: 256 → 224).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_fraction: Option<f32>,
    /// Fill of `letterbox` borders, 0–255 per channel.
    #[serde(default)]
    pub pad_value: u8,
    /// RGB or BGR input channels.
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// The scale `mean` and `std` are stated on: pixels are `[0, pixel_scale]`
    /// (1.0: `[0, 1]`, torchvision; 255.0: Caffe-style byte values).
    #[serde(default = "one")]
    pub pixel_scale: f32,
    /// `classify`, `embed` or `raw`.
    #[serde(default)]
    pub task: Task,
    /// The graph output a result is made of (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// `embed`: L2-normalise the vector.
    #[serde(default)]
    pub normalize: bool,
    /// `classify`: apply softmax (default: unless the graph ends in Softmax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softmax: Option<bool>,
    /// `[channels, height, width]` of one input.
    pub input_shape: [usize; 3],
    /// Colour conversion before normalisation.
    pub channels: Channels,
    /// Per-channel mean of `[0, 1]` pixels, subtracted.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of `[0, 1]` pixels, divided by.
    pub std: Vec<f32>,
    /// Whether the pixel values are inverted (`1 - v`) before normalisation
    /// (MNIST digits are light on dark; most scans are dark on light).
    #[serde(default)]
    pub invert: bool,
    /// Class names, in output order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// A file of labels, one a line, when `labels` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_file: Option<String>,
    /// The weights: relative path, absolute path or `s3://` URL (safetensors models).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub weights: String,
    /// Hex sha256 of the weights file; the model's version is `sha256:<this>`.
    pub sha256: String,
    /// Free text: how the weights were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Default for Manifest {
    /// An empty safetensors manifest: fill in what the model needs.
    fn default() -> Self {
        Manifest {
            name: String::new(),
            format: Format::default(),
            architecture: String::new(),
            graph: None,
            layout: Layout::default(),
            resize: None,
            crop_fraction: None,
            pad_value: 0,
            channel_order: ChannelOrder::default(),
            pixel_scale: 1.0,
            task: Task::default(),
            output: None,
            normalize: false,
            softmax: None,
            input_shape: [1, 1, 1],
            channels: Channels::Grayscale,
            mean: vec![0.0],
            std: vec![1.0],
            invert: false,
            labels: Vec::new(),
            labels_file: None,
            weights: String::new(),
            sha256: String::new(),
            notes: None,
        }
    }
}

impl Manifest {
    /// Reads and checks a manifest; resolves `labels_file`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), |file| {
            let lp = dir.join(file);
            std::fs::read_to_string(&lp).map_err(|e| ModelError::io(&lp, e))
        })
    }

    /// Parses and checks manifest `text` (from `source`, for errors);
    /// `read_labels` reads a `labels_file` named relative to the manifest.
    pub fn parse(
        text: &str,
        source: &str,
        read_labels: impl FnOnce(&str) -> Result<String, ModelError>,
    ) -> Result<Self, ModelError> {
        let m = Self::from_json(text, source)?;
        let labels = m.labels_to_read().map(read_labels).transpose()?;
        m.finish(labels.as_deref(), source)
    }

    /// The manifest as `text` states it: `labels_file` not read, nothing checked.
    pub fn from_json(text: &str, source: &str) -> Result<Self, ModelError> {
        serde_json::from_str(text)
            .map_err(|e| ModelError::Manifest { path: source.to_string(), message: e.to_string() })
    }

    /// The `labels_file` to read, when no labels are inline.
    pub fn labels_to_read(&self) -> Option<&str> {
        self.labels_file.as_deref().filter(|_| self.labels.is_empty())
    }

    /// Takes the labels file's `text` (one label a line), if one was read, and checks the whole.
    pub fn finish(mut self, labels: Option<&str>, source: &str) -> Result<Self, ModelError> {
        if let Some(text) = labels {
            self.labels = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        }
        self.check().map_err(|m| ModelError::Manifest { path: source.to_string(), message: m })?;
        Ok(self)
    }

    /// The resize policy in effect (stated, or the architecture's).
    pub fn resize_policy(&self) -> ResizePolicy {
        self.resize.unwrap_or(if self.architecture == "resnet18" {
            ResizePolicy::ShorterSideCrop
        } else {
            ResizePolicy::Stretch
        })
    }

    /// Internal consistency: channels, normalisation and labels agree.
    pub fn check(&self) -> Result<(), String> {
        let c = self.channels.count();
        if self.input_shape[0] != c {
            return Err(format!("input_shape {:?} does not have {c} channels", self.input_shape));
        }
        if self.input_shape[1] == 0 || self.input_shape[2] == 0 {
            return Err("input_shape has a zero side".into());
        }
        if self.mean.len() != c || self.std.len() != c {
            return Err(format!("mean/std need {c} values"));
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return Err("std must be positive".into());
        }
        match self.format {
            Format::Safetensors if self.labels.is_empty() => return Err("no labels".into()),
            Format::Safetensors if self.weights.is_empty() => return Err("no weights".into()),
            Format::Onnx if self.graph.as_deref().is_none_or(str::is_empty) => {
                return Err("format onnx needs a graph".into());
            }
            _ => {}
        }
        if self.channel_order == ChannelOrder::Bgr && self.channels != Channels::Rgb {
            return Err("channel_order bgr needs channels rgb".into());
        }
        if self.pixel_scale.is_nan() || self.pixel_scale <= 0.0 {
            return Err("pixel_scale must be positive".into());
        }
        if let Some(f) = self.crop_fraction
            && !(f > 0.0 && f <= 1.0)
        {
            return Err(format!("crop_fraction {f} is not in (0, 1]"));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 {:?} is not 64 hex digits", self.sha256));
        }
        Ok(())
    }

    /// The weights location: an `s3://` URL as is, a relative path resolved against `manifest_dir`.
    pub fn weights_location(&self, manifest_dir: &Path) -> String {
        self.artifact_location(&manifest_dir.display().to_string())
    }

    /// Where the artifact `sha256` identifies is (the graph of an ONNX model,
    /// else the weights), resolved against `base`: the manifest's directory or
    /// its `s3://bucket/prefix`.
    pub fn artifact_location(&self, base: &str) -> String {
        let rel = match self.format {
            Format::Onnx => self.graph.as_deref().unwrap_or_default(),
            Format::Safetensors => self.weights.as_str(),
        };
        resolve_relative(base, rel)
    }

    /// `sha256:<hex>`, the version in results.
    pub fn version(&self) -> String {
        format!("sha256:{}", self.sha256.to_ascii_lowercase())
    }
}

/// `models/<name>/manifest.json` in the repository.
pub fn repo_manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name).join("manifest.json")
}

/// The repository's root (the checkout this crate was built from).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `rel` against `base` (a directory or an `s3://bucket/prefix`); absolute
/// paths and `s3://` URLs as they are.
pub fn resolve_relative(base: &str, rel: &str) -> String {
    if rel.starts_with("s3://") || Path::new(rel).is_absolute() {
        rel.to_string()
    } else if base.starts_with("s3://") {
        format!("{}/{rel}", base.trim_end_matches('/'))
    } else {
        Path::new(base).join(rel).display().to_string()
    }
}
