//! # scorefleet-producer
//!
//! Enqueues image-URL jobs on the fleet's input queue.
//!
//! ## Layout
//! - [`source`]: manifest files (plain lines, CSV, JSONL) and stdin, read as a
//!   stream; bad lines come out as typed, numbered errors.
//! - [`enqueue`]: builds job messages (deterministic ids) and sends them 10 per
//!   SendMessageBatch with bounded concurrency, a rate limit and retries.
//! - [`collect`]: drains the output queue into JSONL/CSV, dropping duplicate
//!   job ids, deleting only what is durably written.
//! - [`progress`]: a bar on a terminal, plain lines elsewhere.
//! - [`report`]: one self-contained HTML report from collected results.
//! - [`status`]: where a run stands (counts, throughput, ETA) for `status`.
//! - [`thumbnail`]: small inlined images of chosen jobs for the report.
#![warn(missing_docs)]

pub mod collect;
pub mod enqueue;
pub mod progress;
pub mod report;
pub mod source;
pub mod status;
pub mod thumbnail;

/// The default run id: `run-YYYY-MM-DD` in UTC, so a nightly job re-run on the
/// same day re-uses its ids (and the fleet skips what it finished).
pub fn default_run_id(now: time::OffsetDateTime) -> String {
    let d = now.date();
    format!("run-{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_run_id_is_the_utc_date() {
        let t = time::macros::datetime!(2026-11-26 23:59 UTC);
        assert_eq!(super::default_run_id(t), "run-2026-11-26");
    }
}
