//! The result message on the output queue: one per job (at least once).
//!
//! ```json
//! {"v":1,"job_id":"…","run_id":"…","url":"…","status":"ok",
//!  "model":{"name":"digits","version":"sha256:…"},
//!  "top_k":[{"label":"7","score":0.991}],"attempts":1,"worker":"…","completed_at":"…"}
//! ```
//! or `"status":"error","error":{"kind":"decode","message":"…"}` in place of
//! `top_k`. An `embed` model's result carries `"embedding":[…]` and `"dims"`
//! instead of `top_k`, a `raw` model's `"outputs":[{"name","shape","data"}]`. Consumers may see a result twice (SQS is at-least-once); `job_id`
//! lets them drop the copy.

use crate::error::{ErrorKind, JobError};
use serde::{Deserialize, Serialize};

/// The result format version this build writes.
pub const RESULT_VERSION: u32 = 1;

/// Which model produced a result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    /// The model's name (`digits`, `resnet18`, …).
    pub name: String,
    /// `sha256:<hex>` of the weights file, so results are traceable to bytes.
    pub version: String,
}

/// One scored label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The label's name from the model's label set.
    pub label: String,
    /// Softmax probability in `[0, 1]`.
    pub score: f32,
}

/// One output tensor of a `raw` model for one image (its batch axis dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// The graph output's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// What a predictor made of one image: labels, a vector or tensors, by the model's task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// `classify`: the best labels, best first.
    pub top_k: Vec<Prediction>,
    /// `embed`: the vector.
    pub embedding: Option<Vec<f32>>,
    /// `raw`: the output tensors.
    pub outputs: Vec<NamedTensor>,
}

/// Whether the job succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// Scored: `top_k` is set.
    Ok,
    /// Failed for good: `error` is set.
    Error,
}

/// The `error` object of an error result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Typed kind, stable across versions.
    pub kind: ErrorKind,
    /// For people; never parse it.
    pub message: String,
}

impl From<&JobError> for ErrorInfo {
    fn from(e: &JobError) -> Self {
        Self { kind: e.kind, message: e.message.clone() }
    }
}

/// A result message, as written to the output queue and stored with the
/// outcome in the dedup table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    /// Format version.
    pub v: u32,
    /// The job this answers.
    pub job_id: String,
    /// The job's run (empty when the message was unparsable).
    pub run_id: String,
    /// The job's URL as enqueued (empty when unparsable).
    pub url: String,
    /// `ok` or `error`.
    pub status: ResultStatus,
    /// The model that scored it; absent on errors before inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// Best labels first; empty on error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_k: Vec<Prediction>,
    /// An `embed` model's vector for this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// Length of `embedding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dims: Option<usize>,
    /// A `raw` model's outputs for this image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<NamedTensor>,
    /// The failure, on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// How many times the job was received (SQS ApproximateReceiveCount).
    pub attempts: u32,
    /// Which worker produced it.
    pub worker: String,
    /// RFC 3339 UTC time of completion.
    pub completed_at: String,
    /// Milliseconds from receive to outcome in the producing worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// The job's `attrs`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ResultMessage {
    /// Compact JSON for the wire.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a result body (consumers, `collect`, tests).
    pub fn parse(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// The top label, if scored.
    pub fn top(&self) -> Option<&Prediction> {
        self.top_k.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_and_error_results_round_trip_with_the_documented_shape() {
        let ok = ResultMessage {
            v: RESULT_VERSION,
            job_id: "j".into(),
            run_id: "r".into(),
            url: "s3://b/k".into(),
            status: ResultStatus::Ok,
            model: Some(ModelRef { name: "digits".into(), version: "sha256:ab".into() }),
            top_k: vec![Prediction { label: "7".into(), score: 0.5 }],
            embedding: None,
            dims: None,
            outputs: Vec::new(),
            error: None,
            attempts: 1,
            worker: "w".into(),
            completed_at: "2026-11-26T00:00:00Z".into(),
            latency_ms: Some(3),
            attrs: None,
        };
        let json = ok.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["top_k"][0]["label"], "7");
        assert!(v.get("error").is_none());
        assert_eq!(ResultMessage::parse(&json).expect("parse"), ok);

        let err = ResultMessage {
            status: ResultStatus::Error,
            top_k: vec![],
            embedding: None,
            dims: None,
            outputs: Vec::new(),
            model: None,
            error: Some(ErrorInfo::from(&JobError::new(ErrorKind::Decode, "not a png"))),
            ..ok
        };
        let v: serde_json::Value = serde_json::from_str(&err.to_json()).expect("json");
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"]["kind"], "decode");
        assert!(v.get("top_k").is_none());
    }
}
