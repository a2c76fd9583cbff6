//! The async driver of the core batching policy
//! ([`scorefleet_core::batch::Batcher`]): wakes at the policy's next deadline,
//! pushes arriving jobs (each weighing its model inputs), and hands closed
//! batches to the inference thread.
//! On shutdown (input closed, or the stop token) whatever waits is flushed at
//! once.

use crate::flow::drive;
use crate::job::{Decoded, Job};
use crate::metrics::{SharedMetrics, Stage};
use crate::settings::Settings;
use scorefleet_core::batch::Policy;
use scorefleet_core::error::JobError;
use scorefleet_core::traits::Chw;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A job and what became of each of its images so far: a model input, or
/// the error that stopped it.
pub(crate) type Batched = (Job, Vec<Result<Chw, JobError>>);

/// The model-batch policy of these settings.
pub(crate) fn policy(s: &Settings) -> Policy {
    Policy {
        max_items: s.max_batch,
        max_wait_ms: s.max_wait.as_millis() as u64,
        // Leave half a lease for inference, recording and emitting.
        lease_margin_ms: s.lease.as_millis() as u64 / 2,
    }
}

/// Gathers images across messages into model batches.
pub(crate) async fn run(
    policy: Policy,
    metrics: SharedMetrics,
    stop: CancellationToken,
    rx: mpsc::Receiver<Decoded>,
    infer_tx: mpsc::Sender<Vec<Batched>>,
) {
    let send = |batch: Vec<Decoded>| {
        let batch: Vec<Batched> = batch
            .into_iter()
            .map(|d| {
                metrics.observe(Stage::Batch, d.ready.elapsed());
                (d.job, d.images)
            })
            .collect();
        let infer_tx = &infer_tx;
        async move { infer_tx.send(batch).await.is_ok() }
    };
    drive(policy, &stop, rx, Decoded::inputs, |d| d.job.lease_until_ms, send).await;
}
