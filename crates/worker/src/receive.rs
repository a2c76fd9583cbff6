//! Receive: N concurrent long polls on the input queue (up to 10 messages,
//! up to 20 s each), handed on in whole receive batches. A failing endpoint
//! is retried with exponential backoff and jitter, reset by the next success.

use crate::ctx::Ctx;
use crate::job::Delivery;
use crate::settings::Settings;
use scorefleet_core::traits::{JobQueue, now_ms};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The most jobs a worker holds before it stops receiving (`--max-in-flight`,
/// or four model batches and at least 40).
pub(crate) fn in_flight_ceiling(s: &Settings) -> usize {
    if s.max_in_flight > 0 { s.max_in_flight } else { (4 * s.max_batch).max(40) }
}

/// How often the scoring rate is measured.
const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// How many jobs the worker holds (claimed, or received and waiting for a
/// claim) before it stops receiving: what it finishes in a quarter of a
/// lease at its measured rate, within one receive (10) and the ceiling.
///
/// A fixed limit fits one speed only. A worker slower than it expects (a
/// large model, a throttled table, an emulator) holds messages longer than
/// their visibility: those waiting for a claim are not extended yet, so they
/// come back to other workers, and every crash or stop returns them all,
/// each return a receive towards the dead-letter limit.
#[derive(Debug)]
pub(crate) struct InFlightLimit {
    floor: usize,
    ceiling: usize,
    /// A quarter of the lease, in seconds.
    horizon_s: f64,
    /// Jobs finished per second, smoothed; None until the first sample.
    rate: Option<f64>,
    /// When the last sample was taken, and the finished count then.
    last: (Instant, u64),
    current: usize,
}

impl InFlightLimit {
    /// Starts at one model batch (within the floor and the ceiling).
    pub(crate) fn new(s: &Settings, finished: u64, now: Instant) -> Self {
        let ceiling = in_flight_ceiling(s);
        let floor = ceiling.min(10);
        Self {
            floor,
            ceiling,
            horizon_s: s.lease.as_secs_f64() / 4.0,
            rate: None,
            last: (now, finished),
            current: s.max_batch.clamp(floor, ceiling),
        }
    }

    /// Takes the count of jobs finished so far; returns the limit now.
    pub(crate) fn update(&mut self, finished: u64, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last.0);
        if elapsed >= RATE_SAMPLE {
            let sample = finished.saturating_sub(self.last.1) as f64 / elapsed.as_secs_f64();
            let rate = self.rate.map_or(sample, |r| 0.7 * r + 0.3 * sample);
            self.rate = Some(rate);
            self.last = (now, finished);
            // A limit the worker fills can only measure what it allows, so
            // it may grow by half per sample at most: it finds the rate from
            // below without a jump to the ceiling on one noisy sample.
            let target = (rate * self.horizon_s).round() as usize;
            self.current = target.min(self.current + self.current / 2 + 1).clamp(self.floor, self.ceiling);
        }
        self.current
    }
}

/// One long-poll loop; ends when `stop` is cancelled or the intake is gone.
pub(crate) async fn run<Q: JobQueue>(ctx: Arc<Ctx>, queue: Arc<Q>, tx: mpsc::Sender<Delivery>) {
    let mut failures = 0u32;
    let mut limit = InFlightLimit::new(&ctx.settings, ctx.metrics.results_sent.load(Ordering::Relaxed), Instant::now());
    loop {
        // Hold no more than the limit: every message held past its stage
        // channels' turn is one whose visibility must be extended, and when
        // claims or deletes stall (throttling, a network cut) hundreds of
        // held messages lapsed and came back as duplicate results.
        loop {
            // Armed before the check, so a job leaving between the check and
            // the wait still wakes it; the timeout lets the measured rate
            // (and with it the limit) move while nothing leaves.
            let left = ctx.registry.on_leave();
            tokio::pin!(left);
            left.as_mut().enable();
            let now_limit = limit.update(ctx.metrics.results_sent.load(Ordering::Relaxed), Instant::now());
            if ctx.registry.held() < now_limit {
                break;
            }
            tokio::select! {
                _ = ctx.stop.cancelled() => return,
                _ = tokio::time::timeout(RATE_SAMPLE, left) => {}
            }
        }
        let poll = queue.receive(10, ctx.settings.wait);
        tokio::pin!(poll);
        let got = tokio::select! {
            r = &mut poll => r,
            _ = ctx.stop.cancelled() => {
                // Dropping a long poll mid-flight can lose its answer in
                // transit: those messages would stay invisible for a whole
                // visibility timeout. Let it finish (it answers at once when
                // messages wait, within `wait` otherwise) and hand back
                // whatever it got.
                if let Ok(msgs) = poll.await {
                    let entries: Vec<(String, Duration)> =
                        msgs.iter().map(|m| (m.receipt_handle.clone(), Duration::ZERO)).collect();
                    crate::lease::return_messages(&*queue, &entries).await;
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
                ctx.registry.received(msgs.len());
                // The messages' visibility runs from (about) now, not from
                // when they are claimed: they may wait in the channel first.
                if let Err(unsent) = tx.send(Delivery { at_ms: now_ms(), msgs }).await {
                    // The intake is gone (a fault): these were never claimed.
                    let entries: Vec<(String, Duration)> =
                        unsent.0.msgs.iter().map(|m| (m.receipt_handle.clone(), Duration::ZERO)).collect();
                    crate::lease::return_messages(&*queue, &entries).await;
                    ctx.registry.through_claim(entries.len());
                    return;
                }
            }
            Err(e) => {
                // Backoff resets after a success; never hot-loop on a dead endpoint.
                let wait = ctx.settings.backoff.delay(failures);
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
