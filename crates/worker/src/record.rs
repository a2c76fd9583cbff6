//! Record: the fenced finish (COMPLETED/FAILED with the result body). A
//! refused finish means the lease was lost: another worker owns the job and
//! our result is dropped, never sent, never deleted.
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
use scorefleet_core::lease::LeaseError;
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
    let Outcome { job, result, terminal } = o;
    if !job.held.is_ours() {
        // The keeper saw the lease lost: abandoned, never finished here.
        tracing::debug!(job_id = %job.job_id, "lease lost before recording; outcome dropped");
        job.held.settle();
        return None;
    }
    if let Some(e) = result.error.as_ref().filter(|e| e.kind.retry() == Retry::Retryable) {
        tracing::warn!(job_id = %job.job_id, kind = %e.kind, message = %e.message, "retryable failure; message left for redelivery");
        ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
        let delay = ctx.settings.backoff.delay(job.attempts);
        job.hand_back(&*claims.queue, &*claims.store, delay).await;
        return None;
    }
    let body = result.to_json();
    let started = Instant::now();
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
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, error = %e, "could not record the outcome; message left for redelivery");
            ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
            job.held.settle();
            return None;
        }
    }
    ctx.metrics.observe(Stage::Record, started.elapsed());
    match &result.error {
        None => ctx.metrics.succeeded.fetch_add(1, Ordering::Relaxed),
        Some(e) => {
            ctx.metrics.failed(e.kind);
            0
        }
    };
    Some(Emit::Finished {
        held: job.held,
        job_id: job.job_id.to_string(),
        receipt: job.receipt,
        body,
        received_ms: job.received_ms,
    })
}
