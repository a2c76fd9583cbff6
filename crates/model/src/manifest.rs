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

/// Describes one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The model's name as it appears in results (`digits`, `resnet18`, …).
    pub name: String,
    /// Which network builds it: `digits` or `resnet18`.
    pub architecture: String,
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
    /// The weights: relative path, absolute path or `s3://` URL.
    pub weights: String,
    /// Hex sha256 of the weights file; the model's version is `sha256:<this>`.
    pub sha256: String,
    /// Free text: how the weights were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Manifest {
    /// Reads and checks a manifest; resolves `labels_file`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let bad = |m: String| ModelError::Manifest { path: path.display().to_string(), message: m };
        let mut m: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if m.labels.is_empty()
            && let Some(file) = &m.labels_file
        {
            let lp = path.parent().unwrap_or(Path::new(".")).join(file);
            let text = std::fs::read_to_string(&lp).map_err(|e| ModelError::io(&lp, e))?;
            m.labels = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        }
        m.check().map_err(bad)?;
        Ok(m)
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
        if self.labels.is_empty() {
            return Err("no labels".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 {:?} is not 64 hex digits", self.sha256));
        }
        Ok(())
    }

    /// The weights location: an `s3://` URL as is, a relative path resolved against `manifest_dir`.
    pub fn weights_location(&self, manifest_dir: &Path) -> String {
        if self.weights.starts_with("s3://") || Path::new(&self.weights).is_absolute() {
            self.weights.clone()
        } else {
            manifest_dir.join(&self.weights).display().to_string()
        }
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
