//! Channel plumbing the stages share: a receiver as a stream, and the async
//! driver of the core [`Batcher`] (model batches and the emitter's groups of
//! ten both close by its policy).

use scorefleet_core::batch::{Batcher, Policy};
use scorefleet_core::traits::now_ms;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A receiver as a stream, without the tokio-stream crate.
pub(crate) fn stream_from<T>(rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Drives a [`Batcher`] over a channel until it closes: each item is pushed
/// with its weight and lease deadline, and every batch the policy closes (full, waited
/// long enough, a lease near) is handed to `out`. `stop` flushes what waits
/// at once. Returns when the input closes (after a last flush) or `out`
/// refuses a batch.
pub(crate) async fn drive<T, Fut>(
    policy: Policy,
    stop: &CancellationToken,
    mut rx: mpsc::Receiver<T>,
    weight: impl Fn(&T) -> usize,
    deadline: impl Fn(&T) -> u64,
    mut out: impl FnMut(Vec<T>) -> Fut,
) where
    Fut: Future<Output = bool>,
{
    let mut batcher = Batcher::new(policy);
    loop {
        let due = batcher.next_deadline();
        let sleep = async {
            match due {
                Some(due) => tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await,
                None => futures::future::pending().await,
            }
        };
        let ready = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    let (w, lease) = (weight(&item), deadline(&item));
                    batcher.push_weighted(item, w, lease, now_ms())
                }
                None => {
                    if let Some(b) = batcher.flush() {
                        out(b).await;
                    }
                    return;
                }
            },
            _ = sleep => batcher.poll(now_ms()),
            // Draining: no point waiting for company that will not come.
            _ = stop.cancelled(), if !batcher.is_empty() => batcher.flush(),
        };
        if let Some(b) = ready
            && !out(b).await
        {
            return;
        }
    }
}
