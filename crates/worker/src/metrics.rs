//! The worker's counters and their Prometheus text form.
//!
//! Plain atomics: every stage increments them without locks, and `/metrics`
//! renders a snapshot. Labels are low-cardinality only (error kind, stage,
//! AWS API name).

use scorefleet_aws::ApiCounters;
use scorefleet_core::ErrorKind;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the batch-size histogram buckets.
const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// The stages whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// DynamoDB claim.
    Claim = 0,
    /// S3/HTTP fetch.
    Fetch = 1,
    /// Decode + preprocess.
    Decode = 2,
    /// Time waiting in the batcher.
    Batch = 3,
    /// Model forward pass (per batch).
    Infer = 4,
    /// Fenced finish.
    Record = 5,
    /// Receive (the long poll that delivered the message) to delete, per job.
    EndToEnd = 6,
}

const STAGES: [(&str, Stage); 7] = [
    ("claim", Stage::Claim),
    ("fetch", Stage::Fetch),
    ("decode", Stage::Decode),
    ("batch", Stage::Batch),
    ("infer", Stage::Infer),
    ("record", Stage::Record),
    ("end_to_end", Stage::EndToEnd),
];

/// Every counter the worker keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The served model's name and version, exported as `scorefleet_model_info`.
    model: std::sync::OnceLock<(String, String)>,
    /// Messages received.
    pub received: AtomicU64,
    /// Jobs already finished elsewhere: result re-sent, not recomputed.
    pub duplicates: AtomicU64,
    /// Jobs under another live lease: left alone.
    pub busy: AtomicU64,
    /// Redeliveries of a message this worker still works on: the newer
    /// receipt handle adopted, no second claim.
    pub adopted: AtomicU64,
    /// Jobs scored.
    pub succeeded: AtomicU64,
    /// Jobs failed, by `ErrorKind::ALL` index.
    pub failed: [AtomicU64; ErrorKind::ALL.len()],
    /// Images scored, over every recorded job (a job of several images
    /// counts each).
    pub images_scored: AtomicU64,
    /// Images failed, over every recorded job.
    pub images_failed: AtomicU64,
    /// Messages left for redrive (unparsable without an id, retries spent).
    pub left_for_redrive: AtomicU64,
    /// Images run through the model.
    pub inferences: AtomicU64,
    /// Model batches run.
    pub batches: AtomicU64,
    /// Batch-size histogram: counts per bucket of `BATCH_BUCKETS`.
    batch_hist: [AtomicU64; BATCH_BUCKETS.len()],
    /// Jobs in flight (claimed, not yet deleted or released).
    pub in_flight: AtomicU64,
    /// Lease renewals (SQS visibility + DynamoDB lease together).
    pub lease_renewals: AtomicU64,
    /// Leases lost to another worker (fenced).
    pub leases_lost: AtomicU64,
    /// Expired leases of crashed or stalled workers taken over by this one.
    pub takeovers: AtomicU64,
    /// Result messages sent.
    pub results_sent: AtomicU64,
    /// Input messages deleted.
    pub deleted: AtomicU64,
    /// Stage latency: total microseconds and count, per stage.
    stage_us: [AtomicU64; STAGES.len()],
    stage_n: [AtomicU64; STAGES.len()],
    /// The dedup mode (configured, and under `auto` decided from these counters).
    pub dedup: crate::mode::Choice,
    /// Finish-only mode: job records asked for by the batched read (each
    /// costs half a read unit).
    pub dedup_lookups: AtomicU64,
    /// Finish-only mode: finishes that found an outcome already stored (the
    /// job was computed twice; the stored result was re-sent).
    pub finishes_lost: AtomicU64,
}

impl Metrics {
    /// Counts a failed job.
    pub fn failed(&self, kind: ErrorKind) {
        if let Some(i) = ErrorKind::ALL.iter().position(|k| *k == kind) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one recorded image, scored or failed.
    pub fn image(&self, scored: bool) {
        let c = if scored { &self.images_scored } else { &self.images_failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Recorded images per recorded job (1 before any is recorded).
    pub fn images_per_job(&self) -> f64 {
        let jobs = self.succeeded.load(Ordering::Relaxed) + self.failed_total();
        let images = self.images_scored.load(Ordering::Relaxed) + self.images_failed.load(Ordering::Relaxed);
        if jobs == 0 || images == 0 { 1.0 } else { images as f64 / jobs as f64 }
    }

    /// Records one model batch of `n` images.
    pub fn batch(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.inferences.fetch_add(n as u64, Ordering::Relaxed);
        let i = BATCH_BUCKETS.iter().position(|b| n as u64 <= *b).unwrap_or(BATCH_BUCKETS.len() - 1);
        self.batch_hist[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a stage latency.
    pub fn observe(&self, stage: Stage, elapsed: std::time::Duration) {
        let i = stage as usize;
        self.stage_us[i].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.stage_n[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Total microseconds and count of one stage's observations.
    pub fn stage_total(&self, stage: Stage) -> (u64, u64) {
        let i = stage as usize;
        (self.stage_us[i].load(Ordering::Relaxed), self.stage_n[i].load(Ordering::Relaxed))
    }

    /// Records the served model, once (later calls are ignored).
    pub fn set_model(&self, name: &str, version: &str) {
        let _ = self.model.set((name.to_string(), version.to_string()));
    }

    /// Total failed jobs.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Prometheus text exposition, with the AWS request counters.
    pub fn render(&self, aws: &ApiCounters) -> String {
        let mut o = String::new();
        if let Some((name, version)) = self.model.get() {
            let _ = writeln!(
                o,
                "# HELP scorefleet_model_info The model this worker serves.\n# TYPE scorefleet_model_info gauge\nscorefleet_model_info{{name=\"{name}\",version=\"{version}\"}} 1"
            );
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ =
                writeln!(o, "# HELP scorefleet_{name} {help}\n# TYPE scorefleet_{name} counter\nscorefleet_{name} {v}");
        };
        counter("messages_received_total", "Messages received from the input queue.", get(&self.received));
        counter(
            "duplicates_skipped_total",
            "Jobs already finished: stored result re-sent, no inference.",
            get(&self.duplicates),
        );
        counter("busy_skipped_total", "Jobs under another worker's live lease, left alone.", get(&self.busy));
        counter(
            "redeliveries_adopted_total",
            "Redeliveries of a message in flight here: newer receipt handle adopted.",
            get(&self.adopted),
        );
        counter("jobs_succeeded_total", "Jobs scored.", get(&self.succeeded));
        counter("images_scored_total", "Images scored, over recorded jobs.", get(&self.images_scored));
        counter("images_failed_total", "Images failed, over recorded jobs.", get(&self.images_failed));
        counter("left_for_redrive_total", "Messages left to the queue's redrive policy.", get(&self.left_for_redrive));
        counter("inferences_total", "Images run through the model.", get(&self.inferences));
        counter(
            "lease_renewals_total",
            "Lease extensions (SQS visibility and DynamoDB lease).",
            get(&self.lease_renewals),
        );
        counter("leases_lost_total", "Leases lost to another worker (fenced writes refused).", get(&self.leases_lost));
        counter("leases_taken_over_total", "Expired leases of other workers taken over.", get(&self.takeovers));
        counter("results_sent_total", "Result messages sent to the output queue.", get(&self.results_sent));
        counter("messages_deleted_total", "Input messages deleted.", get(&self.deleted));
        counter(
            "dedup_lookups_total",
            "Finish-only mode: job records read by the batched lookup.",
            get(&self.dedup_lookups),
        );
        counter(
            "finishes_lost_total",
            "Finish-only mode: finishes that found an outcome stored (computed twice; stored result re-sent).",
            get(&self.finishes_lost),
        );
        let _ = writeln!(
            o,
            "# HELP scorefleet_dedup_mode The dedup mode in use (none while auto is still measuring).
# TYPE scorefleet_dedup_mode gauge"
        );
        for mode in [crate::mode::Mode::Claim, crate::mode::Mode::FinishOnly] {
            let on = u8::from(self.dedup.decided() == Some(mode));
            let _ = writeln!(o, "scorefleet_dedup_mode{{mode=\"{}\"}} {on}", mode.as_str());
        }
        let _ = writeln!(
            o,
            "# HELP scorefleet_jobs_failed_total Jobs failed, by error kind.\n# TYPE scorefleet_jobs_failed_total counter"
        );
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            let _ = writeln!(o, "scorefleet_jobs_failed_total{{kind=\"{kind}\"}} {}", get(&self.failed[i]));
        }
        let _ = writeln!(
            o,
            "# HELP scorefleet_in_flight Jobs claimed and not yet finished.\n# TYPE scorefleet_in_flight gauge\nscorefleet_in_flight {}",
            get(&self.in_flight)
        );
        let _ =
            writeln!(o, "# HELP scorefleet_batch_size Images per model batch.\n# TYPE scorefleet_batch_size histogram");
        let mut cum = 0;
        for (i, b) in BATCH_BUCKETS.iter().enumerate() {
            cum += get(&self.batch_hist[i]);
            let _ = writeln!(o, "scorefleet_batch_size_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(o, "scorefleet_batch_size_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            o,
            "scorefleet_batch_size_sum {}\nscorefleet_batch_size_count {}",
            get(&self.inferences),
            get(&self.batches)
        );
        let _ = writeln!(
            o,
            "# HELP scorefleet_stage_seconds Time spent per stage.\n# TYPE scorefleet_stage_seconds summary"
        );
        for (name, stage) in STAGES {
            let i = stage as usize;
            let _ =
                writeln!(o, "scorefleet_stage_seconds_sum{{stage=\"{name}\"}} {}", get(&self.stage_us[i]) as f64 / 1e6);
            let _ = writeln!(o, "scorefleet_stage_seconds_count{{stage=\"{name}\"}} {}", get(&self.stage_n[i]));
        }
        let _ = writeln!(
            o,
            "# HELP scorefleet_aws_requests_total AWS requests, by API.\n# TYPE scorefleet_aws_requests_total counter"
        );
        for (api, n) in aws.snapshot() {
            let _ = writeln!(o, "scorefleet_aws_requests_total{{api=\"{api}\"}} {n}");
        }
        o
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_aws_requests() {
        let m = Metrics::default();
        m.received.fetch_add(3, Ordering::Relaxed);
        m.failed(ErrorKind::Decode);
        m.batch(5);
        m.batch(1);
        let aws = ApiCounters::new();
        aws.incr("ReceiveMessage");
        let text = m.render(&aws);
        assert!(text.contains("scorefleet_messages_received_total 3\n"));
        assert!(text.contains("scorefleet_jobs_failed_total{kind=\"decode\"} 1\n"));
        assert!(text.contains("scorefleet_batch_size_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("scorefleet_batch_size_bucket{le=\"8\"} 2\n"));
        assert!(text.contains("scorefleet_batch_size_count 2\n"));
        assert!(text.contains("scorefleet_aws_requests_total{api=\"ReceiveMessage\"} 1\n"));
    }
}
