//! The fetch stage: up to M jobs fetched at once, each then decoded on the
//! blocking pool ([`crate::decode`]). Transient failures retry with backoff;
//! when the retry budget is spent the claim is released and the message left
//! for redelivery (and, if it keeps failing, the DLQ). After shutdown begins,
//! jobs not yet fetched are not started: their claims are released and their
//! messages returned at once.

use crate::fetch::Fetcher;
use crate::metrics::Stage;
use crate::pipeline::{Ctx, Job, Outcome, backoff, failure, stream_from};
use scorefleet_core::error::{ErrorKind, JobError, Retry};
use scorefleet_core::traits::{Chw, JobQueue, OutcomeStore, Preprocessor};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Fetches and decodes up to `fetchers` jobs at once, in arrival order of
/// completion.
pub(crate) async fn run<Q, S, O, F, P>(
    ctx: Arc<Ctx<Q, S, O, F, P>>,
    rx: mpsc::Receiver<Job>,
    batch_tx: mpsc::Sender<(Job, Chw)>,
    record_tx: mpsc::Sender<Outcome>,
) where
    Q: JobQueue,
    O: OutcomeStore,
    F: Fetcher,
    P: Preprocessor,
{
    use futures::StreamExt;
    let mut work = std::pin::pin!(
        stream_from(rx).map(|job| fetch_one(ctx.clone(), job)).buffer_unordered(ctx.settings.fetchers.max(1))
    );
    while let Some(done) = work.next().await {
        let ok = match done {
            Fetched::Ready(job, chw) => batch_tx.send((job, chw)).await.is_ok(),
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
    Ready(Job, Chw),
    Failed(Outcome),
    /// Given back (shutdown, retries spent) or lost: nothing more to do here.
    Dropped,
}

async fn fetch_one<Q, S, O, F, P>(ctx: Arc<Ctx<Q, S, O, F, P>>, job: Job) -> Fetched
where
    Q: JobQueue,
    O: OutcomeStore,
    F: Fetcher,
    P: Preprocessor,
{
    if ctx.stop.is_cancelled() {
        // Not started before shutdown: give it back now rather than hold it
        // through the drain.
        give_back(&ctx, job, Duration::ZERO).await;
        return Fetched::Dropped;
    }
    if !ctx.registry.contains(job.key) {
        // Lease lost while queued: the new owner does the work.
        return Fetched::Dropped;
    }
    let Some(url) = job.parsed.as_ref().map(|j| j.url.clone()) else {
        let e = JobError::new(ErrorKind::Internal, "job without a parsed url reached fetch");
        return Fetched::Failed(failure(&ctx, job, e));
    };
    let started = Instant::now();
    let mut attempt = 0;
    let bytes = loop {
        match ctx.ports.fetcher.fetch(&url, ctx.settings.max_bytes).await {
            Ok(b) => break b,
            Err(e) if e.retry() == Retry::Retryable && attempt < ctx.settings.retries => {
                tracing::debug!(job_id = %job.job_id, error = %e, attempt, "fetch failed; retrying");
                tokio::time::sleep(backoff(ctx.settings.backoff, attempt)).await;
                attempt += 1;
            }
            Err(e) if e.retry() == Retry::Retryable => {
                // Retries spent: leave the message (no result, no delete) so
                // the queue's redrive policy moves it to the DLQ if this keeps
                // happening; come back after a backoff, not at once.
                tracing::warn!(job_id = %job.job_id, error = %e, "transient failure persists; message left for redelivery");
                ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
                let delay = backoff(ctx.settings.backoff * 10, job.attempts);
                give_back(&ctx, job, delay).await;
                return Fetched::Dropped;
            }
            Err(e) => return Fetched::Failed(failure(&ctx, job, e)),
        }
    };
    ctx.metrics.observe(Stage::Fetch, started.elapsed());
    match crate::decode::decode(&ctx, bytes).await {
        Ok(chw) => Fetched::Ready(job, chw),
        Err(e) => Fetched::Failed(failure(&ctx, job, e)),
    }
}

/// Releases the claim and makes the message visible after `delay`.
async fn give_back<Q: JobQueue, S, O: OutcomeStore, F, P>(ctx: &Ctx<Q, S, O, F, P>, job: Job, delay: Duration) {
    let receipt = match ctx.registry.remove(job.key) {
        Some(inflight) => {
            ctx.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            inflight.receipt
        }
        // Lost meanwhile: not ours to give back.
        None => return,
    };
    crate::shutdown::release_claim(ctx, &job.job_id, &job.fence).await;
    crate::shutdown::give_back(ctx, &[(receipt, delay)]).await;
}
