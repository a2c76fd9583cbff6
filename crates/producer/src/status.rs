//! `status`: where a run stands — total, done, failed, remaining, in flight,
//! queued, throughput and ETA — from [`RunStatus`], which `scorefleet-aws`
//! counts by a query on the outcome table's sparse `by_run` index (exact
//! under duplicate deliveries: one item per job id, and only outcomes are in
//! it). Jobs in progress are not in the index (a claim writes no index key,
//! and finish-only workers claim nothing), so "in flight" is the input
//! queue's count of messages held by workers, when its URL is given:
//! approximate, and of every run on that queue. This module only does the
//! arithmetic and the printing, so it is tested without a service.

use scorefleet_aws::RunStatus;
use serde::Serialize;
use std::fmt::Write as _;

/// What `status` prints, text or `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The run.
    pub run_id: String,
    /// Jobs enqueued, when the producer recorded it (`enqueue --table`).
    pub total: Option<u64>,
    /// Jobs scored.
    pub completed: u64,
    /// Jobs failed for good.
    pub failed: u64,
    /// Jobs not finished: total − completed − failed (exact), when the total
    /// is known.
    pub remaining: Option<u64>,
    /// Messages held by workers on the input queue (SQS's approximate count
    /// of in-flight messages, every run on the queue), when `status` was
    /// given the queue.
    pub in_flight_messages: Option<u64>,
    /// Jobs the index shows in progress: claims by workers from before the
    /// sparse index (newer claims are not indexed).
    pub in_progress: u64,
    /// Jobs waiting: remaining − in flight (the in-flight messages when
    /// known, else the indexed claims), when the total is known.
    pub queued: Option<u64>,
    /// Finished jobs (completed + failed) per second over the run: from the
    /// first enqueue (or the first finish) to the last finish once the run is
    /// complete, to now before.
    pub images_per_s: Option<f64>,
    /// Finished jobs per second over the last minute (or since the run
    /// started, if that is shorter).
    pub images_per_s_last_minute: Option<f64>,
    /// Seconds until every job is finished at the recent rate (the run rate
    /// when nothing finished in the last minute); 0 once complete, absent
    /// while the total or a rate is unknown.
    pub eta_s: Option<f64>,
    /// Whether every enqueued job is finished.
    pub complete: bool,
    /// The first enqueue (epoch ms), when recorded.
    pub enqueued_ms: Option<u64>,
    /// The first finish (epoch ms).
    pub first_finished_ms: Option<u64>,
    /// The last finish (epoch ms).
    pub last_finished_ms: Option<u64>,
}

/// Derives the report from counted status at `now_ms`, with the input
/// queue's in-flight messages when they were read.
pub fn report(st: &RunStatus, now_ms: u64, in_flight_messages: Option<u64>) -> Report {
    let done = st.finished();
    let complete = st.total.is_some_and(|t| done >= t);
    // The run's start: the first enqueue, unless finishes predate it (a run
    // record written after workers were already busy on an earlier enqueue).
    let start = match (st.enqueued_ms, st.first_finished_ms) {
        (Some(e), Some(f)) => Some(e.min(f)),
        (e, f) => e.or(f),
    };
    let end = if complete { st.last_finished_ms.unwrap_or(now_ms) } else { now_ms };
    let per_s = |count: u64, from: u64, to: u64| {
        let secs = to.saturating_sub(from) as f64 / 1000.0;
        (secs > 0.0).then(|| round(count as f64 / secs, 2))
    };
    let images_per_s = start.and_then(|s| per_s(done, s, end)).filter(|_| done > 0);
    let images_per_s_last_minute = start.and_then(|s| {
        let window_from = now_ms.saturating_sub(scorefleet_aws::dynamo::runs::RECENT_WINDOW_MS).max(s);
        per_s(st.finished_last_minute, window_from, now_ms)
    });
    let remaining = st.total.map(|t| t.saturating_sub(done));
    let eta_s = match remaining {
        Some(0) => Some(0.0),
        Some(left) => images_per_s_last_minute
            .filter(|r| *r > 0.0)
            .or(images_per_s.filter(|r| *r > 0.0))
            // Never 0 while jobs remain: 0 means "done" to a reader (and a
            // fast emulator run rounded a few milliseconds down to it).
            .map(|rate| round(left as f64 / rate, 1).max(0.1)),
        None => None,
    };
    Report {
        run_id: st.run_id.clone(),
        total: st.total,
        completed: st.completed,
        failed: st.failed,
        remaining,
        in_flight_messages,
        in_progress: st.in_progress,
        queued: remaining.map(|left| left.saturating_sub(in_flight_messages.unwrap_or(st.in_progress))),
        images_per_s,
        images_per_s_last_minute,
        eta_s,
        complete,
        enqueued_ms: st.enqueued_ms,
        first_finished_ms: st.first_finished_ms,
        last_finished_ms: st.last_finished_ms,
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The report as a few aligned lines for people.
pub fn render(r: &Report) -> String {
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "run {}{}", r.run_id, if r.complete { " (complete)" } else { "" });
    let total = match r.total {
        Some(t) => {
            format!("{t}{}", r.enqueued_ms.map(|ms| format!("  (first enqueued {})", utc(ms))).unwrap_or_default())
        }
        None => "unknown (no run record: enqueue with --table to record one)".into(),
    };
    let _ = writeln!(out, "  total       {total}");
    let _ = writeln!(out, "  done        {}  ({} completed, {} failed)", r.completed + r.failed, r.completed, r.failed);
    let _ = writeln!(
        out,
        "  remaining   {}",
        or_unknown(r.remaining.map(|n| format!("{n}  (not finished: queued or in flight)")))
    );
    let in_flight = match (r.in_flight_messages, r.in_progress) {
        (Some(m), _) => format!("~{m}  (messages held by workers on the input queue, every run; approximate)"),
        (None, 0) => "unknown (give --input-queue-url to read the queue)".to_owned(),
        (None, n) => format!("{n}  (claimed by older workers; give --input-queue-url for the queue's count)"),
    };
    let _ = writeln!(out, "  in flight   {in_flight}");
    let _ = writeln!(out, "  queued      {}", or_unknown(r.queued.map(|q| q.to_string())));
    let _ = writeln!(
        out,
        "  throughput  {} images/s over the last minute, {} images/s over the run",
        or_unknown(r.images_per_s_last_minute.map(|x| format!("{x:.2}"))),
        or_unknown(r.images_per_s.map(|x| format!("{x:.2}")))
    );
    let _ = writeln!(out, "  ETA         {}", or_unknown(r.eta_s.map(duration)));
    out
}

/// Epoch ms as RFC 3339 UTC, or the raw number if out of range.
fn utc(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|ns| time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Seconds as `1h 02m 03s`, `2m 05s` or `7s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, sec) => format!("{h}h {m:02}m {sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn st() -> RunStatus {
        RunStatus {
            run_id: "r".into(),
            total: Some(1000),
            completed: 590,
            failed: 10,
            in_progress: 20,
            first_finished_ms: Some(NOW - 290_000),
            last_finished_ms: Some(NOW - 1_000),
            finished_last_minute: 120,
            enqueued_ms: Some(NOW - 300_000),
        }
    }

    #[test]
    fn counts_rates_and_eta_of_a_running_run() {
        let r = report(&st(), NOW, None);
        assert_eq!((r.remaining, r.queued, r.complete), (Some(400), Some(380), false));
        let with_queue = report(&st(), NOW, Some(50));
        assert_eq!((with_queue.remaining, with_queue.queued), (Some(400), Some(350)));
        assert!(render(&with_queue).contains("in flight   ~50"), "{}", render(&with_queue));
        // 600 finished in 300 s; 120 in the last 60 s.
        assert_eq!((r.images_per_s, r.images_per_s_last_minute), (Some(2.0), Some(2.0)));
        // 400 left at 2/s.
        assert_eq!(r.eta_s, Some(200.0));
        let text = render(&r);
        assert!(text.contains("queued      380"), "{text}");
        assert!(text.contains("ETA         3m 20s"), "{text}");
    }

    #[test]
    fn the_recent_rate_drives_the_eta_and_a_short_run_is_not_diluted() {
        // Started 20 s ago, 40 finished: 2/s recent over 20 s, not 40/60.
        let s = RunStatus {
            total: Some(100),
            completed: 40,
            failed: 0,
            in_progress: 5,
            finished_last_minute: 40,
            enqueued_ms: Some(NOW - 20_000),
            first_finished_ms: Some(NOW - 15_000),
            last_finished_ms: Some(NOW),
            ..st()
        };
        let r = report(&s, NOW, None);
        assert_eq!((r.images_per_s_last_minute, r.eta_s), (Some(2.0), Some(30.0)));
    }

    #[test]
    fn a_complete_run_measures_to_its_last_finish() {
        let s = RunStatus {
            completed: 990,
            failed: 10,
            in_progress: 0,
            finished_last_minute: 0,
            last_finished_ms: Some(NOW - 100_000),
            ..st()
        };
        let r = report(&s, NOW, None);
        // 1000 in the 200 s from the enqueue to the last finish, not 300 s.
        assert_eq!((r.complete, r.queued, r.eta_s, r.images_per_s), (true, Some(0), Some(0.0), Some(5.0)));
        assert!(render(&r).starts_with("run r (complete)"));
    }

    #[test]
    fn an_unknown_total_leaves_queued_and_eta_unknown() {
        let s = RunStatus { total: None, enqueued_ms: None, ..st() };
        let r = report(&s, NOW, None);
        assert_eq!((r.queued, r.eta_s, r.complete), (None, None, false));
        assert!(r.images_per_s.is_some(), "measured from the first finish");
        let json = serde_json::to_value(&r).expect("serialises");
        assert!(json["total"].is_null() && json["queued"].is_null());
        assert!(render(&r).contains("enqueue with --table"));
    }

    #[test]
    fn nothing_finished_yet_has_no_rate() {
        let s = RunStatus {
            completed: 0,
            failed: 0,
            in_progress: 3,
            finished_last_minute: 0,
            first_finished_ms: None,
            last_finished_ms: None,
            ..st()
        };
        let r = report(&s, NOW, None);
        assert_eq!((r.images_per_s, r.eta_s, r.queued), (None, None, Some(997)));
        assert_eq!(r.images_per_s_last_minute, Some(0.0));
    }

    #[test]
    fn formats_durations_and_times() {
        assert_eq!(duration(7.4), "7s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(3723.0), "1h 02m 03s");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
