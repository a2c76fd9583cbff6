//! Failures of loading, running and training a model.

use scorefleet_core::error::{ErrorKind, JobError};

/// Why a model could not be loaded, trained or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is missing, unparsable or inconsistent.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The weights' sha256 differs from the manifest's: refuse to serve them.
    #[error("weights {source_name}: sha256 {actual} does not match the manifest's {expected}")]
    ChecksumMismatch {
        /// Where the weights came from (path or URL).
        source_name: String,
        /// From the manifest.
        expected: String,
        /// Of the bytes read.
        actual: String,
    },
    /// Downloading the weights failed (retryable where the fetcher says so).
    #[error("fetching weights {url}: {message}")]
    Fetch {
        /// The `s3://` URL.
        url: String,
        /// What the fetcher said.
        message: String,
    },
    /// The weights file does not fit the network.
    #[error("weights {source_name}: {message}")]
    Weights {
        /// Path or URL.
        source_name: String,
        /// What burn-store said.
        message: String,
    },
    /// A data file (MNIST IDX) is malformed.
    #[error("data {path}: {message}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The ONNX file cannot be parsed, or its graph is malformed.
    #[error("onnx: {0}")]
    Onnx(String),
    /// The graph uses an operator or setting the runner does not execute
    /// (refused at load, never at the first batch).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Running the network failed.
    #[error("inference: {0}")]
    Inference(String),
    /// A request that makes no sense (unknown model, bad argument).
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    /// An I/O error with its path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.as_ref().display().to_string(), source }
    }
}

impl From<ModelError> for JobError {
    fn from(e: ModelError) -> Self {
        let kind = match e {
            ModelError::Fetch { .. } | ModelError::Io { .. } => ErrorKind::Internal,
            ModelError::Inference(_) | ModelError::Invalid(_) => ErrorKind::Inference,
            _ => ErrorKind::Internal,
        };
        JobError::new(kind, e.to_string())
    }
}
