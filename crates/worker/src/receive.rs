//! Receive: N concurrent long polls on the input queue (up to 10 messages,
//! up to 20 s each), handed on in whole receive batches. A failing endpoint
//! is retried with exponential backoff and jitter, reset by the next success.

use crate::pipeline::{Ctx, backoff};
use scorefleet_core::traits::{JobQueue, Received, now_ms};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// One receive's messages and when they arrived.
pub(crate) struct Delivery {
    /// Epoch ms at which the receive answered: the start of the messages'
    /// visibility timeout, as near as the worker can tell.
    pub(crate) at_ms: u64,
    /// What it answered.
    pub(crate) msgs: Vec<Received>,
}

/// The most claimed jobs a worker holds before it stops receiving.
pub(crate) fn in_flight_limit(s: &crate::pipeline::Settings) -> usize {
    if s.max_in_flight > 0 { s.max_in_flight } else { (4 * s.max_batch).max(40) }
}

/// One long-poll loop; ends when `stop` is cancelled or the intake is gone.
pub(crate) async fn run<Q: JobQueue, S, O, F, P>(ctx: Arc<Ctx<Q, S, O, F, P>>, tx: mpsc::Sender<Delivery>) {
    let mut failures = 0u32;
    let limit = in_flight_limit(&ctx.settings);
    loop {
        // Hold no more than the limit: every message held past its stage
        // channels' turn is one whose visibility must be extended, and when
        // claims or deletes stall (throttling, a network cut) hundreds of
        // held messages lapsed and came back as duplicate results.
        while ctx.registry.len() + ctx.unclaimed.load(Ordering::Relaxed) >= limit {
            tokio::select! {
                _ = ctx.stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
            }
        }
        let poll = ctx.ports.queue.receive(10, ctx.settings.wait);
        tokio::pin!(poll);
        let got = tokio::select! {
            r = &mut poll => r,
            _ = ctx.stop.cancelled() => {
                // Dropping a long poll mid-flight can lose its answer in
                // transit: those messages would stay invisible for a whole
                // visibility timeout. Let it finish (it answers at once when
                // messages wait, within `wait` otherwise) and hand back
                // whatever it got.
                if let Ok(msgs) = poll.await
                    && !msgs.is_empty()
                {
                    let entries: Vec<(String, std::time::Duration)> =
                        msgs.iter().map(|m| (m.receipt_handle.clone(), std::time::Duration::ZERO)).collect();
                    if let Err(e) = ctx.ports.queue.change_visibility(&entries).await {
                        tracing::warn!(error = %e, "could not return messages received during shutdown");
                    }
                }
                return;
            }
        };
        match got {
            Ok(msgs) => {
                failures = 0;
                if msgs.is_empty() {
                    continue;
                }
                ctx.metrics.received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                ctx.unclaimed.fetch_add(msgs.len(), Ordering::Relaxed);
                // The messages' visibility runs from (about) now, not from
                // when they are claimed: they may wait in the channel first.
                if tx.send(Delivery { at_ms: now_ms(), msgs }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Backoff resets after a success; never hot-loop on a dead endpoint.
                let wait = backoff(ctx.settings.backoff, failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "receive failed");
                tokio::select! {
                    _ = ctx.stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
