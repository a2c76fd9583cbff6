//! The fetch stage: up to M jobs fetched at once, each image then decoded on
//! the blocking pool ([`crate::decode`]). A permanent failure fails only its
//! image. Transient failures retry with backoff; when the retry budget is
//! spent on any image the claim is released and the message left for
//! redelivery (and, if it keeps failing, the DLQ). After shutdown begins,
//! jobs not yet fetched are not started: their claims are released and their
//! messages returned at once.

use crate::ctx::{Claims, Ctx};
use crate::fetch::Fetcher;
use crate::flow::stream_from;
use crate::job::{Decoded, Job, Outcome};
use crate::metrics::Stage;
use scorefleet_aws::{Backoff, retry};
use scorefleet_core::error::{ErrorKind, JobError, Retry};
use scorefleet_core::job::JobUrl;
use scorefleet_core::result::Scored;
use scorefleet_core::traits::{Chw, JobQueue, OutcomeStore, Preprocessor};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Images of one job fetched at once (its jobs' images are what
/// `--fetchers` bounds, times this).
const IMAGES_AT_ONCE: usize = 4;

/// Fetches and decodes up to `fetchers` jobs at once, handing each on as it
/// completes (completion order, not arrival order).
pub(crate) async fn run<Q, O, F, P>(
    ctx: Arc<Ctx>,
    claims: Claims<Q, O>,
    fetcher: Arc<F>,
    preprocessor: Arc<P>,
    rx: mpsc::Receiver<Job>,
    batch_tx: mpsc::Sender<Decoded>,
    record_tx: mpsc::Sender<Outcome>,
) where
    Q: JobQueue,
    O: OutcomeStore,
    F: Fetcher,
    P: Preprocessor,
{
    use futures::StreamExt;
    let mut work = std::pin::pin!(
        stream_from(rx)
            .map(|job| fetch_one(&ctx, &claims, &*fetcher, &preprocessor, job))
            .buffer_unordered(ctx.settings.fetchers)
    );
    while let Some(done) = work.next().await {
        let ok = match done {
            Fetched::Ready(d) => batch_tx.send(d).await.is_ok(),
            Fetched::Failed(o) => record_tx.send(o).await.is_ok(),
            Fetched::Dropped => true,
        };
        if !ok {
            return;
        }
    }
}

// Moved once per job, never stored in bulk: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Fetched {
    Ready(Decoded),
    Failed(Outcome),
    /// Given back (shutdown, retries spent) or lost: nothing more to do here.
    Dropped,
}

async fn fetch_one<Q, O, F, P>(
    ctx: &Ctx,
    claims: &Claims<Q, O>,
    fetcher: &F,
    preprocessor: &Arc<P>,
    job: Job,
) -> Fetched
where
    Q: JobQueue,
    O: OutcomeStore,
    F: Fetcher,
    P: Preprocessor,
{
    if ctx.stop.is_cancelled() {
        // Not started before shutdown: give it back now rather than hold it
        // through the drain.
        job.hand_back(&*claims.queue, &*claims.store, Duration::ZERO).await;
        return Fetched::Dropped;
    }
    if !job.held.is_ours() {
        // Lease lost while queued: the new owner does the work.
        job.held.settle();
        return Fetched::Dropped;
    }
    let Some(urls) = job.parsed.as_ref().map(|j| j.images.iter().map(|i| i.url.clone()).collect::<Vec<_>>()) else {
        // Dedup sends a job without a parsed URL to record, never here.
        let e = JobError::new(ErrorKind::Internal, "job without a parsed url reached fetch");
        tracing::warn!(job_id = %job.job_id, error = %e, "message left for redelivery");
        ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
        job.hand_back(&*claims.queue, &*claims.store, Duration::ZERO).await;
        return Fetched::Dropped;
    };
    let mut images: Vec<Result<Chw, JobError>> = Vec::with_capacity(urls.len());
    for chunk in urls.chunks(IMAGES_AT_ONCE) {
        let mut fetches = Vec::with_capacity(chunk.len());
        for url in chunk {
            fetches.push(fetch_image(ctx, fetcher, preprocessor, &job, url));
        }
        images.extend(futures::future::join_all(fetches).await);
    }
    if images.iter().any(|i| i.as_ref().is_err_and(|e| e.retry() == Retry::Retryable)) {
        // Retries spent: leave the message (no result, no delete) so the
        // queue's redrive policy moves it to the DLQ if this keeps
        // happening; come back after a backoff, not at once.
        ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
        let b = ctx.settings.backoff;
        let delay = Backoff { base: b.base * 10, ..b }.delay(job.attempts);
        job.hand_back(&*claims.queue, &*claims.store, delay).await;
        return Fetched::Dropped;
    }
    if images.iter().all(Result::is_err) {
        // Nothing to score: the job's outcome is its images' errors.
        let errors = images.into_iter().map(|i| i.map(|_| Scored::default())).collect();
        return Fetched::Failed(job.finish(&ctx.settings.worker_id, &ctx.model, errors));
    }
    Fetched::Ready(Decoded { job, images, ready: Instant::now() })
}

/// One image's bytes, fetched with retries and decoded: its model input, or
/// its error (retryable when the retries were spent on a transient failure).
async fn fetch_image<F: Fetcher, P: Preprocessor>(
    ctx: &Ctx,
    fetcher: &F,
    preprocessor: &Arc<P>,
    job: &Job,
    url: &JobUrl,
) -> Result<Chw, JobError> {
    let started = Instant::now();
    let retries = ctx.settings.retries;
    let fetched = retry(
        ctx.settings.backoff,
        |e: &JobError, n| {
            let again = e.retry() == Retry::Retryable && n < retries;
            if again {
                tracing::debug!(job_id = %job.job_id, %url, error = %e, attempt = n, "fetch failed; retrying");
            }
            again
        },
        || fetcher.fetch(url, ctx.settings.max_bytes),
    )
    .await;
    let bytes = fetched.inspect_err(|e| {
        if e.retry() == Retry::Retryable {
            tracing::warn!(job_id = %job.job_id, %url, error = %e, "transient failure persists; message left for redelivery");
        }
    })?;
    ctx.metrics.observe(Stage::Fetch, started.elapsed());
    crate::decode::decode(preprocessor, &ctx.metrics, bytes).await
}
