//! The wiring: stages joined by bounded channels, under one supervisor.
//!
//! ```text
//! receivers (N long polls) → dedup (parse, claim) → fetch+decode (M at once)
//!   → batch (core policy) → inference thread → record (fenced finish)
//!   → emit (results ×10, then deletes ×10)
//! ```
//!
//! Every channel is bounded, so a slow stage stops the receivers and memory is
//! set by configuration, not by queue depth. A message is deleted only after
//! its outcome is stored and its result sent. Shutdown (a signal, or a fault
//! the [`Supervisor`] saw): the receivers stop, messages received but not yet
//! claimed go back to the queue at once, the rest drains through; whatever is
//! still claimed when the drain ends (at its limit, or because a stage died
//! holding it) is released and made visible again.

use crate::ctx::{Claims, Ctx, Ports};
use crate::fetch::Fetcher;
use crate::job::{Decoded, Delivery, Emit, Job, Outcome};
use crate::lease::Registry;
use crate::metrics::SharedMetrics;
use crate::settings::Settings;
use crate::supervise::{Fault, Supervisor};
use scorefleet_core::traits::{JobQueue, MessageSink, OutcomeStore, Predictor, Preprocessor};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What shutdown found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Whether every stage finished within the drain limit.
    pub drained: bool,
    /// Claims released and messages returned at the end of the drain.
    pub released: usize,
    /// Why the pipeline stopped, when it was not asked to: the worker must
    /// exit non-zero.
    pub fault: Option<Fault>,
}

/// Runs the pipeline until `stop` is cancelled (or a stage fails) and the
/// drain finishes.
///
/// Channel depths are fixed by configuration (a few batches' worth), never by
/// queue depth, so a slow stage stops the receivers instead of growing memory.
pub async fn run<Q, S, O, F, P, M>(
    ports: Ports<Q, S, O, F, P>,
    predictor: M,
    settings: Settings,
    metrics: SharedMetrics,
    registry: Arc<Registry>,
    stop: CancellationToken,
) -> DrainReport
where
    Q: JobQueue,
    S: MessageSink,
    O: OutcomeStore,
    F: Fetcher,
    P: Preprocessor,
    M: Predictor,
{
    let model = predictor.model().clone();
    let ctx = Arc::new(Ctx { settings: settings.clone(), model, metrics, registry, stop: stop.clone() });
    let Ports { queue, sink, store, fetcher, preprocessor } = ports;
    let claims = Claims { queue: queue.clone(), store: store.clone() };
    let depth = settings.max_batch.max(10) * 2;
    let (recv_tx, recv_rx) = mpsc::channel::<Delivery>(settings.receivers);
    let (fetch_tx, fetch_rx) = mpsc::channel::<Job>(depth);
    let (batch_tx, batch_rx) = mpsc::channel::<Decoded>(depth);
    let (infer_tx, infer_rx) = mpsc::channel::<Vec<crate::batch::Batched>>(2);
    let (record_tx, record_rx) = mpsc::channel::<Outcome>(depth);
    let (emit_tx, emit_rx) = mpsc::channel::<Emit>(depth);

    // Every stage ends when its input channel closes, so cancelling the
    // receivers drains the whole chain in order.
    let mut sup = Supervisor::default();
    for _ in 0..settings.receivers {
        sup.spawn("receive", crate::receive::run(ctx.clone(), queue.clone(), recv_tx.clone()));
    }
    drop(recv_tx);
    sup.spawn(
        "dedup",
        crate::dedup::run(ctx.clone(), claims.clone(), recv_rx, fetch_tx, record_tx.clone(), emit_tx.clone()),
    );
    sup.spawn(
        "fetch",
        crate::fetch::stage::run(
            ctx.clone(),
            claims.clone(),
            fetcher,
            preprocessor,
            fetch_rx,
            batch_tx,
            record_tx.clone(),
        ),
    );
    let policy = crate::batch::policy(&settings);
    sup.spawn("batch", crate::batch::run(policy, ctx.metrics.clone(), stop.clone(), batch_rx, infer_tx));
    let scoring = crate::infer::Scoring::new(&ctx);
    match crate::infer::pool(settings.infer_threads) {
        Ok(pool) => sup.spawn_thread("infer", crate::infer::thread(), move || {
            pool.install(move || crate::infer::run(scoring, predictor, infer_rx, record_tx))
        }),
        Err(e) => sup.fail(Fault::new("infer", format!("could not build its thread pool: {e}"))),
    }
    sup.spawn("record", crate::record::run(ctx.clone(), claims, record_rx, emit_tx));
    sup.spawn("emit", crate::emit::run(ctx.clone(), queue.clone(), sink, emit_rx));
    // The keeper outlives `stop`: jobs draining after it still need their
    // leases kept until they finish. Watched on its own for that reason.
    let keeper_stop = CancellationToken::new();
    let mut keeper = tokio::spawn(crate::lease::keep(
        queue.clone(),
        store.clone(),
        ctx.registry.clone(),
        ctx.metrics.clone(),
        settings.lease,
        keeper_stop.clone(),
    ));

    // Running: until a signal, or the first fault.
    let mut keeper_done = false;
    if !sup.failed() {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            _ = ctx.registry.poisoned() => sup.fail(Fault::new("registry", "lock poisoned")),
            _ = sup.next(false) => {}
            joined = &mut keeper => {
                keeper_done = true;
                sup.fail(match joined {
                    Ok(()) => Fault::new("lease keeper", "ended before shutdown"),
                    Err(e) => Fault::new("lease keeper", format!("panicked: {e}")),
                });
            }
        }
    }
    stop.cancel();
    tracing::info!(in_flight = ctx.registry.len(), "stopping: no more receives; draining");

    // Draining: every stage ends in order, within the limit.
    let drained = sup.join_all(settings.drain_timeout).await;
    // What is still registered now was dropped by a stage that died with it
    // or is still running past the limit: give it back rather than let it
    // sit until its lease and visibility run out.
    let left = ctx.registry.drain();
    let released = crate::lease::give_back_all(&*queue, &*store, &left).await;
    if released > 0 {
        tracing::warn!(released, drained, "claims released and messages returned at the end of the drain");
    }
    keeper_stop.cancel();
    if !keeper_done && let Err(e) = keeper.await {
        sup.fail(Fault::new("lease keeper", format!("panicked: {e}")));
    }
    if ctx.registry.is_poisoned() {
        sup.fail(Fault::new("registry", "lock poisoned"));
    }
    DrainReport { drained, released, fault: sup.into_fault() }
}
