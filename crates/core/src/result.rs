//! The result message on the output queue: one per job (at least once).
//!
//! ```json
//! {"v":1,"job_id":"…","run_id":"…","url":"…","status":"ok",
//!  "model":{"name":"digits","version":"sha256:…"},
//!  "top_k":[{"label":"7","score":0.991}],"attempts":1,"worker":"…","completed_at":"…"}
//! ```
//! or `"status":"error","error":{"kind":"decode","message":"…"}` in place of
//! `top_k`. An `embed` model's result carries `"embedding":[…]` and `"dims"`
//! instead of `top_k`, a `raw` model's `"outputs":[{"name","shape","data"}]`.
//!
//! A job of several images (`v: 2`) is answered by one `v: 2` result with no
//! `url`, `top_k` or per-image fields of its own: `"images":[…]` holds one
//! [`ImageResult`] per image, in the job's order, each with its own `url`,
//! `status`, scores or `error`, and `attrs`. Its `status` is `ok` when at
//! least one image was scored, `error` when none was (then `error` names why).
//! [`ResultMessage::per_image`] flattens either form to one row per image.
//!
//! Consumers may see a result twice (SQS is at-least-once); `job_id` lets
//! them drop the copy.

use crate::error::{ErrorKind, JobError};
use serde::{Deserialize, Serialize};

/// The result format version of a one-image job.
pub const RESULT_VERSION: u32 = 1;
/// The result format version of a job of several images.
pub const RESULT_VERSION_MULTI: u32 = 2;

/// Largest result body a worker sends, in bytes: SQS's classic message
/// limit of 256 KiB, which also keeps the stored outcome under DynamoDB's
/// 400 KB item limit. [`ResultMessage::fit`] makes a larger result fit.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

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
    /// The job's URL as enqueued (empty, and not written, when unparsable
    /// and in a `v: 2` result, whose images carry their own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
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
    /// A `v: 2` result's images, in the job's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageResult>,
}

/// One image's part of a `v: 2` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageResult {
    /// The image's URL as enqueued.
    pub url: String,
    /// `ok` or `error`, for this image alone.
    pub status: ResultStatus,
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
    /// This image's failure, on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The image's `attrs`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ImageResult {
    /// A scored image.
    pub fn scored(url: String, attrs: Option<serde_json::Map<String, serde_json::Value>>, s: Scored) -> Self {
        Self {
            url,
            status: ResultStatus::Ok,
            top_k: s.top_k,
            dims: s.embedding.as_ref().map(Vec::len),
            embedding: s.embedding,
            outputs: s.outputs,
            error: None,
            attrs,
        }
    }

    /// A failed image.
    pub fn failed(url: String, attrs: Option<serde_json::Map<String, serde_json::Value>>, e: &JobError) -> Self {
        Self {
            url,
            status: ResultStatus::Error,
            top_k: Vec::new(),
            embedding: None,
            dims: None,
            outputs: Vec::new(),
            error: Some(ErrorInfo::from(e)),
            attrs,
        }
    }
}

impl ResultMessage {
    /// One row per image, each in the one-image shape (`images` empty): a
    /// `v: 1` result as it is; a `v: 2` result's images, each with the
    /// job's id, run, model, attempts, worker and times. A `v: 2` result
    /// without images (a job that failed as a whole) is one row, as it is.
    pub fn per_image(mut self) -> Vec<ResultMessage> {
        if self.images.is_empty() {
            return vec![self];
        }
        let images = std::mem::take(&mut self.images);
        images
            .into_iter()
            .map(|i| ResultMessage {
                url: i.url,
                status: i.status,
                model: if i.status == ResultStatus::Ok { self.model.clone() } else { None },
                top_k: i.top_k,
                embedding: i.embedding,
                dims: i.dims,
                outputs: i.outputs,
                error: i.error,
                attrs: i.attrs,
                ..self.clone()
            })
            .collect()
    }

    /// Makes a result whose body (`body`, this result's [`to_json`]) passes
    /// `limit` bytes fit under it, and returns the new body; a result that
    /// fits is left as it is. Scores go, the largest image first, until the
    /// body fits: each image so dropped fails with `too_large`, naming its
    /// size. A one-image result fails as a whole, and a job left with no
    /// scored image fails with `too_large` too (it can be sent: its other
    /// parts come from the job message, itself under the input limit).
    ///
    /// [`to_json`]: ResultMessage::to_json
    pub fn fit(&mut self, body: String, limit: usize) -> String {
        if body.len() <= limit {
            return body;
        }
        let over = |what: &str, bytes: usize| ErrorInfo {
            kind: ErrorKind::TooLarge,
            message: format!(
                "{what} is {bytes} bytes as JSON, over the {limit}-byte limit of a result message (fewer images per job, or a smaller output)"
            ),
        };
        let mut excess = body.len() - limit;
        if !self.images.is_empty() {
            let mut scored: Vec<(usize, usize)> = self
                .images
                .iter()
                .enumerate()
                .filter(|(_, i)| i.status == ResultStatus::Ok)
                .map(|(n, i)| (serde_json::to_string(i).map_or(0, |s| s.len()), n))
                .collect();
            scored.sort_unstable_by(|a, b| b.cmp(a));
            // Compact JSON: replacing one image's object changes the body by
            // exactly the difference of the two objects' lengths.
            for (bytes, n) in scored {
                if excess == 0 {
                    break;
                }
                let image = &mut self.images[n];
                *image = ImageResult::failed(
                    std::mem::take(&mut image.url),
                    image.attrs.take(),
                    &JobError::new(ErrorKind::TooLarge, over("this image's result", bytes).message),
                );
                let now = serde_json::to_string(&self.images[n]).map_or(0, |s| s.len());
                excess = excess.saturating_sub(bytes.saturating_sub(now));
            }
            if self.images.iter().any(|i| i.status == ResultStatus::Ok) {
                return self.to_json();
            }
        }
        self.status = ResultStatus::Error;
        self.model = None;
        self.top_k.clear();
        self.embedding = None;
        self.dims = None;
        self.outputs.clear();
        self.error = Some(over("the result", body.len()));
        self.to_json()
    }

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
            images: Vec::new(),
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
        assert_eq!(err.clone().per_image(), vec![err], "a one-image result is its own row");
    }

    #[test]
    fn a_multi_image_result_has_one_entry_per_image_and_flattens_to_rows() {
        let attrs = |l: &str| Some(serde_json::Map::from_iter([("label".to_owned(), serde_json::json!(l))]));
        let scored = Scored { top_k: vec![Prediction { label: "3".into(), score: 0.75 }], ..Scored::default() };
        let multi = ResultMessage {
            model: Some(ModelRef { name: "digits".into(), version: "sha256:ab".into() }),
            attempts: 2,
            latency_ms: Some(9),
            ..multi_of(vec![
                ImageResult::scored("s3://b/a".into(), attrs("3"), scored),
                ImageResult::failed("s3://b/b".into(), attrs("4"), &JobError::new(ErrorKind::Decode, "not a png")),
            ])
        };
        let json = multi.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["v"], 2);
        assert!(v.get("url").is_none() && v.get("top_k").is_none());
        assert_eq!(v["images"][0]["top_k"][0]["label"], "3");
        assert_eq!(v["images"][1]["status"], "error");
        assert_eq!(v["images"][1]["error"]["kind"], "decode");
        assert_eq!(v["images"][1]["attrs"]["label"], "4");
        assert_eq!(ResultMessage::parse(&json).expect("parse"), multi);
        let rows = multi.clone().per_image();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].url.as_str(), rows[0].status, rows[0].top().map(|p| p.score)),
            ("s3://b/a", ResultStatus::Ok, Some(0.75))
        );
        assert_eq!(rows[0].model, multi.model);
        assert_eq!(
            (rows[1].url.as_str(), rows[1].status, rows[1].model.as_ref()),
            ("s3://b/b", ResultStatus::Error, None)
        );
        assert!(rows.iter().all(|r| r.job_id == "j" && r.attempts == 2 && r.images.is_empty()));
    }

    fn with_label(label: String) -> Scored {
        Scored { top_k: vec![Prediction { label, score: 1.0 }], ..Scored::default() }
    }

    fn multi_of(images: Vec<ImageResult>) -> ResultMessage {
        ResultMessage {
            v: RESULT_VERSION_MULTI,
            job_id: "j".into(),
            run_id: "r".into(),
            url: String::new(),
            status: ResultStatus::Ok,
            model: Some(ModelRef { name: "m".into(), version: "sha256:ab".into() }),
            top_k: vec![],
            embedding: None,
            dims: None,
            outputs: Vec::new(),
            error: None,
            attempts: 1,
            worker: "w".into(),
            completed_at: "2026-12-01T00:00:00Z".into(),
            latency_ms: None,
            attrs: None,
            images,
        }
    }

    #[test]
    fn a_result_over_the_limit_drops_the_largest_images_first_until_it_fits() {
        let image =
            |k: &str, label_bytes: usize| ImageResult::scored(k.into(), None, with_label("x".repeat(label_bytes)));
        let mut r = multi_of(vec![
            image("s3://b/small", 10),
            image("s3://b/big", 5_000),
            image("s3://b/mid", 2_000),
            ImageResult::failed("s3://b/bad".into(), None, &JobError::new(ErrorKind::Decode, "not a png")),
        ]);
        let untouched = r.clone();
        let body = r.to_json();
        assert_eq!(r.fit(body.clone(), body.len()), body, "a result that fits is left as it is");
        assert_eq!(r, untouched);

        // Dropping `big` alone brings it under 4 000 bytes.
        let body = r.fit(body, 4_000);
        assert!(body.len() <= 4_000, "{}", body.len());
        assert_eq!(ResultMessage::parse(&body).expect("parse"), r, "the body is the mended result");
        let kinds: Vec<_> = r.images.iter().map(|i| (i.url.as_str(), i.error.as_ref().map(|e| e.kind))).collect();
        assert_eq!(
            kinds,
            vec![
                ("s3://b/small", None),
                ("s3://b/big", Some(ErrorKind::TooLarge)),
                ("s3://b/mid", None),
                ("s3://b/bad", Some(ErrorKind::Decode)),
            ]
        );
        assert!(r.images[1].top_k.is_empty() && r.images[1].error.as_ref().is_some_and(|e| e.message.contains("4000")));
        assert_eq!((r.status, r.error.as_ref()), (ResultStatus::Ok, None));

        // When no scored image fits, every image goes and the job fails as a
        // whole.
        let mut r = multi_of(vec![image("s3://b/1", 3_000), image("s3://b/2", 2_100), image("s3://b/3", 2_500)]);
        let body = r.fit(r.to_json(), 2_000);
        assert!(body.len() <= 2_000, "{}", body.len());
        assert_eq!(r.status, ResultStatus::Error);
        assert_eq!((r.error.as_ref().map(|e| e.kind), r.model.as_ref()), (Some(ErrorKind::TooLarge), None));
        assert!(r.images.iter().all(|i| i.status == ResultStatus::Error && i.top_k.is_empty()));
    }

    #[test]
    fn a_one_image_result_over_the_limit_fails_with_too_large() {
        let mut r = multi_of(Vec::new());
        r.v = RESULT_VERSION;
        r.url = "s3://b/k".into();
        r.embedding = Some(vec![0.123_456_79; 1_000]);
        r.dims = Some(1_000);
        let body = r.to_json();
        let fitted = r.fit(body.clone(), 2_000);
        assert!(fitted.len() <= 2_000 && fitted.len() < body.len());
        let error = r.error.as_ref().expect("error");
        assert_eq!((r.status, error.kind), (ResultStatus::Error, ErrorKind::TooLarge));
        assert!(error.message.contains(&body.len().to_string()), "names the size: {}", error.message);
        assert_eq!((r.embedding.as_ref(), r.dims, r.model.as_ref()), (None, None, None));
        assert_eq!((r.url.as_str(), r.job_id.as_str()), ("s3://b/k", "j"));
    }
}
