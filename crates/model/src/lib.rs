//! scorefleet's burn classifiers: the networks, their preprocessing, their
//! weights and identity, and the [`scorefleet_core::traits::Predictor`] /
//! [`scorefleet_core::traits::Preprocessor`] implementations the worker runs.
//!
//! # Layout
//! - [`backend`]: which burn backend (Cargo feature) runs the model, as a [`burn::tensor::Device`].
//! - [`manifest`]: the small JSON file that describes a model (input shape, normalisation, labels, weights, sha256).
//! - [`weights`]: weights from a local path or `s3://` URL, cached on disk, verified by sha256.
//! - [`preprocess`]: encoded bytes → [`scorefleet_core::traits::Chw`], with decompression-bomb limits.
//! - [`digits`], [`resnet`]: the networks (burn modules, the reference) and their NHWC forms.
//! - [`onnx`]: the ONNX graph runner: burn's `onnx-ir` parser, every node executed on burn ops.
//! - [`nhwc`]: the fast inference path: channels-last im2col + burn matmul, fused epilogues.
//! - [`predictor`]: a loaded model: softmax, top-k, the core traits.
//! - `mnist` (Cargo feature `mnist`), `train` and `bench` (feature `train`;
//!   serving leaves both off): the IDX reader, the training/evaluation loops,
//!   the benchmark.
#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "train")]
pub mod bench;
pub mod digits;
pub mod error;
pub mod manifest;
#[cfg(feature = "mnist")]
pub mod mnist;
pub mod nhwc;
pub mod onnx;
pub mod predictor;
pub mod preprocess;
pub mod resnet;
#[cfg(feature = "train")]
pub mod train;
pub mod weights;

pub use backend::BackendKind;
pub use error::ModelError;
pub use manifest::Manifest;
pub use predictor::{
    BurnPredictor, LoadedModel, Network, load_manifest, load_model, load_model_at, load_model_from_bytes,
};
pub use preprocess::{ImagePreprocessor, Limits};
pub use weights::{WeightsFetcher, WeightsSource, resolve_weights, sha256_hex};
