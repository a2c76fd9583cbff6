//! Record: the fenced finish (COMPLETED/FAILED with the result body). A
//! refused finish means the lease was lost: another worker owns the job and
//! our result is dropped, never sent, never deleted.

use crate::metrics::Stage;
use crate::pipeline::{Ctx, Emit, Outcome, backoff, stream_from};
use scorefleet_core::lease::LeaseError;
use scorefleet_core::traits::{OutcomeStore, now_ms};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// Most finishes in flight at once (they are independent conditional writes).
const CONCURRENT_FINISHES: usize = 32;

/// Records outcomes, concurrently, and passes the recorded ones to emit.
pub(crate) async fn run<Q, S, O, F, P>(
    ctx: Arc<Ctx<Q, S, O, F, P>>,
    rx: mpsc::Receiver<Outcome>,
    emit_tx: mpsc::Sender<Emit>,
) where
    O: OutcomeStore,
{
    use futures::StreamExt;
    let mut work =
        std::pin::pin!(stream_from(rx).map(|o| record_one(ctx.clone(), o)).buffer_unordered(CONCURRENT_FINISHES));
    while let Some(done) = work.next().await {
        if let Some(e) = done
            && emit_tx.send(e).await.is_err()
        {
            return;
        }
    }
}

async fn record_one<Q, S, O: OutcomeStore, F, P>(ctx: Arc<Ctx<Q, S, O, F, P>>, o: Outcome) -> Option<Emit> {
    if !ctx.registry.contains(o.job.key) {
        // The keeper saw the lease lost: abandoned, never finished here.
        tracing::debug!(job_id = %o.job.job_id, "lease lost before recording; outcome dropped");
        return None;
    }
    let body = o.result.to_json();
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match ctx.ports.store.finish(&o.job.job_id, &o.job.fence, o.terminal, &body, now_ms()).await {
            Ok(Ok(())) => break,
            // Only our own fence can have finished the record: our earlier
            // try went through and its answer was lost (a dropped connection;
            // the SDK's retry then met the finished record). The outcome
            // stored is this one: send it, delete the message.
            Ok(Err(LeaseError::AlreadyFinished)) => break,
            Ok(Err(lost)) => {
                // Someone took the job over: their outcome stands, ours is dropped.
                tracing::warn!(job_id = %o.job.job_id, reason = %lost, "finish refused: lease lost");
                ctx.metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
                if ctx.registry.remove(o.job.key).is_some() {
                    ctx.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                return None;
            }
            Err(e) if e.is_transient() && attempt < ctx.settings.retries => {
                tokio::time::sleep(backoff(ctx.settings.backoff, attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::warn!(job_id = %o.job.job_id, error = %e, "could not record the outcome; message left for redelivery");
                ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
                if ctx.registry.remove(o.job.key).is_some() {
                    ctx.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
                return None;
            }
        }
    }
    ctx.metrics.observe(Stage::Record, started.elapsed());
    match &o.result.error {
        None => ctx.metrics.succeeded.fetch_add(1, Ordering::Relaxed),
        Some(e) => {
            ctx.metrics.failed(e.kind);
            0
        }
    };
    Some(Emit::Finished {
        key: o.job.key,
        job_id: o.job.job_id.to_string(),
        receipt: o.job.receipt,
        body,
        received: o.job.received,
    })
}
