//! The work items that travel between the stages, and the result skeletons
//! built from them. Every stage imports these; this module imports no stage.

use crate::lease::Held;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::job::{JobId, JobMessage};
use scorefleet_core::lease::Fence;
use scorefleet_core::result::{ErrorInfo, ImageResult, ModelRef, ResultMessage, ResultStatus, Scored};
use scorefleet_core::traits::{Chw, JobQueue, OutcomeStore, Received, now_ms};
use std::time::{Duration, Instant};

/// One receive's messages and when they arrived.
pub(crate) struct Delivery {
    /// Epoch ms at which the receive answered: the start of the messages'
    /// visibility timeout, as near as the worker can tell.
    pub(crate) at_ms: u64,
    /// What it answered.
    pub(crate) msgs: Vec<Received>,
}

/// A claimed job travelling through the stages.
#[derive(Debug)]
pub(crate) struct Job {
    /// Its entry in the in-flight registry and its count in the gauge,
    /// released on every path that ends the job (see [`Held`]).
    pub(crate) held: Held,
    pub(crate) job_id: JobId,
    pub(crate) run_id: String,
    /// The URL as enqueued, echoed in a one-image job's result (empty for a
    /// job of several images, whose images carry their own).
    pub(crate) url: String,
    pub(crate) attrs: Option<serde_json::Map<String, serde_json::Value>>,
    /// A job of several images (`v: 2`), answered with one entry per image.
    pub(crate) multi: bool,
    /// `None` for a broken body that still named a job id (it is answered
    /// with `invalid_message` and never fetched).
    pub(crate) parsed: Option<JobMessage>,
    /// The handle of the delivery that started the job; the registry may hold
    /// a newer one (redelivery while in flight), which wins at delete time.
    pub(crate) receipt: String,
    pub(crate) fence: Fence,
    /// ApproximateReceiveCount, reported as `attempts`.
    pub(crate) attempts: u32,
    /// Epoch ms of the receive that delivered the message: where the
    /// results' `latency_ms` and the end-to-end metric start.
    pub(crate) received_ms: u64,
    /// Lease end when claimed; the batcher never holds the job past it.
    pub(crate) lease_until_ms: u64,
}

impl Job {
    /// The result skeleton for this job; the caller fills in `top_k` or
    /// `error`.
    pub(crate) fn result(&self, worker_id: &str, status: ResultStatus) -> ResultMessage {
        use scorefleet_core::result::{RESULT_VERSION, RESULT_VERSION_MULTI};
        ResultMessage {
            v: if self.multi { RESULT_VERSION_MULTI } else { RESULT_VERSION },
            job_id: self.job_id.to_string(),
            run_id: self.run_id.clone(),
            url: self.url.clone(),
            status,
            model: None,
            top_k: Vec::new(),
            embedding: None,
            dims: None,
            outputs: Vec::new(),
            error: None,
            attempts: self.attempts,
            worker: worker_id.to_owned(),
            completed_at: rfc3339_now(),
            latency_ms: Some(now_ms().saturating_sub(self.received_ms)),
            attrs: self.attrs.clone(),
            images: Vec::new(),
        }
    }

    /// Hands the job back: its claim released, its message visible after
    /// `delay`. Nothing to do when it is no longer ours (lost meanwhile).
    pub(crate) async fn hand_back<Q: JobQueue, O: OutcomeStore>(self, queue: &Q, store: &O, delay: Duration) {
        let Some(inflight) = self.held.settle() else { return };
        crate::lease::release_claim(store, &self.job_id, &self.fence).await;
        crate::lease::return_messages(queue, &[(inflight.receipt, delay)]).await;
    }

    /// This job's final failure, ready to record.
    pub(crate) fn failed(self, worker_id: &str, e: JobError) -> Outcome {
        let mut result = self.result(worker_id, ResultStatus::Error);
        result.error = Some(ErrorInfo::from(&e));
        Outcome { job: self, result }
    }

    /// This job's outcome from what became of each of its images, in order.
    ///
    /// A one-image job is scored or failed by its image. A job of several
    /// images carries one entry per image and is `ok` (and completed) when at
    /// least one image was scored; when none was, it fails with the first
    /// image's error kind.
    pub(crate) fn finish(self, worker_id: &str, model: &ModelRef, images: Vec<Result<Scored, JobError>>) -> Outcome {
        if !self.multi {
            return match images.into_iter().next() {
                Some(Ok(scored)) => {
                    let mut result = self.result(worker_id, ResultStatus::Ok);
                    result.model = Some(model.clone());
                    result.top_k = scored.top_k;
                    result.dims = scored.embedding.as_ref().map(Vec::len);
                    result.embedding = scored.embedding;
                    result.outputs = scored.outputs;
                    Outcome { job: self, result }
                }
                Some(Err(e)) => self.failed(worker_id, e),
                None => self.failed(
                    worker_id,
                    JobError::new(ErrorKind::Internal, "a job reached its outcome without its image"),
                ),
            };
        }
        let meta = self.parsed.as_ref().map(|p| p.images.as_slice()).unwrap_or_default();
        if meta.len() != images.len() {
            let e = format!("{} outcomes for {} images", images.len(), meta.len());
            return self.failed(worker_id, JobError::new(ErrorKind::Internal, e));
        }
        let scored = images.iter().filter(|i| i.is_ok()).count();
        let first_error = images.iter().find_map(|i| i.as_ref().err()).cloned();
        let entries: Vec<ImageResult> = meta
            .iter()
            .zip(images)
            .map(|(m, r)| match r {
                Ok(s) => ImageResult::scored(m.url_raw.clone(), m.attrs.clone(), s),
                Err(e) => ImageResult::failed(m.url_raw.clone(), m.attrs.clone(), &e),
            })
            .collect();
        let mut result = self.result(worker_id, if scored > 0 { ResultStatus::Ok } else { ResultStatus::Error });
        if scored > 0 {
            result.model = Some(model.clone());
        } else if let Some(e) = first_error {
            let n = entries.len();
            result.error =
                Some(ErrorInfo { kind: e.kind, message: format!("all {n} images failed; the first: {}", e.message) });
        }
        result.images = entries;
        Outcome { job: self, result }
    }
}

/// A fetched and decoded job, waiting for its model batch.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) job: Job,
    /// Each image's model input ([channels, height, width]), or why it has
    /// none; at least one is a model input.
    pub(crate) images: Vec<Result<Chw, JobError>>,
    /// When it was ready: the batch-wait metric starts here.
    pub(crate) ready: Instant,
}

impl Decoded {
    /// The model inputs it brings to a batch.
    pub(crate) fn inputs(&self) -> usize {
        self.images.iter().filter(|i| i.is_ok()).count()
    }
}

/// Work for the record stage: its stored status follows the result's
/// (`ok` → COMPLETED, `error` → FAILED).
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) job: Job,
    pub(crate) result: ResultMessage,
}

/// Work for the emit stage.
#[derive(Debug)]
pub(crate) enum Emit {
    /// A finished job: send its result, then delete its message.
    Finished { held: Held, job_id: String, receipt: String, body: String, received_ms: u64 },
    /// A duplicate of a finished job: re-send the stored result, delete.
    Resend { job_id: String, receipt: String, body: String },
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
