//! Turning source entries into job messages and sending them, 10 per
//! SendMessageBatch, with bounded concurrency, an optional rate limit and
//! retries.
//!
//! With `images_per_job` above 1, consecutive entries are packed into jobs
//! of several images (`v: 2`): up to that many each, fewer where the body
//! would pass the worker's [`MAX_BODY_BYTES`] (long URLs, large `attrs`).

use crate::progress::Progress;
use crate::source::{Item, LineError};
use scorefleet_aws::{Backoff, retry};
use scorefleet_core::job::{Image, JobMessage, MAX_BODY_BYTES, MAX_IMAGES_PER_JOB};
use scorefleet_core::traits::{MessageSink, ServiceError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// SQS's SendMessageBatch limit.
pub const BATCH: usize = 10;
/// How many bad lines the summary lists in full.
const ERRORS_KEPT: usize = 20;
/// Whole-request retries on transient errors, on top of the adapter's
/// per-entry retries.
const REQUEST_RETRIES: u32 = 5;

/// How to enqueue.
#[derive(Debug, Clone)]
pub struct Options {
    /// The run every job belongs to; with the URL it derives the job id.
    pub run_id: String,
    /// Stop at the first bad line instead of skipping it.
    pub strict: bool,
    /// Build and count messages, send nothing.
    pub dry_run: bool,
    /// SendMessageBatch calls in flight at once.
    pub concurrency: usize,
    /// Messages per second at most, if set.
    pub rate: Option<f64>,
    /// Images packed into one job (1: one-image `v: 1` jobs); at most
    /// [`MAX_IMAGES_PER_JOB`].
    pub images_per_job: usize,
    /// This is the run's first enqueue: messages whose job id is derived
    /// from the run carry the new-run mark ([`MessageSink::send_marked`]),
    /// and finish-only workers skip their lookup on first delivery. A job id
    /// given in the source may name a job of another run, so it is not marked.
    pub new_run: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The run id used.
    pub run_id: String,
    /// Messages (jobs) accepted by the queue (or, in a dry run, that would
    /// be sent).
    pub enqueued: u64,
    /// Images in those messages.
    pub images: u64,
    /// Bad lines skipped (each reported with its line number).
    pub skipped: u64,
    /// Messages the queue refused after retries.
    pub failed: u64,
    /// Whether nothing was sent.
    pub dry_run: bool,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// The first bad lines, for the report.
    pub errors: Vec<String>,
    /// Set when `--strict` stopped the run at a bad line.
    pub aborted: Option<String>,
}

impl Summary {
    /// Whether the run should exit non-zero.
    pub fn is_failure(&self) -> bool {
        self.failed > 0 || self.aborted.is_some()
    }
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    images: AtomicU64,
    failed: AtomicU64,
}

/// A message body, the images it carries, and whether it has the new-run mark.
type Body = (String, u64, bool);

/// Consecutive images waiting to become one job.
struct Pack {
    run_id: String,
    /// Whether its jobs (ids derived from the run) carry the new-run mark.
    new_run: bool,
    per_job: usize,
    images: Vec<(u64, Image)>,
}

impl Pack {
    /// Adds an image; returns the jobs it completes (usually none, or one).
    fn push(&mut self, line: u64, image: Image) -> Vec<Body> {
        self.images.push((line, image));
        if self.images.len() < self.per_job { Vec::new() } else { self.drain(false) }
    }

    /// Builds jobs from what waits: whole jobs, or with `all` the remainder
    /// too. A job whose body would pass [`MAX_BODY_BYTES`] gives up its
    /// last images to the next one.
    fn drain(&mut self, all: bool) -> Vec<Body> {
        let mut out = Vec::new();
        while self.images.len() >= self.per_job || (all && !self.images.is_empty()) {
            let mut n = self.images.len().min(self.per_job);
            loop {
                let images: Vec<Image> = self.images[..n].iter().map(|(_, i)| i.clone()).collect();
                // Every image was validated and the run id is the run's: the
                // only refusal left is a bad count, ruled out by `n`.
                let body = JobMessage::multi(&self.run_id, images, None).map(|j| j.to_json()).unwrap_or_default();
                if body.len() <= MAX_BODY_BYTES || n == 1 {
                    out.push((body, n as u64, self.new_run));
                    break;
                }
                n -= 1;
            }
            self.images.drain(..n);
        }
        out
    }
}

/// Reads every item from `items`, sends the valid ones, and summarises.
pub async fn run<S: MessageSink>(
    sink: Arc<S>,
    mut items: mpsc::Receiver<Item>,
    opts: &Options,
    progress: &Progress,
) -> Summary {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut summary = Summary { run_id: opts.run_id.clone(), dry_run: opts.dry_run, ..Summary::default() };
    let mut chunk: Vec<Body> = Vec::with_capacity(BATCH);
    let mut built: u64 = 0;
    let per_job = opts.images_per_job.clamp(1, MAX_IMAGES_PER_JOB);
    let mut pack =
        Pack { run_id: opts.run_id.clone(), new_run: opts.new_run, per_job, images: Vec::with_capacity(per_job) };

    let record_bad = |summary: &mut Summary, e: LineError| {
        summary.skipped += 1;
        progress.warn(&format!("skipped {e}"));
        if summary.errors.len() < ERRORS_KEPT {
            summary.errors.push(e.to_string());
        }
    };

    while let Some(item) = items.recv().await {
        let bodies = if per_job == 1 {
            item.and_then(|entry| {
                let marked = opts.new_run && entry.job_id.is_none();
                entry.into_job(&opts.run_id).map(|job| vec![(job.to_json(), 1, marked)])
            })
        } else {
            item.and_then(|entry| Ok((entry.line, entry.into_image()?))).map(|(line, image)| pack.push(line, image))
        };
        let bodies = match bodies {
            Ok(bodies) => bodies,
            Err(e) => {
                if opts.strict {
                    summary.aborted = Some(e.to_string());
                    record_bad(&mut summary, e);
                    break;
                }
                record_bad(&mut summary, e);
                continue;
            }
        };
        for body in bodies {
            built += 1;
            chunk.push(body);
            if chunk.len() == BATCH {
                pace(opts.rate, built, started).await;
                dispatch(&sink, std::mem::take(&mut chunk), opts.dry_run, &permits, &counters, &mut tasks).await;
            }
        }
        progress.set(
            counters.enqueued.load(Ordering::Relaxed),
            summary.skipped,
            counters.failed.load(Ordering::Relaxed),
        );
        // Reap finished sends so the JoinSet stays small.
        while tasks.try_join_next().is_some() {}
    }
    if summary.aborted.is_none() {
        for body in pack.drain(true) {
            built += 1;
            chunk.push(body);
            if chunk.len() == BATCH {
                pace(opts.rate, built, started).await;
                dispatch(&sink, std::mem::take(&mut chunk), opts.dry_run, &permits, &counters, &mut tasks).await;
            }
        }
    }
    if !chunk.is_empty() && summary.aborted.is_none() {
        dispatch(&sink, chunk, opts.dry_run, &permits, &counters, &mut tasks).await;
    }
    while tasks.join_next().await.is_some() {}
    summary.enqueued = counters.enqueued.load(Ordering::Relaxed);
    summary.images = counters.images.load(Ordering::Relaxed);
    summary.failed = counters.failed.load(Ordering::Relaxed);
    summary.elapsed_s = started.elapsed().as_secs_f64();
    progress.set(summary.enqueued, summary.skipped, summary.failed);
    summary
}

/// Sleeps so that no more than `rate` messages per second go out.
async fn pace(rate: Option<f64>, sent: u64, started: Instant) {
    if let Some(rate) = rate.filter(|r| *r > 0.0) {
        let due = Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

async fn dispatch<S: MessageSink>(
    sink: &Arc<S>,
    chunk: Vec<Body>,
    dry_run: bool,
    permits: &Arc<Semaphore>,
    counters: &Arc<Counters>,
    tasks: &mut JoinSet<()>,
) {
    let (mut bodies, mut images, mut marks) = (Vec::new(), Vec::new(), Vec::new());
    for (body, n, marked) in chunk {
        bodies.push(body);
        images.push(n);
        marks.push(marked);
    }
    let all_images: u64 = images.iter().sum();
    if dry_run {
        counters.enqueued.fetch_add(bodies.len() as u64, Ordering::Relaxed);
        counters.images.fetch_add(all_images, Ordering::Relaxed);
        return;
    }
    // Waiting for a permit here is the backpressure that keeps memory flat:
    // the reader stops reading while `concurrency` batches are in flight.
    let Ok(permit) = permits.clone().acquire_owned().await else { return };
    let sink = sink.clone();
    let counters = counters.clone();
    tasks.spawn(async move {
        let _permit = permit;
        let n = bodies.len() as u64;
        match send_with_retry(&*sink, &bodies, &marks).await {
            Ok(failed) => {
                for f in &failed {
                    tracing::warn!(code = %f.code, message = %f.message, "message refused by the queue");
                }
                let refused: u64 = failed.iter().filter_map(|f| images.get(f.index)).sum();
                counters.failed.fetch_add(failed.len() as u64, Ordering::Relaxed);
                counters.enqueued.fetch_add(n - failed.len() as u64, Ordering::Relaxed);
                counters.images.fetch_add(all_images - refused, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "send failed after retries");
                counters.failed.fetch_add(n, Ordering::Relaxed);
            }
        }
    });
}

/// Waits between retries of a whole send: from 100 ms, doubling, at most 10 s.
const SEND_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

async fn send_with_retry<S: MessageSink>(
    sink: &S,
    bodies: &[String],
    marks: &[bool],
) -> Result<Vec<scorefleet_core::traits::EntryFailure>, ServiceError> {
    retry(
        SEND_BACKOFF,
        |e: &ServiceError, n| e.is_transient() && n < REQUEST_RETRIES,
        || sink.send_marked(bodies, marks),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Format, read_manifest};
    use scorefleet_core::job::JobId;
    use scorefleet_core::job::JobMessage;
    use scorefleet_core::traits::EntryFailure;
    use std::sync::Mutex;

    /// An in-memory sink that refuses chosen bodies, and fails the first
    /// `transient` calls as a whole.
    #[derive(Default)]
    struct Sink {
        sent: Mutex<Vec<String>>,
        /// The new-run mark of each body sent by `send_marked`, by body.
        marks: Mutex<Vec<(String, bool)>>,
        calls: AtomicU64,
        refuse: Option<String>,
        transient: u64,
    }

    impl MessageSink for Sink {
        async fn send(&self, bodies: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
            assert!(bodies.len() <= BATCH);
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.transient {
                return Err(ServiceError::Transient { op: "SendMessageBatch", message: "throttled".into() });
            }
            let mut failed = Vec::new();
            for (index, b) in bodies.iter().enumerate() {
                if self.refuse.as_deref().is_some_and(|r| b.contains(r)) {
                    failed.push(EntryFailure { index, code: "InvalidMessageContents".into(), message: "no".into() });
                } else {
                    self.sent.lock().expect("lock").push(b.clone());
                }
            }
            Ok(failed)
        }

        async fn send_marked(&self, bodies: &[String], new_run: &[bool]) -> Result<Vec<EntryFailure>, ServiceError> {
            let failed = self.send(bodies).await?;
            let mut marks = self.marks.lock().expect("lock");
            marks.extend(bodies.iter().cloned().zip(new_run.iter().copied()));
            Ok(failed)
        }
    }

    fn opts() -> Options {
        Options {
            run_id: "r1".into(),
            strict: false,
            dry_run: false,
            concurrency: 4,
            rate: None,
            images_per_job: 1,
            new_run: false,
        }
    }

    async fn go(sink: Arc<Sink>, text: &str, opts: Options) -> Summary {
        let (tx, rx) = mpsc::channel(16);
        let items: Vec<_> = read_manifest(std::io::Cursor::new(text.as_bytes().to_vec()), Format::Lines).collect();
        tokio::spawn(async move {
            for i in items {
                if tx.send(i).await.is_err() {
                    break;
                }
            }
        });
        run(sink, rx, &opts, &Progress::quiet()).await
    }

    fn manifest(n: usize) -> String {
        (0..n).map(|i| format!("s3://bkt/img-{i}.png\n")).collect()
    }

    #[tokio::test]
    async fn sends_every_line_in_batches_of_ten_with_derived_ids() {
        let sink = Arc::new(Sink::default());
        let s = go(sink.clone(), &manifest(25), opts()).await;
        assert_eq!((s.enqueued, s.skipped, s.failed), (25, 0, 0));
        assert_eq!(sink.calls.load(Ordering::SeqCst), 3);
        let sent = sink.sent.lock().expect("lock").clone();
        let mut ids: Vec<_> = sent.iter().map(|b| JobMessage::parse(b).expect("valid").job_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 25);
        let again = Arc::new(Sink::default());
        go(again.clone(), &manifest(25), opts()).await;
        let mut ids2: Vec<_> =
            again.sent.lock().expect("lock").iter().map(|b| JobMessage::parse(b).expect("valid").job_id).collect();
        ids2.sort();
        assert_eq!(ids, ids2, "re-running enqueues the same ids");
    }

    #[tokio::test]
    async fn bad_lines_are_skipped_and_counted_or_stop_the_run_under_strict() {
        let text = "s3://bkt/a\nftp://x/y\ns3://bkt/b\n";
        let s = go(Arc::new(Sink::default()), text, opts()).await;
        assert_eq!((s.enqueued, s.skipped), (2, 1));
        assert!(s.errors[0].starts_with("line 2:"), "{:?}", s.errors);
        assert!(!s.is_failure());
        let strict = Options { strict: true, ..opts() };
        let s = go(Arc::new(Sink::default()), text, strict).await;
        assert!(s.aborted.is_some());
        assert!(s.is_failure());
    }

    #[tokio::test]
    async fn refused_entries_are_failures_and_transient_errors_are_retried() {
        let sink = Arc::new(Sink { refuse: Some("img-3.png".into()), transient: 2, ..Sink::default() });
        let s = go(sink, &manifest(12), opts()).await;
        assert_eq!((s.enqueued, s.failed), (11, 1));
        assert!(s.is_failure());
    }

    #[tokio::test]
    async fn images_are_packed_into_jobs_of_n_with_stable_ids_and_the_rest_in_a_last_job() {
        let sink = Arc::new(Sink::default());
        let s = go(sink.clone(), &manifest(25), Options { images_per_job: 10, ..opts() }).await;
        assert_eq!((s.enqueued, s.images, s.skipped, s.failed), (3, 25, 0, 0));
        let sent = sink.sent.lock().expect("lock").clone();
        let jobs: Vec<JobMessage> = sent.iter().map(|b| JobMessage::parse(b).expect("valid")).collect();
        assert_eq!(jobs.iter().map(|j| j.images.len()).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert!(jobs.iter().all(|j| j.multi));
        let urls: Vec<String> = jobs.iter().flat_map(|j| j.images.iter().map(|i| i.url_raw.clone())).collect();
        assert_eq!(urls, (0..25).map(|i| format!("s3://bkt/img-{i}.png")).collect::<Vec<_>>(), "order kept");
        let again = Arc::new(Sink::default());
        go(again.clone(), &manifest(25), Options { images_per_job: 10, ..opts() }).await;
        let ids: Vec<_> = jobs.iter().map(|j| j.job_id.clone()).collect();
        let ids2: Vec<_> =
            again.sent.lock().expect("lock").iter().map(|b| JobMessage::parse(b).expect("valid").job_id).collect();
        assert_eq!(ids, ids2, "re-running with the same N enqueues the same ids");
    }

    #[tokio::test]
    async fn a_new_runs_jobs_are_marked_except_those_with_a_given_id() {
        let marks = |sink: &Sink| -> Vec<(String, bool)> {
            let mut m: Vec<(String, bool)> = sink
                .marks
                .lock()
                .expect("lock")
                .iter()
                .map(|(b, m)| (JobMessage::parse(b).expect("valid").job_id.to_string(), *m))
                .collect();
            m.sort();
            m
        };
        let text = "{\"url\":\"s3://bkt/a.png\"}\n{\"url\":\"s3://bkt/b.png\",\"job_id\":\"given\"}\n";
        let run_with = |opts: Options| async move {
            let sink = Arc::new(Sink::default());
            let (tx, rx) = mpsc::channel(16);
            for i in read_manifest(std::io::Cursor::new(text.as_bytes().to_vec()), Format::Jsonl) {
                tx.send(i).await.expect("send");
            }
            drop(tx);
            run(sink.clone(), rx, &opts, &Progress::quiet()).await;
            sink
        };
        let derived = JobId::derive("r1", "s3://bkt/a.png").to_string();
        let sink = run_with(Options { new_run: true, ..opts() }).await;
        let mut want = vec![(derived.clone(), true), ("given".to_owned(), false)];
        want.sort();
        assert_eq!(marks(&sink), want, "the derived id is marked, the given one is not");
        let sink = run_with(opts()).await;
        let mut want = vec![(derived, false), ("given".to_owned(), false)];
        want.sort();
        assert_eq!(marks(&sink), want, "not the run's first enqueue: nothing marked");
        let sink = run_with(Options { new_run: true, images_per_job: 2, ..opts() }).await;
        assert_eq!(sink.marks.lock().expect("lock").iter().filter(|(_, m)| *m).count(), 1, "a packed job is marked");
    }

    #[tokio::test]
    async fn a_job_that_would_pass_the_body_limit_holds_fewer_images() {
        // Each URL is ~2,000 bytes, so 40 of them (80 KB) cannot share a
        // 64 KiB body: the packer cuts jobs where the next image would not fit.
        let text: String = (0..40).map(|i| format!("https://example.com/{i:04}-{}\n", "k".repeat(1990))).collect();
        let sink = Arc::new(Sink::default());
        let s = go(sink.clone(), &text, Options { images_per_job: 40, ..opts() }).await;
        assert_eq!((s.images, s.skipped, s.failed), (40, 0, 0));
        let sent = sink.sent.lock().expect("lock").clone();
        assert!(sent.len() >= 2, "{} jobs", sent.len());
        assert!(sent.iter().all(|b| b.len() <= MAX_BODY_BYTES));
        let sizes: Vec<usize> = sent.iter().map(|b| JobMessage::parse(b).expect("valid").images.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes[0] > 1 && sizes[0] < 40, "{sizes:?}");
    }

    #[tokio::test]
    async fn dry_run_sends_nothing() {
        let sink = Arc::new(Sink::default());
        let s = go(sink.clone(), &manifest(15), Options { dry_run: true, ..opts() }).await;
        assert_eq!(s.enqueued, 15);
        assert_eq!(sink.calls.load(Ordering::SeqCst), 0);
    }
}
