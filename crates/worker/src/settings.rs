//! How the pipeline runs: the validated settings every stage reads.

use scorefleet_aws::Backoff;
use std::time::Duration;

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This worker's name: the lease owner and the `worker` of results.
    pub worker_id: String,
    /// Concurrent long polls.
    pub receivers: usize,
    /// Long-poll wait.
    pub wait: Duration,
    /// Concurrent fetches (and decodes).
    pub fetchers: usize,
    /// Largest model batch.
    pub max_batch: usize,
    /// Most claimed jobs held at once (received, not yet deleted): receiving
    /// pauses at this many. 0: four model batches (at least 40).
    pub max_in_flight: usize,
    /// Threads of the inference pool (0: one per core).
    pub infer_threads: usize,
    /// Longest wait for a batch to fill.
    pub max_wait: Duration,
    /// Lease length: the DynamoDB lease and the SQS visibility it keeps.
    pub lease: Duration,
    /// Labels per result.
    pub top_k: usize,
    /// Largest object fetched.
    pub max_bytes: u64,
    /// In-process retries of a retryable failure before leaving the message to
    /// the queue's redrive policy.
    pub retries: u32,
    /// The wait between in-process retries.
    pub backoff: Backoff,
    /// How long shutdown waits for in-flight work.
    pub drain_timeout: Duration,
    /// Claim each job, finish only, or choose by CPU cost ([`crate::mode`]).
    pub dedup: crate::mode::Policy,
}
