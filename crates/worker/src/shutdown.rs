//! Shutdown: one root [`CancellationToken`], cancelled by SIGTERM/SIGINT.
//!
//! On cancel the receivers stop polling (a long poll in flight is let finish,
//! and what it brought is returned at once, see [`crate::receive`]). Messages
//! received but not claimed, and jobs claimed but not yet fetched, are
//! returned: their claims released and their visibility set to 0, so another
//! worker takes them immediately. Everything already fetched drains through
//! batch → infer → record → emit, which flushes results and deletes when its
//! input closes. The [`TaskTracker`] is awaited for at most the drain limit;
//! whatever is still claimed then is released and returned the same way.

use crate::pipeline::{Ctx, DrainReport};
use scorefleet_core::traits::{JobQueue, OutcomeStore};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Waits for the pipeline's tasks for at most `limit`, then gives back what
/// is left.
pub(crate) async fn drain<Q: JobQueue, S, O: OutcomeStore, F, P>(
    ctx: &Ctx<Q, S, O, F, P>,
    tracker: &TaskTracker,
    tasks: &[tokio::task::JoinHandle<()>],
    limit: Duration,
) -> DrainReport {
    let drained = tokio::time::timeout(limit, tracker.wait()).await.is_ok();
    let mut report = DrainReport { drained, released: 0 };
    if !drained {
        for t in tasks {
            t.abort();
        }
        report.released = release_all(ctx).await;
        tracing::warn!(released = report.released, "drain limit reached; claims released, messages returned");
    }
    report
}

/// Gives back every job still claimed: claim released, message visible now.
pub(crate) async fn release_all<Q: JobQueue, S, O: OutcomeStore, F, P>(ctx: &Ctx<Q, S, O, F, P>) -> usize {
    let left = ctx.registry.drain();
    let entries: Vec<(String, Duration)> = left.iter().map(|j| (j.receipt.clone(), Duration::ZERO)).collect();
    give_back(ctx, &entries).await;
    for j in &left {
        release_claim(ctx, &j.job_id, &j.fence).await;
    }
    ctx.metrics.in_flight.fetch_sub(left.len() as u64, Ordering::Relaxed);
    left.len()
}

/// Makes deliveries visible again (visibility 0, or a backoff delay).
pub(crate) async fn give_back<Q: JobQueue, S, O, F, P>(ctx: &Ctx<Q, S, O, F, P>, entries: &[(String, Duration)]) {
    if entries.is_empty() {
        return;
    }
    match ctx.ports.queue.change_visibility(entries).await {
        Ok(failed) => {
            for f in failed {
                tracing::warn!(code = %f.code, "could not return a message; it comes back when its visibility ends");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not return messages; they come back when their visibility ends"),
    }
}

/// Releases one claim so the next claim takes it over at once.
pub(crate) async fn release_claim<Q, S, O: OutcomeStore, F, P>(
    ctx: &Ctx<Q, S, O, F, P>,
    job_id: &scorefleet_core::JobId,
    fence: &scorefleet_core::lease::Fence,
) {
    match ctx.ports.store.release(job_id, fence).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%job_id, reason = %e, "claim not released: no longer ours"),
        Err(e) => tracing::warn!(%job_id, error = %e, "could not release the claim; it expires with its lease"),
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT. The handlers are
/// installed when this is called, not when the future is first polled, so a
/// signal that arrives before the spawned task runs is not the default
/// action (exit by signal) but a drain. Call it inside the runtime.
pub fn on_signal(token: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    let signals = Signals::install();
    async move {
        signals.wait().await;
        tracing::info!("signal received: stopping receives and draining");
        token.cancel();
    }
}

/// SIGTERM and SIGINT, once installed.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
