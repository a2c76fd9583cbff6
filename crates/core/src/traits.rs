//! The ports the worker and producer are written against.
//!
//! `scorefleet-aws` implements the queue, sink, outcome-store and image-store
//! traits over SQS, DynamoDB and S3; `scorefleet-model` implements
//! [`Preprocessor`] and [`Predictor`] with burn. Unit tests of pure logic may
//! implement them in memory; integration tests use the real adapters against
//! the emulator.
//!
//! Async methods return `impl Future + Send` so the traits are used through
//! generics (no boxing on the hot path).

use crate::error::JobError;
use crate::job::JobId;
use crate::lease::{ClaimOutcome, Fence, LeaseError, OutcomeRecord, Terminal, Unclaimed, UnclaimedFinish};
use crate::result::{ModelRef, Prediction, Scored};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

/// A failure talking to a backing service (not a failure of a job).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Throttling, 5xx, timeouts, dropped connections: back off and retry.
    #[error("transient service error in {op}: {message}")]
    Transient {
        /// The API operation (`ReceiveMessage`, `PutItem`, …).
        op: &'static str,
        /// What the service or transport said.
        message: String,
    },
    /// Bad configuration, missing resources, access denied: retrying will not
    /// help until a person acts.
    #[error("service error in {op}: {message}")]
    Permanent {
        /// The API operation.
        op: &'static str,
        /// What the service said.
        message: String,
    },
}

impl ServiceError {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ServiceError::Transient { .. })
    }
}

/// A message taken from the input queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// SQS MessageId: stable across redeliveries of the same send.
    pub message_id: String,
    /// The handle of this delivery; a redelivery has a new one.
    pub receipt_handle: String,
    /// The raw body, unparsed (parsing is the worker's, so a bad body becomes
    /// a typed result, not a receive failure).
    pub body: String,
    /// ApproximateReceiveCount: 1 on first delivery.
    pub receive_count: u32,
    /// Sent by the first enqueue of its run, with an id derived from the
    /// run (the producer's new-run mark, [`MessageSink::send_marked`]): on
    /// its first delivery no outcome can be stored for its job unless the
    /// same message was sent twice, so finish-only mode skips the lookup.
    pub new_run: bool,
}

/// One entry of a batch call that the service refused, after the adapter's
/// own retries of the retryable ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// Index of the entry in the slice the caller passed.
    pub index: usize,
    /// The service's error code (`ReceiptHandleIsInvalid`, …).
    pub code: String,
    /// The service's message.
    pub message: String,
}

/// The input side of a queue.
pub trait JobQueue: Send + Sync + 'static {
    /// Long-polls for up to `max` (≤ 10) messages, waiting up to `wait`.
    fn receive(&self, max: usize, wait: Duration) -> impl Future<Output = Result<Vec<Received>, ServiceError>> + Send;

    /// Deletes the given deliveries, in batches of 10 with unique entry ids.
    /// Returns the entries that could not be deleted.
    fn delete(
        &self,
        receipt_handles: &[String],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, ServiceError>> + Send;

    /// Sets each delivery's visibility timeout (0 returns it to the queue at
    /// once). Returns the entries that could not be changed.
    fn change_visibility(
        &self,
        entries: &[(String, Duration)],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, ServiceError>> + Send;
}

/// The output side: where result messages (and the producer's jobs) go.
pub trait MessageSink: Send + Sync + 'static {
    /// Sends bodies in batches of 10, retrying failed entries that are
    /// retryable. Returns the entries that could not be sent.
    fn send(&self, bodies: &[String]) -> impl Future<Output = Result<Vec<EntryFailure>, ServiceError>> + Send;

    /// Like [`send`](Self::send), each body with a deduplication key (its job
    /// id, `keys[i]` for `bodies[i]`). A sink that can deduplicate (an SQS
    /// FIFO queue: five minutes) accepts a repeated key without delivering
    /// the body again; by default the keys are ignored.
    fn send_keyed(
        &self,
        keys: &[String],
        bodies: &[String],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, ServiceError>> + Send {
        let _ = keys;
        self.send(bodies)
    }

    /// Like [`send`](Self::send), the bodies with `new_run[i]` set carrying
    /// the new-run mark that [`Received::new_run`] reads back. A sink that
    /// cannot carry it sends the bodies unmarked (the default): the mark only
    /// spares a read, it decides nothing.
    fn send_marked(
        &self,
        bodies: &[String],
        new_run: &[bool],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, ServiceError>> + Send {
        let _ = new_run;
        self.send(bodies)
    }
}

/// The dedup table: one [`OutcomeRecord`] per job id, changed only by the
/// conditional transitions of [`crate::lease`].
pub trait OutcomeStore: Send + Sync + 'static {
    /// Claims `job` for `owner` until `now_ms + lease_ms`.
    fn claim(
        &self,
        job: &JobId,
        run_id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> impl Future<Output = Result<ClaimOutcome, ServiceError>> + Send;

    /// Extends a held lease to `until_ms`; fenced.
    fn renew(
        &self,
        job: &JobId,
        fence: &Fence,
        until_ms: u64,
    ) -> impl Future<Output = Result<Result<(), LeaseError>, ServiceError>> + Send;

    /// Records the final outcome with its result body; fenced.
    fn finish(
        &self,
        job: &JobId,
        fence: &Fence,
        terminal: Terminal,
        result_json: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<Result<(), LeaseError>, ServiceError>> + Send;

    /// Gives a lease back unfinished (shutdown), so another worker may claim
    /// it at once; fenced.
    fn release(
        &self,
        job: &JobId,
        fence: &Fence,
    ) -> impl Future<Output = Result<Result<(), LeaseError>, ServiceError>> + Send;

    /// Reads the record, if any.
    fn get(&self, job: &JobId) -> impl Future<Output = Result<Option<OutcomeRecord>, ServiceError>> + Send;

    /// Finish-only mode: records the outcome of a job nobody claimed, if no
    /// live outcome and no live lease exist ([`crate::lease::finish_unclaimed`]);
    /// one conditional write. A refusal names what stands.
    fn finish_unclaimed(
        &self,
        job: &JobId,
        req: &UnclaimedFinish<'_>,
    ) -> impl Future<Output = Result<Result<(), Unclaimed>, ServiceError>> + Send;

    /// Finish-only mode's read before computing: the live records of `jobs`
    /// (absent ones left out), as cheaply as the store allows. May be stale
    /// (an eventually consistent read): the finish's condition decides.
    fn lookup(
        &self,
        jobs: &[JobId],
    ) -> impl Future<Output = Result<HashMap<JobId, OutcomeRecord>, ServiceError>> + Send;
}

/// Object storage for images and model weights.
pub trait ObjectStore: Send + Sync + 'static {
    /// Reads a whole object, refusing (with `too_large`) one longer than
    /// `max_bytes` without reading it all. Errors are typed per job:
    /// `fetch_not_found`, `fetch_denied`, `fetch_failed`, `too_large`.
    fn get(&self, bucket: &str, key: &str, max_bytes: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send;
}

/// A preprocessed image: `[channels, height, width]`, row-major `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chw {
    /// `[channels, height, width]`.
    pub shape: [usize; 3],
    /// `channels * height * width` values, normalised for the model.
    pub data: Vec<f32>,
}

/// Turns encoded image bytes into model input. Shared by the blocking decode
/// pool, so `Sync`.
pub trait Preprocessor: Send + Sync + 'static {
    /// Decodes and preprocesses one image. A bad image is a typed error for
    /// that image alone (`decode`, `too_large`).
    fn preprocess(&self, bytes: &[u8]) -> Result<Chw, JobError>;
}

/// Runs the model. Owned by the one inference thread, so `&mut self`.
pub trait Predictor: Send + 'static {
    /// Name and version (sha256 of the weights) of the loaded model.
    fn model(&self) -> &ModelRef;

    /// Scores a batch: `batch[i]` → the `k` best labels of image `i`, best
    /// first. Every item must have the model's input shape.
    fn predict(&mut self, batch: &[Chw], k: usize) -> Result<Vec<Vec<Prediction>>, JobError>;

    /// Scores a batch by the model's task: labels (classify), a vector
    /// (embed) or tensors (raw) per image. The default is [`Predictor::predict`]'s labels.
    fn score(&mut self, batch: &[Chw], k: usize) -> Result<Vec<Scored>, JobError> {
        Ok(self.predict(batch, k)?.into_iter().map(|top_k| Scored { top_k, ..Scored::default() }).collect())
    }
}

/// Wall-clock time in epoch milliseconds: the clock leases, TTLs and the
/// batching policy are written against (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
