//! The async driver of the core batching policy
//! ([`scorefleet_core::batch::Batcher`]): wakes at the policy's next deadline,
//! pushes arriving images, and hands closed batches to the inference thread.
//! On shutdown (input closed) whatever waits is flushed at once.

use crate::pipeline::{Ctx, Job};
use scorefleet_core::batch::{Batcher, Policy};
use scorefleet_core::traits::{Chw, now_ms};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Gathers images across messages into model batches.
pub(crate) async fn run<Q, S, O, F, P>(
    ctx: Arc<Ctx<Q, S, O, F, P>>,
    mut rx: mpsc::Receiver<(Job, Chw)>,
    infer_tx: mpsc::Sender<Vec<(Job, Chw)>>,
) {
    let lease_ms = ctx.settings.lease.as_millis() as u64;
    let mut batcher = Batcher::new(Policy {
        max_items: ctx.settings.max_batch,
        max_wait_ms: ctx.settings.max_wait.as_millis() as u64,
        // Leave half a lease for inference, recording and emitting.
        lease_margin_ms: lease_ms / 2,
    });
    loop {
        let deadline = batcher.next_deadline();
        let sleep = async {
            match deadline {
                Some(due) => tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await,
                None => futures::future::pending().await,
            }
        };
        let ready = tokio::select! {
            item = rx.recv() => match item {
                Some((job, chw)) => {
                    let lease = job.lease_until_ms;
                    batcher.push((job, chw), lease, now_ms())
                }
                None => {
                    if let Some(b) = batcher.flush() {
                        let _ = infer_tx.send(b).await;
                    }
                    return;
                }
            },
            _ = sleep => batcher.poll(now_ms()),
            // Draining: no point waiting for company that will not come.
            _ = ctx.stop.cancelled(), if !batcher.is_empty() => batcher.flush(),
        };
        if let Some(b) = ready
            && infer_tx.send(b).await.is_err()
        {
            return;
        }
    }
}
