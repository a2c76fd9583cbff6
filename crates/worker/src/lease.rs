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

use crate::metrics::SharedMetrics;
use scorefleet_core::job::JobId;
use scorefleet_core::lease::{Fence, LeaseError};
use scorefleet_core::traits::{JobQueue, OutcomeStore, now_ms};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// Claimed jobs by registry key.
#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<HashMap<u64, InFlight>>,
    next: AtomicU64,
}

impl Registry {
    /// Registers a job; returns its key.
    pub fn insert(&self, job: InFlight) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.map.lock() {
            m.insert(key, job);
        }
        key
    }

    /// Forgets a job (finished, abandoned or lost).
    pub fn remove(&self, key: u64) -> Option<InFlight> {
        self.map.lock().ok()?.remove(&key)
    }

    /// Whether the job is still ours (not finished, abandoned or lost).
    pub fn contains(&self, key: u64) -> bool {
        self.map.lock().map(|m| m.contains_key(&key)).unwrap_or(false)
    }

    /// Adopts a newer delivery of an in-flight job's own message. Returns
    /// whether such a job was found. A different message for the same job
    /// (a duplicate send) is not adopted: it stays a separate delivery.
    pub fn refresh_receipt(&self, job_id: &JobId, message_id: &str, receipt: &str) -> bool {
        let Ok(mut m) = self.map.lock() else { return false };
        match m.values_mut().find(|j| &j.job_id == job_id && j.message_id == message_id) {
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
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Jobs whose lease ends before `before_ms`.
    pub(crate) fn due(&self, before_ms: u64) -> Vec<(u64, InFlight)> {
        self.map
            .lock()
            .map(|m| m.iter().filter(|(_, j)| j.lease_until_ms < before_ms).map(|(k, j)| (*k, j.clone())).collect())
            .unwrap_or_default()
    }

    fn set_lease(&self, key: u64, until_ms: u64) {
        if let Ok(mut m) = self.map.lock()
            && let Some(j) = m.get_mut(&key)
        {
            j.lease_until_ms = until_ms;
        }
    }

    /// Takes every job out (shutdown after the drain limit).
    pub fn drain(&self) -> Vec<InFlight> {
        self.map.lock().map(|mut m| m.drain().map(|(_, j)| j).collect()).unwrap_or_default()
    }
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
                if registry.remove(*key).is_some() {
                    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::warn!(job_id = %j.job_id, error = %e, "lease renewal failed; retrying next tick"),
        }
    });
    futures::future::join_all(renewals).await;
}
