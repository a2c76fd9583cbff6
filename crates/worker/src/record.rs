//! Record: the fenced finish (COMPLETED/FAILED with the result body). A
//! refused finish means the lease was lost: another worker owns the job and
//! our result is dropped, never sent, never deleted.
//!
//! In finish-only mode (an unclaimed job, [`scorefleet_core::lease::Fence::unclaimed`]) the finish
//! is the conditional write of [`scorefleet_core::traits::OutcomeStore::finish_unclaimed`]: it stores
//! the outcome only if none is stored (and no live claim holds the job). A
//! worker whose finish finds an outcome stored lost a race with a duplicate
//! in flight: it re-sends the stored result, not its own, and deletes its
//! message; one holding a live claim of another worker is dropped like a
//! lost lease.
//!
//! A result whose body would pass [`MAX_RESULT_BYTES`] is made to fit first
//! ([`scorefleet_core::result::ResultMessage::fit`]): its largest scores are
//! dropped as `too_large` errors, so the outcome can be stored and sent.
//!
//! A failure of a retryable kind (`fetch_failed`, `internal`: see
//! [`scorefleet_core::ErrorKind::retry`]) is never recorded as final: its
//! claim is released and its message left for redelivery, so the queue's
//! redrive policy decides when it is given up on (the DLQ).

use crate::ctx::{Claims, Ctx};
use crate::flow::stream_from;
use crate::job::{Emit, Outcome};
use crate::metrics::Stage;
use scorefleet_aws::retry;
use scorefleet_core::error::Retry;
use scorefleet_core::lease::{LeaseError, Terminal, Unclaimed, UnclaimedFinish};
use scorefleet_core::result::{MAX_RESULT_BYTES, ResultStatus};
use scorefleet_core::traits::{JobQueue, OutcomeStore, ServiceError, now_ms};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// Most finishes in flight at once (they are independent conditional writes).
const CONCURRENT_FINISHES: usize = 32;

/// Records outcomes, concurrently, and passes the recorded ones to emit.
pub(crate) async fn run<Q, O>(
    ctx: Arc<Ctx>,
    claims: Claims<Q, O>,
    rx: mpsc::Receiver<Outcome>,
    emit_tx: mpsc::Sender<Emit>,
) where
    Q: JobQueue,
    O: OutcomeStore,
{
    use futures::StreamExt;
    let mut work =
        std::pin::pin!(stream_from(rx).map(|o| record_one(&ctx, &claims, o)).buffer_unordered(CONCURRENT_FINISHES));
    while let Some(done) = work.next().await {
        if let Some(e) = done
            && emit_tx.send(e).await.is_err()
        {
            return;
        }
    }
}

async fn record_one<Q: JobQueue, O: OutcomeStore>(ctx: &Ctx, claims: &Claims<Q, O>, o: Outcome) -> Option<Emit> {
    let Outcome { job, mut result } = o;
    if !job.held.is_ours() {
        // The keeper saw the lease lost: abandoned, never finished here.
        tracing::debug!(job_id = %job.job_id, "lease lost before recording; outcome dropped");
        job.held.settle();
        return None;
    }
    let retryable = |e: &&scorefleet_core::result::ErrorInfo| e.kind.retry() == Retry::Retryable;
    let job_error = result.error.as_ref().filter(retryable);
    if let Some(e) = job_error.or_else(|| result.images.iter().filter_map(|i| i.error.as_ref()).find(retryable)) {
        tracing::warn!(job_id = %job.job_id, kind = %e.kind, message = %e.message, "retryable failure; message left for redelivery");
        ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
        let delay = ctx.settings.backoff.delay(job.attempts);
        job.hand_back(&*claims.queue, &*claims.store, delay).await;
        return None;
    }
    let json = result.to_json();
    let bytes = json.len();
    let body = result.fit(json, MAX_RESULT_BYTES);
    if body.len() != bytes {
        tracing::warn!(job_id = %job.job_id, bytes, "result over the limit of a result message; scores dropped as too_large");
    }
    let terminal = if result.status == ResultStatus::Ok { Terminal::Completed } else { Terminal::Failed };
    let started = Instant::now();
    if !job.fence.is_claim() {
        return record_unclaimed(ctx, &*claims.store, job, &result, terminal, body, started).await;
    }
    let retries = ctx.settings.retries;
    let finish = || claims.store.finish(&job.job_id, &job.fence, terminal, &body, now_ms());
    match retry(ctx.settings.backoff, |e: &ServiceError, n| e.is_transient() && n < retries, finish).await {
        Ok(Ok(())) => {}
        // Only our own fence can have finished the record: our earlier
        // try went through and its answer was lost (a dropped connection;
        // the SDK's retry then met the finished record). The outcome
        // stored is this one: send it, delete the message.
        Ok(Err(LeaseError::AlreadyFinished)) => {}
        Ok(Err(lost)) => {
            // Someone took the job over: their outcome stands, ours is dropped.
            tracing::warn!(job_id = %job.job_id, reason = %lost, "finish refused: lease lost");
            ctx.metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
            job.held.settle();
            return None;
        }
        Err(e) => return unrecorded(ctx, job, &e),
    }
    Some(recorded(ctx, job, &result, body, started))
}

/// Finish-only mode: the conditional finish of a job nobody claimed. Lost to
/// a stored outcome, the stored result is what is sent.
async fn record_unclaimed<O: OutcomeStore>(
    ctx: &Ctx,
    store: &O,
    job: crate::job::Job,
    result: &scorefleet_core::result::ResultMessage,
    terminal: scorefleet_core::lease::Terminal,
    body: String,
    started: Instant,
) -> Option<Emit> {
    let retries = ctx.settings.retries;
    let run_id = if job.run_id.is_empty() { crate::dedup::UNPARSABLE_RUN } else { job.run_id.as_str() };
    let job_id = &job.job_id;
    let finish = || {
        let req =
            UnclaimedFinish { owner: &ctx.settings.worker_id, run_id, terminal, result_json: &body, now_ms: now_ms() };
        async move { store.finish_unclaimed(job_id, &req).await }
    };
    let stored = match retry(ctx.settings.backoff, |e: &ServiceError, n| e.is_transient() && n < retries, finish).await
    {
        Ok(Ok(())) => return Some(recorded(ctx, job, result, body, started)),
        // Stored already: by a duplicate in flight (or by our own earlier
        // try whose answer was lost). The stored outcome is the one: re-send
        // it, delete the message.
        Ok(Err(Unclaimed::Done(stored))) => stored,
        Ok(Err(Unclaimed::Busy { owner, .. })) => {
            tracing::warn!(job_id = %job.job_id, %owner, "finish refused: a live claim holds the job");
            ctx.metrics.busy.fetch_add(1, Ordering::Relaxed);
            job.held.settle();
            return None;
        }
        Err(e) => return unrecorded(ctx, job, &e),
    };
    ctx.metrics.finishes_lost.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
    let Some(stored_body) = stored.result else {
        job.held.settle();
        return None;
    };
    tracing::debug!(job_id = %job.job_id, "finish found an outcome stored; re-sending it");
    Some(Emit::Finished {
        held: job.held,
        job_id: job.job_id.to_string(),
        receipt: job.receipt,
        body: stored_body,
        received_ms: job.received_ms,
    })
}

/// The outcome could not be stored: the message is left for redelivery.
fn unrecorded(ctx: &Ctx, job: crate::job::Job, e: &ServiceError) -> Option<Emit> {
    tracing::warn!(job_id = %job.job_id, error = %e, "could not record the outcome; message left for redelivery");
    ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
    job.held.settle();
    None
}

/// Counts a recorded outcome and hands it to emit.
fn recorded(
    ctx: &Ctx,
    job: crate::job::Job,
    result: &scorefleet_core::result::ResultMessage,
    body: String,
    started: Instant,
) -> Emit {
    ctx.metrics.observe(Stage::Record, started.elapsed());
    match &result.error {
        None => ctx.metrics.succeeded.fetch_add(1, Ordering::Relaxed),
        Some(e) => {
            ctx.metrics.failed(e.kind);
            0
        }
    };
    if result.images.is_empty() {
        ctx.metrics.image(result.error.is_none());
    }
    for image in &result.images {
        ctx.metrics.image(image.error.is_none());
    }
    Emit::Finished {
        held: job.held,
        job_id: job.job_id.to_string(),
        receipt: job.receipt,
        body,
        received_ms: job.received_ms,
    }
}
