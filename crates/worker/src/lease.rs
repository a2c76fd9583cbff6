//! The in-flight registry and the lease keeper.
//!
//! Every claimed job is registered with its receipt handle, its fence and its
//! lease end (counted from the receive, when the message's visibility
//! started). The keeper wakes every eighth of a lease and, for every job whose
//! lease ends within half a lease, extends the SQS visibility
//! (ChangeMessageVisibilityBatch, 10 per call, one entry per receipt handle)
//! and the DynamoDB lease (fenced `renew`) together. A refused renew means
//! another worker took the job over: it is marked lost and never finished or
//! deleted by this worker.
//!
//! The DynamoDB lease always ends a [`margin`] before the message's
//! visibility: when a worker dies, its message reappears only after its
//! lease has run out, so the next worker to receive it takes it over at once
//! instead of finding it `Busy` and leaving it for another whole visibility
//! timeout (each of those receives counts towards the dead-letter limit).
//!
//! A job taken without a claim (finish-only dedup mode: its fence is
//! [`Fence::unclaimed`]) has no DynamoDB lease: the keeper extends its
//! visibility alone, and there is no claim to release.
//!
//! A job's entry is owned by its [`Held`] guard. A guard dropped while its
//! job is still ours (a stage ended or panicked holding it) leaves an
//! orphan, which the keeper's next pass gives back: claim released, message
//! visible at once.

use crate::metrics::SharedMetrics;
use scorefleet_core::job::JobId;
use scorefleet_core::lease::{Fence, LeaseError};
use scorefleet_core::traits::{JobQueue, OutcomeStore, now_ms};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One claimed job.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// The job.
    pub job_id: JobId,
    /// The SQS message: a redelivery of the same message while in flight
    /// brings a newer receipt handle, which replaces `receipt`.
    pub message_id: String,
    /// The delivery to extend, delete or return.
    pub receipt: String,
    /// Our claim.
    pub fence: Fence,
    /// When our lease (and the message's visibility) ends, epoch ms.
    pub lease_until_ms: u64,
}

/// Claimed jobs by registry key, and the messages received but not yet
/// through their claim: together, what the in-flight limit counts.
///
/// A poisoned lock (a panic while it was held) is a bug that leaves this
/// bookkeeping in doubt: it cancels [`Registry::poisoned`], which the
/// pipeline's supervisor treats as a fault that stops the worker. Until then
/// the data is still used (to release what is held), never read as "lease
/// lost".
#[derive(Debug, Default)]
pub struct Registry {
    state: Mutex<State>,
    next: AtomicU64,
    /// Messages received and not yet claimed (or left).
    unclaimed: AtomicUsize,
    /// Woken whenever a job or an unclaimed message leaves, so that a
    /// receiver paused at the in-flight limit resumes at once.
    left: Notify,
    poisoned: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<u64, InFlight>,
    /// Entries whose [`Held`] was dropped while the job was still ours (a
    /// stage that ended or panicked with it): given back, never left to lapse.
    orphans: Vec<InFlight>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| {
            if !self.poisoned.is_cancelled() {
                tracing::error!("the in-flight registry's lock is poisoned: a task panicked while holding it");
                self.poisoned.cancel();
            }
            p.into_inner()
        })
    }

    /// Resolves once the lock has been found poisoned.
    pub async fn poisoned(&self) {
        self.poisoned.cancelled().await;
    }

    /// Whether the lock has been found poisoned.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_cancelled()
    }

    /// Registers a claimed job; the returned guard owns the entry and the
    /// `in_flight` gauge's count for it.
    pub(crate) fn hold(self: &Arc<Self>, job: InFlight, metrics: &SharedMetrics) -> Held {
        let key = self.insert(job);
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Held { key, registry: self.clone(), metrics: metrics.clone(), settled: false }
    }

    /// Registers a job; returns its key.
    pub fn insert(&self, job: InFlight) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().jobs.insert(key, job);
        key
    }

    /// Forgets a job (finished, abandoned or lost).
    pub fn remove(&self, key: u64) -> Option<InFlight> {
        let gone = self.lock().jobs.remove(&key);
        if gone.is_some() {
            self.left.notify_waiters();
        }
        gone
    }

    /// Whether the job is still ours (not finished, abandoned or lost).
    pub fn contains(&self, key: u64) -> bool {
        self.lock().jobs.contains_key(&key)
    }

    /// Adopts a newer delivery of an in-flight job's own message. Returns
    /// whether such a job was found. A different message for the same job
    /// (a duplicate send) is not adopted: it stays a separate delivery.
    pub fn refresh_receipt(&self, job_id: &JobId, message_id: &str, receipt: &str) -> bool {
        let mut state = self.lock();
        match state.jobs.values_mut().find(|j| &j.job_id == job_id && j.message_id == message_id) {
            Some(j) => {
                j.receipt = receipt.to_owned();
                // Extend at the next keeper tick: the new delivery starts
                // with only the queue's default visibility.
                j.lease_until_ms = 0;
                true
            }
            None => false,
        }
    }

    /// Jobs in flight.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts `n` messages received and not yet claimed.
    pub(crate) fn received(&self, n: usize) {
        self.unclaimed.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` received messages are through their claim (claimed, left or done).
    pub(crate) fn through_claim(&self, n: usize) {
        self.unclaimed.fetch_sub(n, Ordering::Relaxed);
        self.left.notify_waiters();
    }

    /// Jobs held: claimed, or received and waiting for their claim.
    pub(crate) fn held(&self) -> usize {
        self.len() + self.unclaimed.load(Ordering::Relaxed)
    }

    /// Resolves when a job or an unclaimed message leaves after this call
    /// (enable it before checking [`Registry::held`], so no leave is missed).
    pub(crate) fn on_leave(&self) -> tokio::sync::futures::Notified<'_> {
        self.left.notified()
    }

    /// Jobs whose lease ends before `before_ms`.
    pub(crate) fn due(&self, before_ms: u64) -> Vec<(u64, InFlight)> {
        let state = self.lock();
        state.jobs.iter().filter(|(_, j)| j.lease_until_ms < before_ms).map(|(k, j)| (*k, j.clone())).collect()
    }

    fn set_lease(&self, key: u64, until_ms: u64) {
        if let Some(j) = self.lock().jobs.get_mut(&key) {
            j.lease_until_ms = until_ms;
        }
    }

    /// Moves a job whose guard was dropped unsettled to the orphans.
    fn orphan(&self, key: u64) {
        let mut state = self.lock();
        if let Some(j) = state.jobs.remove(&key) {
            state.orphans.push(j);
            drop(state);
            self.left.notify_waiters();
        }
    }

    /// Takes the orphans out, to give them back.
    pub(crate) fn take_orphans(&self) -> Vec<InFlight> {
        std::mem::take(&mut self.lock().orphans)
    }

    /// Takes every job and orphan out (the end of a drain).
    pub fn drain(&self) -> Vec<InFlight> {
        let mut state = self.lock();
        let mut all: Vec<InFlight> = state.jobs.drain().map(|(_, j)| j).collect();
        all.append(&mut state.orphans);
        drop(state);
        self.left.notify_waiters();
        all
    }

    /// Poisons the lock, as a panic while holding it would.
    #[cfg(test)]
    pub(crate) fn poison(&self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = self.state.lock();
            panic!("poisoning the registry for a test");
        }));
    }
}

/// A claimed job's hold on its registry entry and on the `in_flight` gauge:
/// the job owns it, so every path that ends the job releases both, whether
/// it finishes, fails, is lost, or is dropped by a stage that ended.
///
/// Settled ([`Held::settle`]): the job is done with (deleted, given back,
/// left for redelivery, lost) and its entry is removed. Dropped unsettled:
/// the entry becomes an orphan, which the lease keeper (or the drain) gives
/// back — claim released, message visible at once — instead of letting it
/// sit until its lease and visibility run out.
#[derive(Debug)]
pub(crate) struct Held {
    key: u64,
    registry: Arc<Registry>,
    metrics: SharedMetrics,
    settled: bool,
}

impl Held {
    /// Whether the job is still ours (the keeper has not seen it lost).
    pub(crate) fn is_ours(&self) -> bool {
        self.registry.contains(self.key)
    }

    /// Ends the hold; returns the entry (with the newest receipt handle)
    /// if the job was still ours.
    pub(crate) fn settle(mut self) -> Option<InFlight> {
        self.settled = true;
        self.registry.remove(self.key)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.settled {
            self.registry.orphan(self.key);
        }
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes deliveries visible again after their delay (0: at once). A failure
/// is logged: the message then comes back when its visibility ends.
pub(crate) async fn return_messages<Q: JobQueue>(queue: &Q, entries: &[(String, Duration)]) {
    if entries.is_empty() {
        return;
    }
    match queue.change_visibility(entries).await {
        Ok(failed) => {
            for f in failed {
                tracing::warn!(code = %f.code, "could not return a message; it comes back when its visibility ends");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not return messages; they come back when their visibility ends"),
    }
}

/// Releases one claim so the next claim takes it over at once (nothing to do
/// for a job taken without a claim).
pub(crate) async fn release_claim<O: OutcomeStore>(store: &O, job_id: &JobId, fence: &Fence) {
    if !fence.is_claim() {
        return;
    }
    match store.release(job_id, fence).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%job_id, reason = %e, "claim not released: no longer ours"),
        Err(e) => tracing::warn!(%job_id, error = %e, "could not release the claim; it expires with its lease"),
    }
}

/// Gives jobs back: messages visible now, claims released. Returns how many.
pub(crate) async fn give_back_all<Q: JobQueue, O: OutcomeStore>(queue: &Q, store: &O, jobs: &[InFlight]) -> usize {
    let entries: Vec<(String, Duration)> = jobs.iter().map(|j| (j.receipt.clone(), Duration::ZERO)).collect();
    return_messages(queue, &entries).await;
    futures::future::join_all(jobs.iter().map(|j| release_claim(store, &j.job_id, &j.fence))).await;
    jobs.len()
}

/// How much earlier than the message's visibility the DynamoDB lease ends: a
/// tenth of the lease, within 250 ms..5 s (clock skew between the worker
/// and SQS, and the time a visibility change takes to apply), and never more
/// than half the lease.
pub fn margin(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(250), Duration::from_secs(5)).min(lease / 2)
}

/// Extends leases until `stop` is cancelled.
pub async fn keep<Q: JobQueue, O: OutcomeStore>(
    queue: Arc<Q>,
    store: Arc<O>,
    registry: Arc<Registry>,
    metrics: SharedMetrics,
    lease: Duration,
    stop: CancellationToken,
) {
    // An eighth: a renewal that fails (a network blip, throttling) gets
    // three more tries before the half lease left at the first one runs out.
    let tick = (lease / 8).max(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let orphans = registry.take_orphans();
        if !orphans.is_empty() {
            tracing::warn!(n = orphans.len(), "jobs dropped while claimed; giving them back");
            give_back_all(&*queue, &*store, &orphans).await;
        }
        renew_due(&*queue, &*store, &registry, &metrics, lease).await;
    }
}

/// One pass of the keeper: extend every lease that ends within half a lease.
pub async fn renew_due<Q: JobQueue, O: OutcomeStore>(
    queue: &Q,
    store: &O,
    registry: &Registry,
    metrics: &SharedMetrics,
    lease: Duration,
) {
    let now = now_ms();
    let lease_ms = lease.as_millis() as u64;
    let due = registry.due(now + lease_ms / 2);
    if due.is_empty() {
        return;
    }
    // The lease ends a margin before the visibility it comes with.
    let until = now + lease_ms - margin(lease).as_millis() as u64;
    // Visibility first: the message is what another worker would see.
    let entries: Vec<(String, Duration)> = due.iter().map(|(_, j)| (j.receipt.clone(), lease)).collect();
    match queue.change_visibility(&entries).await {
        Ok(failed) => {
            for f in failed {
                tracing::warn!(code = %f.code, job_id = %due[f.index].1.job_id, "visibility extension refused");
            }
        }
        Err(e) => tracing::warn!(error = %e, "visibility extension failed; retrying next tick"),
    }
    let renewals = due.iter().map(|(key, j)| async move {
        if !j.fence.is_claim() {
            // No DynamoDB lease: the visibility just extended is all it holds.
            registry.set_lease(*key, until);
            metrics.lease_renewals.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match store.renew(&j.job_id, &j.fence, until).await {
            Ok(Ok(())) => {
                registry.set_lease(*key, until);
                metrics.lease_renewals.fetch_add(1, Ordering::Relaxed);
            }
            // Finished between the scan and the renew: the record stage owns
            // it now; nothing is lost.
            Ok(Err(LeaseError::AlreadyFinished)) => {}
            Ok(Err(lost)) => {
                // Abandon, not finish: another worker owns the job now. Out of
                // the registry, the later stages drop it (no finish, no
                // result, no delete) and the keeper stops extending it.
                tracing::warn!(job_id = %j.job_id, reason = %lost, "lease lost; job abandoned to its new owner");
                metrics.leases_lost.fetch_add(1, Ordering::Relaxed);
                registry.remove(*key);
            }
            Err(e) => tracing::warn!(job_id = %j.job_id, error = %e, "lease renewal failed; retrying next tick"),
        }
    });
    futures::future::join_all(renewals).await;
}
