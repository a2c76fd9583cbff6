//! The worker pipeline: stages joined by bounded channels.
//!
//! ```text
//! receivers (N long polls) → intake (parse, claim) → fetch+decode (M at once)
//!   → batcher (core policy) → inference thread → record (fenced finish)
//!   → emit (results ×10, then deletes ×10)
//! ```
//!
//! Every channel is bounded, so a slow stage stops the receivers and memory is
//! set by configuration, not by queue depth. A message is deleted only after
//! its outcome is stored and its result sent. Shutdown: the receivers stop,
//! messages received but not yet claimed go back to the queue at once, the
//! rest drains through; whatever is still claimed when the drain limit passes
//! is released and made visible again.

use crate::fetch::Fetcher;
use crate::lease::Registry;
use crate::metrics::SharedMetrics;
use scorefleet_core::error::JobError;
use scorefleet_core::job::{JobId, JobMessage};
use scorefleet_core::lease::{Fence, Terminal};
use scorefleet_core::result::{ErrorInfo, ModelRef, ResultMessage, ResultStatus};
use scorefleet_core::traits::{Chw, JobQueue, MessageSink, OutcomeStore, Predictor, Preprocessor};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This worker's name: the lease owner and the `worker` of results.
    pub worker_id: String,
    /// Concurrent long polls.
    pub receivers: usize,
    /// Long-poll wait.
    pub wait: Duration,
    /// Concurrent fetches (and decodes).
    pub fetchers: usize,
    /// Largest model batch.
    pub max_batch: usize,
    /// Most claimed jobs held at once (received, not yet deleted): receiving
    /// pauses at this many. 0: four model batches (at least 40).
    pub max_in_flight: usize,
    /// Threads of the inference pool (0: one per core).
    pub infer_threads: usize,
    /// Longest wait for a batch to fill.
    pub max_wait: Duration,
    /// Lease length: the DynamoDB lease and the SQS visibility it keeps.
    pub lease: Duration,
    /// Labels per result.
    pub top_k: usize,
    /// Largest object fetched.
    pub max_bytes: u64,
    /// In-process retries of a retryable failure before leaving the message to
    /// the queue's redrive policy.
    pub retries: u32,
    /// Base delay of the exponential backoff (with jitter).
    pub backoff: Duration,
    /// How long shutdown waits for in-flight work.
    pub drain_timeout: Duration,
}

/// The pipeline's collaborators.
#[derive(Debug)]
pub struct Ports<Q, S, O, F, P> {
    /// Input queue.
    pub queue: Arc<Q>,
    /// Output queue.
    pub sink: Arc<S>,
    /// Dedup table.
    pub store: Arc<O>,
    /// Image fetcher.
    pub fetcher: Arc<F>,
    /// Decoder (shared by the blocking pool).
    pub preprocessor: Arc<P>,
}

/// What shutdown found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Whether everything in flight finished within the drain limit.
    pub drained: bool,
    /// Claims released and messages returned after the limit.
    pub released: usize,
}

/// A claimed job travelling through the stages.
#[derive(Debug)]
pub(crate) struct Job {
    /// Its key in the in-flight [`Registry`].
    pub(crate) key: u64,
    pub(crate) job_id: JobId,
    pub(crate) run_id: String,
    /// The URL as enqueued, echoed in the result.
    pub(crate) url: String,
    pub(crate) attrs: Option<serde_json::Map<String, serde_json::Value>>,
    /// `None` for a broken body that still named a job id (it is answered
    /// with `invalid_message` and never fetched).
    pub(crate) parsed: Option<JobMessage>,
    /// The handle of the delivery that started the job; the registry may hold
    /// a newer one (redelivery while in flight), which wins at delete time.
    pub(crate) receipt: String,
    pub(crate) fence: Fence,
    /// ApproximateReceiveCount, reported as `attempts`.
    pub(crate) attempts: u32,
    pub(crate) received: Instant,
    /// Lease end when claimed; the batcher never holds the job past it.
    pub(crate) lease_until_ms: u64,
}

/// Work for the record stage.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) job: Job,
    pub(crate) result: ResultMessage,
    pub(crate) terminal: Terminal,
}

/// Work for the emit stage.
#[derive(Debug)]
pub(crate) enum Emit {
    /// A finished job: send its result, then delete its message.
    Finished { key: u64, job_id: String, receipt: String, body: String, received: Instant },
    /// A duplicate of a finished job: re-send the stored result, delete.
    Resend { job_id: String, receipt: String, body: String },
}

/// Shared state of one pipeline run.
pub(crate) struct Ctx<Q, S, O, F, P> {
    pub(crate) ports: Ports<Q, S, O, F, P>,
    pub(crate) settings: Settings,
    pub(crate) model: ModelRef,
    pub(crate) metrics: SharedMetrics,
    pub(crate) registry: Arc<Registry>,
    /// Messages received and not yet through their claim: with the registry,
    /// what the in-flight limit counts.
    pub(crate) unclaimed: std::sync::atomic::AtomicUsize,
    pub(crate) stop: CancellationToken,
}

/// Runs the pipeline until `stop` is cancelled and the drain finishes.
///
/// Channel depths are fixed by configuration (a few batches' worth), never by
/// queue depth, so a slow stage stops the receivers instead of growing memory.
pub async fn run<Q, S, O, F, P, M>(
    ports: Ports<Q, S, O, F, P>,
    predictor: M,
    settings: Settings,
    metrics: SharedMetrics,
    registry: Arc<Registry>,
    stop: CancellationToken,
) -> DrainReport
where
    Q: JobQueue,
    S: MessageSink,
    O: OutcomeStore,
    F: Fetcher,
    P: Preprocessor,
    M: Predictor,
{
    let model = predictor.model().clone();
    let ctx = Arc::new(Ctx {
        ports,
        settings: settings.clone(),
        model,
        metrics,
        registry,
        unclaimed: std::sync::atomic::AtomicUsize::new(0),
        stop: stop.clone(),
    });
    let depth = settings.max_batch.max(10) * 2;
    let (recv_tx, recv_rx) = mpsc::channel::<crate::receive::Delivery>(settings.receivers.max(1));
    let (fetch_tx, fetch_rx) = mpsc::channel::<Job>(depth);
    let (batch_tx, batch_rx) = mpsc::channel::<(Job, Chw)>(depth);
    let (infer_tx, infer_rx) = mpsc::channel::<Vec<(Job, Chw)>>(2);
    let (record_tx, record_rx) = mpsc::channel::<Outcome>(depth);
    let (emit_tx, emit_rx) = mpsc::channel::<Emit>(depth);

    // Every stage ends when its input channel closes, so cancelling the
    // receivers drains the whole chain in order; the tracker waits for that.
    // Handles too, so that stages still running at the drain limit can be
    // aborted before their claims are released (no late finish or delete).
    let tracker = TaskTracker::new();
    let mut handles = Vec::new();
    let mut spawn = |fut| handles.push(tokio::spawn(tracker.track_future(fut)));
    for _ in 0..settings.receivers.max(1) {
        spawn(Box::pin(crate::receive::run(ctx.clone(), recv_tx.clone())) as Stage);
    }
    drop(recv_tx);
    spawn(Box::pin(crate::dedup::run(ctx.clone(), recv_rx, fetch_tx, record_tx.clone(), emit_tx.clone())) as Stage);
    spawn(Box::pin(crate::fetch::stage::run(ctx.clone(), fetch_rx, batch_tx, record_tx.clone())) as Stage);
    spawn(Box::pin(crate::batch::run(ctx.clone(), batch_rx, infer_tx)) as Stage);
    let infer_ctx = ctx.clone();
    let inference = crate::infer::spawn(settings.infer_threads, move || {
        crate::infer::run(infer_ctx, predictor, infer_rx, record_tx)
    });
    if let Err(e) = &inference {
        tracing::error!(error = %e, "cannot start the inference thread");
        stop.cancel();
    }
    spawn(Box::pin(crate::record::run(ctx.clone(), record_rx, emit_tx)) as Stage);
    spawn(Box::pin(crate::emit::run(ctx.clone(), emit_rx)) as Stage);
    tracker.close();
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(crate::lease::keep(
        ctx.ports.queue.clone(),
        ctx.ports.store.clone(),
        ctx.registry.clone(),
        ctx.metrics.clone(),
        settings.lease,
        // The keeper outlives `stop`: jobs draining after the signal still
        // need their leases kept until they finish.
        keeper_stop.clone(),
    ));

    stop.cancelled().await;
    tracing::info!(in_flight = ctx.registry.len(), "stopping: no more receives; draining");
    let report = crate::shutdown::drain(&ctx, &tracker, &handles, settings.drain_timeout).await;
    keeper_stop.cancel();
    let _ = keeper.await;
    report
}

/// A stage task, boxed so that all of them fit one spawner.
type Stage = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Exponential backoff with jitter: base × 2^attempt × [0.5, 1.5), capped at 20 s.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(10)).min(Duration::from_secs(20));
    exp.mul_f64(rand::random_range(0.5..1.5))
}

/// The result skeleton for a job; the caller fills in `top_k` or `error`.
pub(crate) fn result_for<Q, S, O, F, P>(ctx: &Ctx<Q, S, O, F, P>, job: &Job, status: ResultStatus) -> ResultMessage {
    ResultMessage {
        v: scorefleet_core::result::RESULT_VERSION,
        job_id: job.job_id.to_string(),
        run_id: job.run_id.clone(),
        url: job.url.clone(),
        status,
        model: None,
        top_k: Vec::new(),
        embedding: None,
        dims: None,
        outputs: Vec::new(),
        error: None,
        attempts: job.attempts,
        worker: ctx.settings.worker_id.clone(),
        completed_at: rfc3339_now(),
        latency_ms: Some(job.received.elapsed().as_millis() as u64),
        attrs: job.attrs.clone(),
    }
}

/// A job's final failure, ready to record.
pub(crate) fn failure<Q, S, O, F, P>(ctx: &Ctx<Q, S, O, F, P>, job: Job, e: JobError) -> Outcome {
    let mut result = result_for(ctx, &job, ResultStatus::Error);
    result.error = Some(ErrorInfo::from(&e));
    Outcome { job, result, terminal: Terminal::Failed }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A receiver as a stream, without the tokio-stream crate.
pub(crate) fn stream_from<T>(rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
