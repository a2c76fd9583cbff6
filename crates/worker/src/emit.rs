//! Emit: results in batches of 10, then deletes of the input messages in
//! batches of 10, in that order, and only for messages whose result went out
//! (a message is deleted only once its outcome is durable and its result
//! sent). Receipt handles are de-duplicated per delete batch, and each job's
//! newest handle is used.

use crate::ctx::Ctx;
use crate::flow::drive;
use crate::job::Emit;
use crate::metrics::Stage;
use crate::settings::Settings;
use scorefleet_aws::retry;
use scorefleet_core::batch::Policy;
use scorefleet_core::traits::{JobQueue, MessageSink, ServiceError, now_ms};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How the emitter groups its work: the SQS batch limit of 10, and how long
/// the first item waits for company before what there is goes out. Results
/// carry no lease bound here: their jobs are recorded already.
const EMIT: Policy = Policy { max_items: 10, max_wait_ms: 25, lease_margin_ms: 0 };

/// Collects finished jobs into groups of 10 and flushes each group.
pub(crate) async fn run<Q: JobQueue, S: MessageSink>(
    ctx: Arc<Ctx>,
    queue: Arc<Q>,
    sink: Arc<S>,
    rx: mpsc::Receiver<Emit>,
) {
    let (ctx, queue, sink) = (&*ctx, &*queue, &*sink);
    drive(
        EMIT,
        &ctx.stop,
        rx,
        |_| 1,
        |_| u64::MAX,
        |items| async move {
            flush(ctx, queue, sink, items).await;
            true
        },
    )
    .await;
}

/// Sends up to 10 results, then deletes the messages whose result went out.
async fn flush<Q: JobQueue, S: MessageSink>(ctx: &Ctx, queue: &Q, sink: &S, items: Vec<Emit>) {
    // Each result keyed by its job id: a FIFO output queue delivers one
    // copy per job however often it is sent within five minutes (a re-send
    // after a crash between send and delete included).
    let (keys, bodies): (Vec<String>, Vec<String>) = items
        .iter()
        .map(|e| match e {
            Emit::Finished { job_id, body, .. } | Emit::Resend { job_id, body, .. } => (job_id.clone(), body.clone()),
        })
        .unzip();
    let mut sent = vec![false; items.len()];
    match retrying(&ctx.settings, || sink.send_keyed(&keys, &bodies)).await {
        Ok(failed) => {
            sent = vec![true; items.len()];
            for f in failed {
                tracing::warn!(code = %f.code, "result refused by the output queue; message left for redelivery");
                if let Some(s) = sent.get_mut(f.index) {
                    *s = false;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "sending results failed; messages left for redelivery"),
    }
    let mut handles: Vec<String> = Vec::with_capacity(items.len());
    for (item, ok) in items.into_iter().zip(&sent) {
        let handle = match item {
            Emit::Finished { held, receipt, received_ms, .. } => {
                // The registry holds the newest handle (a redelivery while in
                // flight replaces it); an older one may no longer delete.
                let newest = held.settle().map(|j| j.receipt);
                if *ok {
                    let since_receive = Duration::from_millis(now_ms().saturating_sub(received_ms));
                    ctx.metrics.observe(Stage::EndToEnd, since_receive);
                }
                newest.unwrap_or(receipt)
            }
            Emit::Resend { receipt, .. } => receipt,
        };
        if *ok {
            ctx.metrics.results_sent.fetch_add(1, Ordering::Relaxed);
            // One entry per handle: the same delivery twice in one batch is
            // refused by SQS (BatchEntryIdsNotDistinct) and fails the others.
            if !handles.contains(&handle) {
                handles.push(handle);
            }
        }
    }
    if handles.is_empty() {
        return;
    }
    // A delete that does not happen costs a duplicate result later (the
    // message comes back and is answered from the table), so transient
    // failures are retried as long as the receipt handles are surely valid.
    match retrying(&ctx.settings, || queue.delete(&handles)).await {
        Ok(failed) => {
            for f in &failed {
                tracing::warn!(code = %f.code, "delete refused; the message will come back and be answered from the table");
            }
            ctx.metrics.deleted.fetch_add((handles.len() - failed.len()) as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(error = %e, "delete failed; the messages will come back and be answered from the table")
        }
    }
}

/// Runs `call` until it succeeds, fails for good, or a transient failure is
/// no longer worth another try: always for the first `retries` attempts, then
/// for as long as half the lease has not passed since the first one. A
/// network cut of a few seconds is outlasted, while the messages' visibility
/// (kept for the lease) still holds, and no flush waits longer than that.
async fn retrying<T, Fut>(settings: &Settings, call: impl FnMut() -> Fut) -> Result<T, ServiceError>
where
    Fut: Future<Output = Result<T, ServiceError>>,
{
    let started = Instant::now();
    let (retries, bound) = (settings.retries, settings.lease / 2);
    retry(settings.backoff, |e: &ServiceError, n| e.is_transient() && (n < retries || started.elapsed() < bound), call)
        .await
}
