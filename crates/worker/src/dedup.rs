//! Dedup: parse each message and claim its job in the outcome table.
//!
//! - A redelivery of a message this worker still holds is adopted before any
//!   claim: its newer receipt handle replaces the old one (SQS honours only
//!   the newest for the final delete) and the copy in flight goes on.
//! - `Claimed`/`TakenOver` → the job goes on to fetch (or, for a body that is
//!   broken but names a job id, straight to record as `invalid_message`).
//! - `Busy` → another live lease holds it: leave the message, its visibility
//!   brings it back.
//! - `Done` → no recompute: the stored result is re-sent and the message
//!   deleted (the first worker may have died between finish and send).
//! - Unparsable without a job id → left to the queue's redrive policy (DLQ).
//!
//! In finish-only mode ([`crate::mode`]) there is no claim: one batched,
//! eventually consistent read per receive batch finds the jobs that already
//! have an outcome (→ re-sent, as `Done` above) or a claim-mode worker's live
//! lease (→ left, as `Busy`); the rest go on without a lease, their fence
//! [`Fence::unclaimed`], and their finish is the conditional write that keeps
//! one outcome per job. A failed read only costs that check: the jobs go on,
//! and the finish still decides. A first delivery with the producer's
//! new-run mark ([`Received::new_run`]) is not read at all.

use crate::ctx::{Claims, Ctx};
use crate::job::{Delivery, Emit, Job, Outcome};
use crate::lease::InFlight;
use crate::metrics::Stage;
use crate::mode::Mode;
use scorefleet_aws::retry;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::job::{JobId, JobMessage};
use scorefleet_core::lease::{self, ClaimOutcome, Fence, Lookup, OutcomeRecord};
use scorefleet_core::traits::{JobQueue, OutcomeStore, Received, ServiceError, now_ms};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Claims every message of each receive batch, concurrently, and routes it.
pub(crate) async fn run<Q, O>(
    ctx: Arc<Ctx>,
    claims: Claims<Q, O>,
    mut rx: mpsc::Receiver<Delivery>,
    fetch_tx: mpsc::Sender<Job>,
    record_tx: mpsc::Sender<Outcome>,
    emit_tx: mpsc::Sender<Emit>,
) where
    Q: JobQueue,
    O: OutcomeStore,
{
    ctx.metrics.dedup.configure(ctx.settings.dedup);
    while let Some(Delivery { at_ms, msgs }) = rx.recv().await {
        let received = msgs.len();
        if ctx.stop.is_cancelled() {
            // Received but not started: back to the queue at once.
            let entries: Vec<(String, Duration)> =
                msgs.iter().map(|m| (m.receipt_handle.clone(), Duration::ZERO)).collect();
            crate::lease::return_messages(&*claims.queue, &entries).await;
            ctx.registry.through_claim(received);
            continue;
        }
        let msgs = distinct_deliveries(msgs);
        let found = match ctx.metrics.dedup.current(&ctx.metrics) {
            Mode::Claim => None,
            Mode::FinishOnly => Some(look_up(&ctx, &*claims.store, &msgs).await),
        };
        let claiming = msgs.into_iter().map(|m| claim_one(&ctx, &claims, m, at_ms, found.as_ref()));
        let steps = futures::future::join_all(claiming).await;
        // Claimed ones are in the registry now; the others are left or done.
        ctx.registry.through_claim(received);
        for step in steps {
            let sent = match step {
                Step::Fetch(job) => fetch_tx.send(job).await.is_ok(),
                Step::Record(o) => record_tx.send(o).await.is_ok(),
                Step::Emit(e) => emit_tx.send(e).await.is_ok(),
                Step::Leave => true,
            };
            if !sent {
                return;
            }
        }
    }
}

/// One delivery per message: SQS may hand out the same message twice in one
/// receive; two claims of it would leave one delivery's handle dangling and
/// put the same message twice into one delete batch. The later delivery's
/// handle is kept (the newest handle is the one SQS honours).
pub(crate) fn distinct_deliveries(msgs: Vec<Received>) -> Vec<Received> {
    let mut out: Vec<Received> = Vec::with_capacity(msgs.len());
    for m in msgs {
        match out.iter_mut().find(|o| o.message_id == m.message_id) {
            Some(prev) => *prev = m,
            None => out.push(m),
        }
    }
    out
}

// Moved once per job, never stored in bulk: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Step {
    Fetch(Job),
    Record(Outcome),
    Emit(Emit),
    Leave,
}

/// What a message body is to the worker, before any claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A valid job: claimed, then fetched.
    Job(JobMessage),
    /// Broken, but it names a job: claimed and answered with an
    /// `invalid_message` result.
    Invalid {
        /// The job it names.
        job_id: JobId,
        /// Why it is broken.
        error: String,
    },
    /// It names no job: no result can be addressed, so it is left to the
    /// queue's redrive policy (the DLQ).
    DeadLetter {
        /// Why it is broken.
        error: String,
    },
}

/// Routes a message body: the parse and the decision the dedup stage acts on.
pub fn route(body: &str) -> Route {
    match JobMessage::parse(body) {
        Ok(job) => Route::Job(job),
        Err(e) => match e.job_id {
            Some(job_id) => Route::Invalid { job_id, error: e.message },
            None => Route::DeadLetter { error: e.message },
        },
    }
}

/// The run an unparsable message's record is filed under.
pub const UNPARSABLE_RUN: &str = "unparsable";

/// Finish-only mode: the records of the jobs these messages name, in one
/// batched read (eventually consistent; retried while transient). Empty when
/// the read fails: the jobs are computed and their finish decides.
///
/// A first delivery of a message with the new-run mark is not looked up:
/// its job is new to the table unless the message was sent twice, and the
/// conditional finish settles that case as it settles any duplicate in flight.
async fn look_up<O: OutcomeStore>(
    ctx: &Ctx,
    store: &O,
    msgs: &[Received],
) -> HashMap<scorefleet_core::job::JobId, OutcomeRecord> {
    let ids: Vec<JobId> = msgs
        .iter()
        .filter(|m| !(m.new_run && m.receive_count <= 1))
        .filter_map(|m| match route(&m.body) {
            Route::Job(job) => Some(job.job_id),
            Route::Invalid { job_id, .. } => Some(job_id),
            Route::DeadLetter { .. } => None,
        })
        .collect();
    if ids.is_empty() {
        return HashMap::new();
    }
    ctx.metrics.dedup_lookups.fetch_add(ids.len() as u64, Ordering::Relaxed);
    let retries = ctx.settings.retries;
    let read = || store.lookup(&ids);
    match retry(ctx.settings.backoff, |e: &ServiceError, n| e.is_transient() && n < retries, read).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, jobs = ids.len(), "outcome lookup failed; computing, the finish decides");
            HashMap::new()
        }
    }
}

/// Parses and claims one message; in finish-only mode (`found`: the batched
/// read's records) decides from the record instead of claiming.
async fn claim_one<Q, O: OutcomeStore>(
    ctx: &Ctx,
    claims: &Claims<Q, O>,
    m: Received,
    received_ms: u64,
    found: Option<&HashMap<JobId, OutcomeRecord>>,
) -> Step {
    let (job_id, parsed, parse_error) = match route(&m.body) {
        Route::Job(job) => (job.job_id.clone(), Some(job), None),
        Route::Invalid { job_id, error } => (job_id, None, Some(error)),
        Route::DeadLetter { error } => {
            // No id: nothing to record a result under. Redrive takes it
            // to the DLQ after maxReceiveCount deliveries.
            tracing::warn!(message_id = %m.message_id, %error, "unparsable message without a job id; left for the DLQ");
            ctx.metrics.left_for_redrive.fetch_add(1, Ordering::Relaxed);
            return Step::Leave;
        }
    };
    // Our own job, redelivered while we still work on it (its visibility
    // lapsed: extensions failed): adopt the newer receipt handle and let the
    // copy in flight finish. A claim would find our lease over (it ends a
    // margin before the visibility), take it over from ourselves and score
    // the job a second time.
    if ctx.registry.refresh_receipt(&job_id, &m.message_id, &m.receipt_handle) {
        ctx.metrics.adopted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(job_id = %job_id, "redelivered while in flight; newest receipt handle adopted");
        return Step::Leave;
    }
    let run_id = parsed.as_ref().map(|j| j.run_id.clone()).unwrap_or_default();
    // The table indexes records by run (a key attribute cannot be empty): a
    // broken body without a readable run is filed under a fixed placeholder.
    let claim_run = if run_id.is_empty() { UNPARSABLE_RUN } else { run_id.as_str() };
    let started = Instant::now();
    let lease_ms = ctx.settings.lease.as_millis() as u64;
    let margin_ms = crate::lease::margin(ctx.settings.lease).as_millis() as u64;
    // The visibility runs from the receive (the message may have waited in
    // the channel since); the lease ends a margin before it, so a message
    // whose worker died comes back to a lease already over.
    let lease_until_ms = received_ms.min(now_ms()) + lease_ms - margin_ms;
    if let Some(found) = found {
        let fence = match lease::lookup(found.get(&job_id), now_ms()) {
            Lookup::Compute => Fence::unclaimed(&ctx.settings.worker_id),
            Lookup::Busy => {
                ctx.metrics.busy.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job_id = %job_id, "held by a live claim; left for visibility to bring back");
                return Step::Leave;
            }
            Lookup::Done(record) => return done(ctx, job_id, m.receipt_handle, record),
        };
        return start(ctx, m, job_id, run_id, parsed, parse_error, fence, received_ms, lease_until_ms);
    }
    let retries = ctx.settings.retries;
    let claim = || {
        let now = now_ms();
        let claim_ms = lease_until_ms.saturating_sub(now).max(margin_ms);
        claims.store.claim(&job_id, claim_run, &ctx.settings.worker_id, now, claim_ms)
    };
    let claimed = match retry(ctx.settings.backoff, |e: &ServiceError, n| e.is_transient() && n < retries, claim).await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job_id = %job_id, error = %e, "claim failed; message left for a later delivery");
            return Step::Leave;
        }
    };
    ctx.metrics.observe(Stage::Claim, started.elapsed());
    let fence = match claimed {
        ClaimOutcome::Claimed(f) => f,
        ClaimOutcome::TakenOver { fence, previous_owner } => {
            tracing::info!(job_id = %job_id, %previous_owner, "took over an expired lease");
            ctx.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
            fence
        }
        ClaimOutcome::Busy { owner, .. } => {
            ctx.metrics.busy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(job_id = %job_id, %owner, "held by a live lease; left for visibility to bring back");
            return Step::Leave;
        }
        ClaimOutcome::Done(record) => return done(ctx, job_id, m.receipt_handle, record),
    };
    start(ctx, m, job_id, run_id, parsed, parse_error, fence, received_ms, lease_until_ms)
}

/// A job already finished: its stored result is re-sent, nothing computed.
fn done(ctx: &Ctx, job_id: JobId, receipt: String, record: OutcomeRecord) -> Step {
    ctx.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
    match record.result {
        // The first copy's result may never have been sent (crash
        // between finish and send): sending again is the safe side.
        Some(body) => Step::Emit(Emit::Resend { job_id: job_id.to_string(), receipt, body }),
        None => Step::Leave,
    }
}

/// Registers a job taken (claimed, or unclaimed in finish-only mode) and
/// routes it to fetch, or to record when its body was broken.
#[allow(clippy::too_many_arguments)]
fn start(
    ctx: &Ctx,
    m: Received,
    job_id: JobId,
    run_id: String,
    parsed: Option<JobMessage>,
    parse_error: Option<String>,
    fence: Fence,
    received_ms: u64,
    lease_until_ms: u64,
) -> Step {
    // The keeper extends both before the lease (the earlier) ends.
    let held = ctx.registry.hold(
        InFlight {
            job_id: job_id.clone(),
            message_id: m.message_id.clone(),
            receipt: m.receipt_handle.clone(),
            fence: fence.clone(),
            lease_until_ms,
        },
        &ctx.metrics,
    );
    // A one-image job's URL and attrs go on the job's result itself.
    let single = parsed.as_ref().filter(|j| !j.multi).and_then(|j| j.images.first());
    let job = Job {
        held,
        job_id,
        run_id,
        url: single.map(|i| i.url_raw.clone()).unwrap_or_default(),
        attrs: single.and_then(|i| i.attrs.clone()),
        multi: parsed.as_ref().is_some_and(|j| j.multi),
        parsed,
        receipt: m.receipt_handle,
        fence,
        attempts: m.receive_count,
        received_ms,
        lease_until_ms,
    };
    match parse_error {
        Some(e) => Step::Record(job.failed(&ctx.settings.worker_id, JobError::new(ErrorKind::InvalidMessage, e))),
        None => Step::Fetch(job),
    }
}
