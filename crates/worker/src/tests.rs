//! Pipeline tests on in-memory ports: a queue with visibility and receipt
//! handles, a sink, an outcome store driven by the core lease transitions, a
//! fetcher, a toy preprocessor and predictor.
//!
//! Real time, not tokio's paused clock: the decode pool and the inference
//! thread are real threads that paused time cannot wait for, and the
//! `test-util` feature would build a second copy of every tokio dependant.
//! Every wait is a condition polled with a generous bound, never a sleep
//! whose length the test relies on.

use crate::ctx::Ports;
use crate::fetch::Fetcher;
use crate::lease::Registry;
use crate::metrics::{Metrics, SharedMetrics};
use crate::pipeline::{DrainReport, run};
use crate::settings::Settings;
use scorefleet_aws::Backoff;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::job::{JobId, JobUrl};
use scorefleet_core::lease::{
    self, ClaimOutcome, ClaimRequest, Fence, LeaseError, OutcomeRecord, Status, Terminal, Unclaimed, UnclaimedFinish,
};
use scorefleet_core::result::{ModelRef, Prediction, ResultMessage, ResultStatus};
use scorefleet_core::traits::{
    Chw, EntryFailure, JobQueue, MessageSink, OutcomeStore, Predictor, Preprocessor, Received, ServiceError, now_ms,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Everything the fakes did, in order: `result:<job>`, `delete:<msg>`,
/// `vis:<msg>:<secs>`.
#[derive(Debug, Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().expect("log").push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("log").clone()
    }
    fn position(&self, s: &str) -> Option<usize> {
        self.all().iter().position(|e| e == s)
    }
}

#[derive(Debug)]
struct Msg {
    id: String,
    body: String,
    visible_at: Instant,
    handle: Option<String>,
    receives: u32,
    deleted: bool,
}

/// An SQS-like queue: receiving hides a message for the default visibility
/// and gives it a fresh handle; only the newest handle deletes or changes it.
/// A message whose id starts with `new-` carries the producer's new-run mark;
/// one whose id starts with `new-redelivered-` was delivered once before.
#[derive(Debug)]
struct MemQueue {
    msgs: Mutex<Vec<Msg>>,
    next: AtomicU64,
    log: Arc<Log>,
}

const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

impl MemQueue {
    fn new(log: Arc<Log>, bodies: &[(&str, String)]) -> Self {
        let now = Instant::now();
        let msgs = bodies
            .iter()
            .map(|(id, body)| Msg {
                id: (*id).to_owned(),
                body: body.clone(),
                visible_at: now,
                handle: None,
                receives: u32::from(id.starts_with("new-redelivered-")),
                deleted: false,
            })
            .collect();
        Self { msgs: Mutex::new(msgs), next: AtomicU64::new(0), log }
    }

    fn undeleted(&self) -> Vec<String> {
        self.msgs.lock().expect("q").iter().filter(|m| !m.deleted).map(|m| m.id.clone()).collect()
    }

    fn deleted(&self, id: &str) -> bool {
        self.msgs.lock().expect("q").iter().any(|m| m.id == id && m.deleted)
    }

    /// Makes a message visible again at once, as a lapsed visibility does.
    fn lapse(&self, id: &str) {
        let mut msgs = self.msgs.lock().expect("q");
        if let Some(m) = msgs.iter_mut().find(|m| m.id == id) {
            m.visible_at = Instant::now();
        }
    }

    /// Whether a message can be received right now.
    fn visible(&self, id: &str) -> bool {
        self.msgs.lock().expect("q").iter().any(|m| m.id == id && !m.deleted && m.visible_at <= Instant::now())
    }

    fn receives(&self, id: &str) -> u32 {
        self.msgs.lock().expect("q").iter().find(|m| m.id == id).map_or(0, |m| m.receives)
    }

    fn with_handle<R>(&self, handle: &str, f: impl FnOnce(&mut Msg) -> R) -> Option<R> {
        let mut msgs = self.msgs.lock().expect("q");
        msgs.iter_mut().find(|m| !m.deleted && m.handle.as_deref() == Some(handle)).map(f)
    }
}

fn invalid(index: usize) -> EntryFailure {
    EntryFailure { index, code: "ReceiptHandleIsInvalid".into(), message: "stale handle".into() }
}

impl JobQueue for MemQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, ServiceError> {
        let got: Vec<Received> = {
            let now = Instant::now();
            let mut msgs = self.msgs.lock().expect("q");
            msgs.iter_mut()
                .filter(|m| !m.deleted && m.visible_at <= now)
                .take(max)
                .map(|m| {
                    let h = format!("h{}", self.next.fetch_add(1, Ordering::Relaxed));
                    m.handle = Some(h.clone());
                    m.receives += 1;
                    m.visible_at = now + DEFAULT_VISIBILITY;
                    Received {
                        message_id: m.id.clone(),
                        receipt_handle: h,
                        body: m.body.clone(),
                        receive_count: m.receives,
                        new_run: m.id.starts_with("new-"),
                    }
                })
                .collect()
        };
        if got.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
        Ok(got)
    }

    async fn delete(&self, handles: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        let mut failed = Vec::new();
        for (i, h) in handles.iter().enumerate() {
            let log = self.log.clone();
            let done = self.with_handle(h, |m| {
                m.deleted = true;
                log.push(format!("delete:{}", m.id));
            });
            if done.is_none() {
                failed.push(invalid(i));
            }
        }
        Ok(failed)
    }

    async fn change_visibility(&self, entries: &[(String, Duration)]) -> Result<Vec<EntryFailure>, ServiceError> {
        let mut failed = Vec::new();
        for (i, (h, d)) in entries.iter().enumerate() {
            let log = self.log.clone();
            let done = self.with_handle(h, |m| {
                m.visible_at = Instant::now() + *d;
                log.push(format!("vis:{}:{}", m.id, d.as_secs()));
            });
            if done.is_none() {
                failed.push(invalid(i));
            }
        }
        Ok(failed)
    }
}

#[derive(Debug)]
struct MemSink {
    sent: Mutex<Vec<ResultMessage>>,
    log: Arc<Log>,
}

impl MessageSink for MemSink {
    async fn send(&self, bodies: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        for b in bodies {
            let r = ResultMessage::parse(b).expect("results are valid JSON");
            self.log.push(format!("result:{}", r.job_id));
            self.sent.lock().expect("sink").push(r);
        }
        Ok(Vec::new())
    }
}

impl MemSink {
    fn results(&self) -> Vec<ResultMessage> {
        self.sent.lock().expect("sink").clone()
    }
}

/// The dedup table, changed only through the core's pure transitions; each
/// claim takes the second field's time (a slow table).
#[derive(Debug, Default)]
struct MemStore(Mutex<HashMap<JobId, OutcomeRecord>>, Duration);

impl MemStore {
    fn get_now(&self, job: &str) -> Option<OutcomeRecord> {
        self.0.lock().expect("store").get(&JobId::parse(job).expect("id")).cloned()
    }
    fn put(&self, job: &str, r: OutcomeRecord) {
        self.0.lock().expect("store").insert(JobId::parse(job).expect("id"), r);
    }
    fn fenced(
        &self,
        job: &JobId,
        f: impl FnOnce(Option<&OutcomeRecord>) -> Result<OutcomeRecord, LeaseError>,
    ) -> Result<(), LeaseError> {
        let mut m = self.0.lock().expect("store");
        let next = f(m.get(job))?;
        m.insert(job.clone(), next);
        Ok(())
    }
}

impl OutcomeStore for MemStore {
    async fn claim(
        &self,
        job: &JobId,
        run_id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<ClaimOutcome, ServiceError> {
        if !self.1.is_zero() {
            tokio::time::sleep(self.1).await;
        }
        let mut m = self.0.lock().expect("store");
        let req = ClaimRequest { owner, run_id, now_ms, lease_ms, ttl_s: 86_400 };
        let (outcome, write) = lease::claim(m.get(job), &req);
        if let Some(w) = write {
            m.insert(job.clone(), w);
        }
        Ok(outcome)
    }
    async fn renew(&self, job: &JobId, fence: &Fence, until_ms: u64) -> Result<Result<(), LeaseError>, ServiceError> {
        Ok(self.fenced(job, |cur| lease::renew(cur, fence, until_ms, now_ms())))
    }
    async fn finish(
        &self,
        job: &JobId,
        fence: &Fence,
        terminal: Terminal,
        result_json: &str,
        now: u64,
    ) -> Result<Result<(), LeaseError>, ServiceError> {
        Ok(self.fenced(job, |cur| lease::finish(cur, fence, terminal, result_json, now)))
    }
    async fn release(&self, job: &JobId, fence: &Fence) -> Result<Result<(), LeaseError>, ServiceError> {
        Ok(self.fenced(job, |cur| lease::release(cur, fence, now_ms())))
    }
    async fn get(&self, job: &JobId) -> Result<Option<OutcomeRecord>, ServiceError> {
        Ok(self.0.lock().expect("store").get(job).cloned())
    }
    async fn finish_unclaimed(
        &self,
        job: &JobId,
        req: &UnclaimedFinish<'_>,
    ) -> Result<Result<(), Unclaimed>, ServiceError> {
        let mut m = self.0.lock().expect("store");
        match lease::finish_unclaimed(m.get(job), req, 86_400) {
            Ok(next) => {
                m.insert(job.clone(), next);
                Ok(Ok(()))
            }
            Err(stands) => Ok(Err(stands)),
        }
    }
    async fn lookup(&self, jobs: &[JobId]) -> Result<HashMap<JobId, OutcomeRecord>, ServiceError> {
        let m = self.0.lock().expect("store");
        Ok(jobs.iter().filter_map(|j| m.get(j).map(|r| (j.clone(), r.clone()))).collect())
    }
}

/// Serves `s3://b/<key>` from a table; `gate` (when set) holds every fetch of
/// a key starting with `slow` until a permit is added.
#[derive(Debug, Default)]
struct MemFetcher {
    objects: HashMap<String, Result<Vec<u8>, JobError>>,
    calls: AtomicU64,
    gate: Option<Arc<Semaphore>>,
}

impl Fetcher for MemFetcher {
    async fn fetch(&self, url: &JobUrl, _max: u64) -> Result<Vec<u8>, JobError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let JobUrl::S3 { key, .. } = url else { return Err(JobError::new(ErrorKind::FetchDenied, "no http here")) };
        if key.starts_with("slow")
            && let Some(g) = &self.gate
        {
            let _ = g.acquire().await.map(|p| p.forget());
        }
        self.objects.get(key).cloned().unwrap_or_else(|| Err(JobError::new(ErrorKind::FetchNotFound, key.clone())))
    }
}

/// `digit:N` → a 1×1×1 image holding N; `poison` → an image the model
/// refuses (and with it, its whole batch); anything else → `decode`.
#[derive(Debug)]
struct ToyDecoder;

impl Preprocessor for ToyDecoder {
    fn preprocess(&self, bytes: &[u8]) -> Result<Chw, JobError> {
        let s = std::str::from_utf8(bytes).map_err(|_| JobError::new(ErrorKind::Decode, "not utf-8"))?;
        if s == "poison" {
            return Ok(Chw { shape: [1, 1, 1], data: vec![f32::NAN] });
        }
        let n: f32 = s
            .strip_prefix("digit:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| JobError::new(ErrorKind::Decode, "not an image"))?;
        Ok(Chw { shape: [1, 1, 1], data: vec![n] })
    }
}

#[derive(Debug)]
struct ToyModel {
    model: ModelRef,
    inferences: Arc<AtomicU64>,
}

/// `digit:66` panics the model (a bug); `digit:77` fails with `internal`;
/// `digit:88` scores with a label of 300 KiB (a result over the limit).
const PANICS: f32 = 66.0;
const INTERNAL: f32 = 77.0;
const HUGE: f32 = 88.0;

impl Predictor for ToyModel {
    fn model(&self) -> &ModelRef {
        &self.model
    }
    fn predict(&mut self, batch: &[Chw], _k: usize) -> Result<Vec<Vec<Prediction>>, JobError> {
        if batch.iter().any(|x| x.data[0].is_nan()) {
            return Err(JobError::new(ErrorKind::Inference, "NaN input"));
        }
        if batch.iter().any(|x| x.data[0] == PANICS) {
            panic!("the toy model's bug");
        }
        if batch.iter().any(|x| x.data[0] == INTERNAL) {
            return Err(JobError::new(ErrorKind::Internal, "the toy model's internal error"));
        }
        self.inferences.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let label = |n: f32| if n == HUGE { "h".repeat(300 * 1024) } else { format!("{n}") };
        Ok(batch.iter().map(|x| vec![Prediction { label: label(x.data[0]), score: 1.0 }]).collect())
    }
}

struct Harness {
    queue: Arc<MemQueue>,
    sink: Arc<MemSink>,
    store: Arc<MemStore>,
    fetcher: Arc<MemFetcher>,
    log: Arc<Log>,
    metrics: SharedMetrics,
    inferences: Arc<AtomicU64>,
    registry: Arc<Registry>,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<DrainReport>,
}

fn settings() -> Settings {
    Settings {
        worker_id: "w1".into(),
        receivers: 1,
        wait: Duration::from_secs(1),
        fetchers: 4,
        max_batch: 4,
        max_in_flight: 0,
        infer_threads: 1,
        max_wait: Duration::from_millis(10),
        lease: Duration::from_secs(30),
        top_k: 1,
        max_bytes: 1_000,
        retries: 2,
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
        drain_timeout: Duration::from_secs(5),
        dedup: crate::mode::Policy::Fixed(crate::mode::Mode::Claim),
    }
}

fn job(id: &str, key: &str) -> (String, String) {
    (id.to_owned(), format!(r#"{{"v":1,"job_id":"{id}","url":"s3://bkt/{key}","run_id":"r"}}"#))
}

fn start(
    msgs: Vec<(String, String)>,
    objects: Vec<(&str, Result<&str, ErrorKind>)>,
    store: MemStore,
    gate: Option<Arc<Semaphore>>,
    settings: Settings,
) -> Harness {
    let log = Arc::new(Log::default());
    let bodies: Vec<(&str, String)> = msgs.iter().map(|(id, b)| (id.as_str(), b.clone())).collect();
    let queue = Arc::new(MemQueue::new(log.clone(), &bodies));
    let sink = Arc::new(MemSink { sent: Mutex::default(), log: log.clone() });
    let store = Arc::new(store);
    let objects = objects
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map(|b| b.as_bytes().to_vec()).map_err(|kind| JobError::new(kind, k))))
        .collect();
    let fetcher = Arc::new(MemFetcher { objects, calls: AtomicU64::new(0), gate });
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let inferences = Arc::new(AtomicU64::new(0));
    let model =
        ToyModel { model: ModelRef { name: "toy".into(), version: "sha256:0".into() }, inferences: inferences.clone() };
    let stop = CancellationToken::new();
    let ports = Ports {
        queue: queue.clone(),
        sink: sink.clone(),
        store: store.clone(),
        fetcher: fetcher.clone(),
        preprocessor: Arc::new(ToyDecoder),
    };
    let registry = Arc::new(Registry::default());
    let run = tokio::spawn(run(ports, model, settings, metrics.clone(), registry.clone(), stop.clone()));
    Harness { queue, sink, store, fetcher, log, metrics, inferences, registry, stop, run }
}

/// One job whose fetch waits for a permit on the returned gate.
fn one_held(id: &str, key: &str) -> (Harness, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let h = start(vec![job(id, key)], vec![(key, Ok("digit:1"))], MemStore::default(), Some(gate.clone()), settings());
    (h, gate)
}

/// Waits until `cond` holds; fails the test if it never does.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

impl Harness {
    /// Cancels the pipeline and waits for its drain.
    async fn stop(self) -> (DrainReport, Harness) {
        self.stop.cancel();
        self.joined(Duration::from_secs(60)).await
    }

    /// Waits at most `limit` for the pipeline to end (by itself, unless the
    /// caller stopped it).
    async fn joined(self, limit: Duration) -> (DrainReport, Harness) {
        let Harness { queue, sink, store, fetcher, log, metrics, inferences, registry, stop, run } = self;
        let report = tokio::time::timeout(limit, run).await.expect("the pipeline ends").expect("pipeline task");
        let done = tokio::spawn(async { DrainReport::default() });
        (report, Harness { queue, sink, store, fetcher, log, metrics, inferences, registry, stop, run: done })
    }

    fn result(&self, job: &str) -> Option<ResultMessage> {
        self.sink.results().into_iter().find(|r| r.job_id == job)
    }
}

#[tokio::test]
async fn one_bad_image_fails_only_its_own_job_and_results_precede_deletes() {
    let h = start(
        vec![job("ok1", "a"), job("bad", "b"), job("ok2", "c"), job("poison", "p"), job("gone", "g")],
        vec![("a", Ok("digit:3")), ("b", Ok("garbage")), ("c", Ok("digit:5")), ("p", Ok("poison"))],
        MemStore::default(),
        None,
        settings(),
    );
    until("every message deleted", || h.queue.undeleted().is_empty()).await;
    let label = |j: &str| h.result(j).and_then(|r| r.top().map(|p| p.label.clone()));
    let kind = |j: &str| h.result(j).and_then(|r| r.error.map(|e| e.kind));
    assert_eq!(label("ok1").as_deref(), Some("3"));
    assert_eq!(label("ok2").as_deref(), Some("5"));
    assert_eq!(kind("bad"), Some(ErrorKind::Decode));
    assert_eq!(kind("poison"), Some(ErrorKind::Inference), "the poison image fails alone");
    assert_eq!(kind("gone"), Some(ErrorKind::FetchNotFound));
    assert_eq!(h.sink.results().len(), 5, "one result per job");
    for (j, status) in [("ok1", Status::Completed), ("bad", Status::Failed), ("poison", Status::Failed)] {
        assert_eq!(h.store.get_now(j).map(|r| r.status), Some(status), "{j}");
    }
    // A message is deleted only after its result went out.
    for j in ["ok1", "bad", "ok2", "poison", "gone"] {
        let sent = h.log.position(&format!("result:{j}")).expect("result sent");
        let deleted = h.log.position(&format!("delete:{j}")).expect("deleted");
        assert!(sent < deleted, "{j}: deleted before its result was sent");
    }
    let ok = h.result("ok1").expect("ok1");
    assert_eq!((ok.status, ok.model.map(|m| m.name)), (ResultStatus::Ok, Some("toy".into())));
    let (report, h) = h.stop().await;
    assert!(report.drained);
    assert_eq!(report.fault, None);
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 0, "every job's hold released");
    assert!(h.registry.is_empty());
    // The batch wait is measured, once per image that reached a batch.
    let text = h.metrics.render(&scorefleet_aws::ApiCounters::new());
    let batch_waits = text
        .lines()
        .find_map(|l| l.strip_prefix("scorefleet_stage_seconds_count{stage=\"batch\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(batch_waits, Some(3), "ok1, ok2 and poison waited in the batcher: {text}");
}

#[tokio::test]
async fn latency_counts_from_the_receive_not_from_the_claim() {
    let slow_table = MemStore(Mutex::default(), Duration::from_millis(300));
    let h = start(vec![job("late", "a")], vec![("a", Ok("digit:1"))], slow_table, None, settings());
    until("deleted", || h.queue.deleted("late")).await;
    let latency = h.result("late").and_then(|r| r.latency_ms).expect("latency");
    assert!(latency >= 300, "latency {latency} ms leaves out the 300 ms claim");
    let _ = h.stop().await;
}

/// Waits for the pipeline to end on its own (no stop from the test).
async fn ends_by_itself(h: Harness) -> (DrainReport, Harness) {
    h.joined(Duration::from_secs(30)).await
}

#[tokio::test]
async fn a_panic_in_the_model_stops_the_pipeline_with_a_fault_and_strands_no_job() {
    // Batches of one, so the panicking job's batch holds nothing else; the
    // slow ones are still being fetched when the model panics.
    let gate = Arc::new(Semaphore::new(0));
    let s = Settings { max_batch: 1, max_wait: Duration::ZERO, ..settings() };
    let h = start(
        vec![job("first", "a"), job("bug", "b"), job("slow1", "slow-1"), job("slow2", "slow-2")],
        vec![("a", Ok("digit:1")), ("b", Ok("digit:66")), ("slow-1", Ok("digit:2")), ("slow-2", Ok("digit:3"))],
        MemStore::default(),
        Some(gate.clone()),
        s,
    );
    let (report, h) = ends_by_itself(h).await;
    let fault = report.fault.expect("a fault is reported");
    assert_eq!(fault.part, "infer");
    assert!(fault.reason.contains("the toy model's bug"), "{fault}");
    assert!(h.stop.is_cancelled(), "the root token is cancelled: readiness turns false, receives stop");
    // Every job not finished is back on the queue at once, its claim released.
    for j in h.queue.undeleted() {
        assert!(h.queue.visible(&j), "{j} returned with visibility 0");
        assert!(h.result(&j).is_none(), "{j}: no result without a delete");
        if let Some(rec) = h.store.get_now(&j) {
            assert_eq!((rec.status, rec.lease_until_ms), (Status::InProgress, 0), "{j}: claim released");
        }
    }
    assert!(h.queue.undeleted().contains(&"bug".to_owned()), "the job whose batch panicked is returned");
    let mut ids: Vec<String> = h.sink.results().into_iter().map(|r| r.job_id).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "nothing scored twice");
    assert!(h.registry.is_empty());
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 0, "every hold released, the dropped ones too");
}

#[tokio::test]
async fn a_poisoned_registry_lock_stops_the_pipeline_with_a_fault() {
    let (h, gate) = one_held("held", "slow-a");
    until("claimed", || h.registry.len() == 1).await;
    h.registry.poison();
    // The next lock (any stage's) finds it poisoned.
    let _ = h.registry.len();
    gate.add_permits(10);
    let (report, h) = ends_by_itself(h).await;
    assert_eq!(report.fault.map(|f| f.part), Some("registry"));
    assert!(h.stop.is_cancelled());
}

/// A job of several images (`v: 2`) over `keys`.
fn multi(id: &str, keys: &[&str]) -> (String, String) {
    let images: Vec<String> =
        keys.iter().map(|k| format!(r#"{{"url":"s3://bkt/{k}","attrs":{{"k":"{k}"}}}}"#)).collect();
    (id.to_owned(), format!(r#"{{"v":2,"job_id":"{id}","run_id":"r","images":[{}]}}"#, images.join(",")))
}

#[tokio::test]
async fn a_job_of_several_images_answers_each_and_a_poison_image_fails_only_itself() {
    // max_batch 4: the seven scorable images of these jobs go through the
    // model in batches that mix jobs, and the poison one fails its batch.
    let h = start(
        vec![
            multi("m1", &["a", "b", "p", "gone", "c"]),
            multi("m2", &["d", "e", "f"]),
            multi("m3", &["b", "gone"]),
            job("one", "a"),
        ],
        vec![
            ("a", Ok("digit:1")),
            ("b", Ok("garbage")),
            ("c", Ok("digit:3")),
            ("d", Ok("digit:4")),
            ("e", Ok("digit:5")),
            ("f", Ok("digit:6")),
            ("p", Ok("poison")),
        ],
        MemStore::default(),
        None,
        settings(),
    );
    until("every message deleted", || h.queue.undeleted().is_empty()).await;
    let m1 = h.result("m1").expect("m1");
    assert_eq!((m1.v, m1.status, m1.error.as_ref()), (2, ResultStatus::Ok, None));
    let per_image: Vec<(String, Option<String>, Option<ErrorKind>)> = m1
        .images
        .iter()
        .map(|i| (i.url.clone(), i.top_k.first().map(|p| p.label.clone()), i.error.as_ref().map(|e| e.kind)))
        .collect();
    assert_eq!(
        per_image,
        vec![
            ("s3://bkt/a".into(), Some("1".into()), None),
            ("s3://bkt/b".into(), None, Some(ErrorKind::Decode)),
            ("s3://bkt/p".into(), None, Some(ErrorKind::Inference)),
            ("s3://bkt/gone".into(), None, Some(ErrorKind::FetchNotFound)),
            ("s3://bkt/c".into(), Some("3".into()), None),
        ]
    );
    assert_eq!(m1.images[3].attrs.as_ref().and_then(|a| a.get("k")), Some(&serde_json::json!("gone")));
    let m2 = h.result("m2").expect("m2");
    let labels: Vec<_> = m2.images.iter().map(|i| i.top_k.first().map(|p| p.label.clone())).collect();
    assert_eq!(labels, vec![Some("4".into()), Some("5".into()), Some("6".into())]);
    let m3 = h.result("m3").expect("m3");
    assert_eq!((m3.status, m3.error.as_ref().map(|e| e.kind)), (ResultStatus::Error, Some(ErrorKind::Decode)));
    let one = h.result("one").expect("one");
    assert_eq!((one.v, one.top().map(|p| p.label.as_str())), (1, Some("1")), "a v1 job keeps the v1 result");
    for (j, status) in [("m1", Status::Completed), ("m2", Status::Completed), ("m3", Status::Failed)] {
        assert_eq!(h.store.get_now(j).map(|r| r.status), Some(status), "{j}");
    }
    assert_eq!(h.sink.results().len(), 4, "one result per job");
    assert_eq!(h.inferences.load(Ordering::Relaxed), 6, "a, c, d, e, f and the v1 job's a scored");
    assert_eq!(h.metrics.images_scored.load(Ordering::Relaxed), 6);
    assert_eq!(h.metrics.images_failed.load(Ordering::Relaxed), 5);
    let (report, h) = h.stop().await;
    assert!(report.drained);
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_result_over_the_message_limit_is_answered_with_too_large_not_left_to_the_dlq() {
    let h = start(
        vec![multi("mh", &["a", "h", "c"]), job("oh", "h")],
        vec![("a", Ok("digit:1")), ("h", Ok("digit:88")), ("c", Ok("digit:3"))],
        MemStore::default(),
        None,
        settings(),
    );
    until("every message deleted", || h.queue.undeleted().is_empty()).await;
    let results = h.sink.results();
    assert_eq!(results.len(), 2, "one result per job");
    assert!(results.iter().all(|r| r.to_json().len() <= scorefleet_core::result::MAX_RESULT_BYTES));
    let mh = h.result("mh").expect("mh");
    let per_image: Vec<_> = mh
        .images
        .iter()
        .map(|i| (i.top_k.first().map(|p| p.label.clone()), i.error.as_ref().map(|e| e.kind)))
        .collect();
    assert_eq!(
        per_image,
        vec![(Some("1".into()), None), (None, Some(ErrorKind::TooLarge)), (Some("3".into()), None)],
        "only the oversized image loses its scores"
    );
    assert_eq!(mh.images[1].attrs.as_ref().and_then(|a| a.get("k")), Some(&serde_json::json!("h")));
    let oh = h.result("oh").expect("oh");
    assert_eq!((oh.status, oh.error.as_ref().map(|e| e.kind)), (ResultStatus::Error, Some(ErrorKind::TooLarge)));
    assert_eq!(h.store.get_now("mh").map(|r| r.status), Some(Status::Completed));
    assert_eq!(h.store.get_now("oh").map(|r| r.status), Some(Status::Failed), "stored as failed, like its result");
    assert_eq!(h.metrics.images_failed.load(Ordering::Relaxed), 2);
    let (report, _) = h.stop().await;
    assert!(report.drained);
}

#[tokio::test]
async fn a_retryable_error_on_one_image_returns_the_whole_job_for_redelivery() {
    let h = start(
        vec![multi("mi", &["a", "i"])],
        vec![("a", Ok("digit:1")), ("i", Ok("digit:77"))],
        MemStore::default(),
        None,
        settings(),
    );
    until("left for redelivery", || h.metrics.left_for_redrive.load(Ordering::Relaxed) >= 1).await;
    let (_, h) = h.stop().await;
    assert!(h.result("mi").is_none(), "no result while an image may still succeed");
    assert!(!h.queue.deleted("mi"));
    let rec = h.store.get_now("mi").expect("record");
    assert_eq!((rec.status, rec.lease_until_ms), (Status::InProgress, 0), "claim released for the next try");
}

#[tokio::test]
async fn an_internal_error_is_retryable_so_it_is_left_for_redelivery_not_recorded() {
    let h = start(vec![job("int", "i")], vec![("i", Ok("digit:77"))], MemStore::default(), None, settings());
    until("left for redelivery", || h.metrics.left_for_redrive.load(Ordering::Relaxed) >= 1).await;
    let (_, h) = h.stop().await;
    assert!(h.result("int").is_none(), "no final error result for a retryable kind");
    assert!(!h.queue.deleted("int"));
    let rec = h.store.get_now("int").expect("record");
    assert_eq!((rec.status, rec.lease_until_ms), (Status::InProgress, 0), "claim released for the next try");
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 0);
}

/// `job`'s record as worker `w0` finished it: COMPLETED, label 4.
fn finished_by_w0(job: &str) -> OutcomeRecord {
    let stored = format!(
        r#"{{"v":1,"job_id":"{job}","run_id":"r","url":"s3://bkt/a","status":"ok","top_k":[{{"label":"4","score":0.9}}],"attempts":1,"worker":"w0","completed_at":"2026-01-01T00:00:00Z"}}"#
    );
    OutcomeRecord {
        status: Status::Completed,
        owner: "w0".into(),
        attempt: 1,
        lease_until_ms: 0,
        result: Some(stored),
        run_id: "r".into(),
        expires_at_s: now_ms() / 1000 + 3600,
    }
}

#[tokio::test]
async fn finished_duplicates_are_resent_and_deleted_without_inference() {
    let store = MemStore::default();
    store.put("d1", finished_by_w0("d1"));
    let h = start(vec![job("d1", "a")], vec![("a", Ok("digit:1"))], store, None, settings());
    until("duplicate deleted", || h.queue.deleted("d1")).await;
    let r = h.result("d1").expect("stored result re-sent");
    assert_eq!((r.worker.as_str(), r.top().map(|p| p.label.as_str())), ("w0", Some("4")));
    assert_eq!(h.inferences.load(Ordering::Relaxed), 0);
    assert_eq!(h.fetcher.calls.load(Ordering::Relaxed), 0);
    assert_eq!(h.metrics.duplicates.load(Ordering::Relaxed), 1);
    let _ = h.stop().await;
}

#[tokio::test]
async fn a_job_under_another_live_lease_is_left_alone() {
    let store = MemStore::default();
    let held = OutcomeRecord {
        status: Status::InProgress,
        owner: "w-other".into(),
        attempt: 1,
        lease_until_ms: now_ms() + 3_600_000,
        result: None,
        run_id: "r".into(),
        expires_at_s: now_ms() / 1000 + 7200,
    };
    store.put("b1", held.clone());
    let h = start(vec![job("b1", "a")], vec![("a", Ok("digit:1"))], store, None, settings());
    until("busy seen", || h.metrics.busy.load(Ordering::Relaxed) >= 1).await;
    let (_, h) = h.stop().await;
    assert!(!h.queue.deleted("b1"), "not ours to delete");
    assert!(h.sink.results().is_empty());
    assert_eq!(h.store.get_now("b1"), Some(held), "record untouched");
    assert_eq!(h.fetcher.calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn shutdown_returns_unstarted_jobs_at_once_and_releases_their_claims() {
    let gate = Arc::new(Semaphore::new(0));
    let s = Settings { fetchers: 1, ..settings() };
    let h = start(
        vec![job("first", "slow-a"), job("second", "b"), job("third", "c")],
        vec![("slow-a", Ok("digit:1")), ("b", Ok("digit:2")), ("c", Ok("digit:3"))],
        MemStore::default(),
        Some(gate.clone()),
        s,
    );
    until("all three claimed", || {
        ["first", "second", "third"].iter().all(|j| h.store.get_now(j).is_some_and(|r| r.status == Status::InProgress))
    })
    .await;
    h.stop.cancel();
    // The started job may finish during the drain.
    gate.add_permits(1);
    let (report, h) = h.stop().await;
    assert!(report.drained);
    assert_eq!(h.result("first").and_then(|r| r.top().map(|p| p.label.clone())).as_deref(), Some("1"));
    assert!(h.queue.deleted("first"));
    for j in ["second", "third"] {
        assert!(h.log.position(&format!("vis:{j}:0")).is_some(), "{j} returned with visibility 0");
        assert!(!h.queue.deleted(j));
        assert!(h.result(j).is_none());
        let rec = h.store.get_now(j).expect("record");
        assert_eq!((rec.status, rec.lease_until_ms), (Status::InProgress, 0), "{j}: claim released");
    }
}

#[tokio::test]
async fn broken_messages_get_a_typed_result_when_they_name_a_job_and_are_left_otherwise() {
    let h = start(
        vec![
            ("m1".into(), r#"{"v":9,"job_id":"named"}"#.into()),
            ("m2".into(), "not json at all".into()),
            ("m3".into(), r#"{"v":1,"job_id":"ftp","url":"ftp://x/y","run_id":"r"}"#.into()),
        ],
        vec![],
        MemStore::default(),
        None,
        settings(),
    );
    until("named ones answered", || h.queue.deleted("m1") && h.queue.deleted("m3")).await;
    assert_eq!(h.result("named").and_then(|r| r.error).map(|e| e.kind), Some(ErrorKind::InvalidMessage));
    assert_eq!(h.result("ftp").and_then(|r| r.error).map(|e| e.kind), Some(ErrorKind::InvalidMessage));
    until("nameless one left for the DLQ", || h.metrics.left_for_redrive.load(Ordering::Relaxed) >= 1).await;
    let (_, h) = h.stop().await;
    assert!(!h.queue.deleted("m2"), "no job id: left to the redrive policy");
    assert_eq!(h.sink.results().len(), 2);
}

#[tokio::test]
async fn transient_failures_retry_then_leave_the_message_and_release_the_claim() {
    let h =
        start(vec![job("flaky", "f")], vec![("f", Err(ErrorKind::FetchFailed))], MemStore::default(), None, settings());
    until("left for redelivery", || h.metrics.left_for_redrive.load(Ordering::Relaxed) >= 1).await;
    let (_, h) = h.stop().await;
    assert!(h.fetcher.calls.load(Ordering::Relaxed) >= 3, "first try plus two retries");
    assert!(!h.queue.deleted("flaky"));
    assert!(h.result("flaky").is_none());
    let rec = h.store.get_now("flaky").expect("record");
    assert_eq!((rec.status, rec.lease_until_ms), (Status::InProgress, 0), "claim released for the next try");
}

#[tokio::test]
async fn a_job_whose_lease_was_taken_over_is_abandoned_not_finished() {
    let (h, gate) = one_held("stolen", "slow-s");
    until("claimed", || h.store.get_now("stolen").is_some()).await;
    // Another worker takes the job over (as after a long stall of ours).
    let mut rec = h.store.get_now("stolen").expect("record");
    rec.owner = "w2".into();
    rec.attempt += 1;
    h.store.put("stolen", rec.clone());
    // The keeper's next pass (run here directly rather than waiting a
    // quarter lease) finds the lease lost.
    crate::lease::renew_due(&*h.queue, &*h.store, &h.registry, &h.metrics, Duration::from_secs(3600)).await;
    assert_eq!(h.metrics.leases_lost.load(Ordering::Relaxed), 1);
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, h) = h.stop().await;
    assert_eq!(h.store.get_now("stolen"), Some(rec), "the new owner's record stands");
    assert!(h.result("stolen").is_none());
    assert!(!h.queue.deleted("stolen"));
}

#[test]
fn two_deliveries_of_one_message_in_a_receive_become_one() {
    let d = |h: &str, id: &str| Received {
        message_id: id.into(),
        receipt_handle: h.into(),
        body: String::new(),
        receive_count: 1,
        new_run: false,
    };
    let out = crate::dedup::distinct_deliveries(vec![d("h1", "m1"), d("h2", "m2"), d("h3", "m1")]);
    let handles: Vec<&str> = out.iter().map(|r| r.receipt_handle.as_str()).collect();
    assert_eq!(handles, ["h3", "h2"], "the newer handle of m1 wins, in place");
}

#[test]
fn a_redelivery_of_an_in_flight_message_refreshes_its_handle_but_a_duplicate_send_does_not() {
    let reg = Registry::default();
    let id = JobId::parse("j").expect("id");
    let key = reg.insert(crate::lease::InFlight {
        job_id: id.clone(),
        message_id: "m1".into(),
        receipt: "old".into(),
        fence: Fence { owner: "w1".into(), attempt: 1 },
        lease_until_ms: u64::MAX,
    });
    assert!(!reg.refresh_receipt(&id, "m2", "other"), "another message for the same job is separate");
    assert!(reg.refresh_receipt(&id, "m1", "new"));
    assert_eq!(reg.remove(key).map(|j| j.receipt).as_deref(), Some("new"));
}

#[tokio::test]
async fn receiving_pauses_at_the_in_flight_limit_and_resumes_as_jobs_finish() {
    let gate = Arc::new(Semaphore::new(0));
    let s = Settings { max_in_flight: 5, ..settings() };
    let msgs: Vec<(String, String)> = (0..60).map(|i| job(&format!("j{i}"), "slow-a")).collect();
    let h = start(msgs, vec![("slow-a", Ok("digit:1"))], MemStore::default(), Some(gate.clone()), s);
    until("the limit reached", || h.registry.len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One receive of up to 10 may be on its way to the claims when the limit
    // is reached; nothing beyond that.
    assert!(h.registry.len() <= 5 + 10, "held {}", h.registry.len());
    assert!(h.metrics.received.load(Ordering::Relaxed) <= 5 + 10, "receiving paused");
    gate.add_permits(1_000);
    until("every message deleted", || h.queue.undeleted().is_empty()).await;
    assert_eq!(h.sink.results().len(), 60, "one result per job");
}

/// Where a lease ends against `now`: (lower, upper) bounds for a write made
/// between `before` and `after` with the lease ending a margin early.
fn lease_window(before: u64, after: u64, lease: Duration) -> (u64, u64) {
    let early = lease.as_millis() as u64 - crate::lease::margin(lease).as_millis() as u64;
    (before + early, after + early)
}

#[tokio::test]
async fn a_claimed_lease_ends_a_margin_before_the_visibility_that_started_at_the_receive() {
    let gate = Arc::new(Semaphore::new(0));
    let s = settings();
    let before = now_ms();
    let h = start(
        vec![job("m1", "slow-a")],
        vec![("slow-a", Ok("digit:1"))],
        MemStore::default(),
        Some(gate.clone()),
        s.clone(),
    );
    until("claimed", || h.registry.len() == 1).await;
    let after = now_ms();
    let rec = h.store.get_now("m1").expect("claim record");
    let (lo, hi) = lease_window(before, after, s.lease);
    // Without the margin the lease would end a whole lease after the claim,
    // later than the message's visibility (a lease after the receive).
    assert!((lo..=hi).contains(&rec.lease_until_ms), "lease ends {} not in {lo}..={hi}", rec.lease_until_ms);
    let held = h.registry.due(u64::MAX);
    assert_eq!(
        held.first().map(|(_, j)| j.lease_until_ms),
        Some(rec.lease_until_ms),
        "the keeper works to the same end"
    );
    gate.add_permits(1);
    until("finished", || h.queue.undeleted().is_empty()).await;
    let _ = h.stop().await;
}

#[tokio::test]
async fn the_keeper_extends_the_visibility_by_a_lease_and_the_lease_to_a_margin_less() {
    let log = Arc::new(Log::default());
    let queue = MemQueue::new(log.clone(), &[("k1", "{}".to_owned())]);
    let store = MemStore::default();
    let lease = Duration::from_secs(30);
    let got = queue.receive(1, Duration::ZERO).await.expect("receive");
    let id = JobId::parse("k1").expect("id");
    let ClaimOutcome::Claimed(fence) = store.claim(&id, "r", "w1", now_ms(), 1_000).await.expect("claim") else {
        panic!("a fresh job is claimed")
    };
    let registry = Registry::default();
    registry.insert(crate::lease::InFlight {
        job_id: id,
        message_id: "k1".into(),
        receipt: got[0].receipt_handle.clone(),
        fence,
        lease_until_ms: now_ms() + 1_000,
    });
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    let before = now_ms();
    crate::lease::renew_due(&queue, &store, &registry, &metrics, lease).await;
    let after = now_ms();
    assert!(log.all().contains(&"vis:k1:30".to_owned()), "visibility extended by a lease: {:?}", log.all());
    let (lo, hi) = lease_window(before, after, lease);
    let until = store.get_now("k1").expect("record").lease_until_ms;
    assert!((lo..=hi).contains(&until), "lease ends {until} not in {lo}..={hi}");
    assert_eq!(metrics.lease_renewals.load(Ordering::Relaxed), 1);
}

/// Feeds `InFlightLimit` one sample a second at `per_s` jobs a second;
/// returns the limit after each.
fn limits(limit: &mut crate::receive::InFlightLimit, start: std::time::Instant, per_s: &[u64]) -> Vec<usize> {
    let mut done = 0;
    per_s
        .iter()
        .enumerate()
        .map(|(i, n)| {
            done += n;
            limit.update(done, start + Duration::from_secs(i as u64 + 1))
        })
        .collect()
}

#[test]
fn the_in_flight_limit_follows_the_measured_rate_within_a_receive_and_the_ceiling() {
    let start = std::time::Instant::now();
    // Lease 10 s: a quarter is 2.5 s of work. Batch 32, ceiling 128.
    let s = Settings { lease: Duration::from_secs(10), max_batch: 32, ..settings() };
    let mut slow = crate::receive::InFlightLimit::new(&s, 0, start);
    assert_eq!(slow.update(0, start), 32, "one model batch before anything is measured");
    // 2 jobs/s (an emulator, a large model): 5 jobs in 2.5 s, floored at one receive.
    assert_eq!(limits(&mut slow, start, &[2; 6]).last(), Some(&10));

    // 200 jobs/s: 500 in 2.5 s, capped at 128, reached by growing at most
    // by half per sample.
    let mut fast = crate::receive::InFlightLimit::new(&s, 0, start);
    assert_eq!(limits(&mut fast, start, &[200; 5]), vec![49, 74, 112, 128, 128]);

    // 20 jobs/s: 50 in 2.5 s. One sample of 1,000 does not throw it to the
    // ceiling, and samples within the same second are not taken.
    let mut steady = crate::receive::InFlightLimit::new(&s, 0, start);
    let l = limits(&mut steady, start, &[20, 20, 20, 20, 20, 20, 20, 20, 20, 20]);
    assert_eq!(l.last(), Some(&50));
    assert_eq!(steady.update(1_200, start + Duration::from_millis(10_500)), 50, "half a second: no sample");
    let after_spike = steady.update(1_200, start + Duration::from_secs(11));
    assert!(after_spike <= 76, "a spike moves the limit by at most half: {after_spike}");

    // An explicit --max-in-flight is the ceiling; the floor never exceeds it.
    let tight = Settings { max_in_flight: 5, ..s };
    let mut t = crate::receive::InFlightLimit::new(&tight, 0, start);
    assert_eq!(limits(&mut t, start, &[0, 0, 100, 100]), vec![5, 5, 5, 5]);
}

#[tokio::test]
async fn our_own_job_redelivered_after_our_lease_ran_out_is_adopted_not_scored_again() {
    let (h, gate) = one_held("own", "slow-a");
    until("claimed and fetching", || h.fetcher.calls.load(Ordering::Relaxed) == 1).await;
    // The keeper's renewals failed: our lease ran out (it ends before the
    // visibility), then the visibility lapsed and the message came back.
    let mut rec = h.store.get_now("own").expect("claim record");
    rec.lease_until_ms = now_ms().saturating_sub(1);
    h.store.put("own", rec.clone());
    h.queue.lapse("own");
    until("received again", || h.queue.receives("own") == 2).await;
    until("seen as our own", || h.metrics.adopted.load(Ordering::Relaxed) == 1).await;
    assert_eq!(h.metrics.busy.load(Ordering::Relaxed), 0, "an adoption is not a busy lease");
    assert_eq!(h.store.get_now("own").map(|r| r.attempt), Some(rec.attempt), "not taken over from ourselves");
    gate.add_permits(10);
    until("deleted with the newer handle", || h.queue.deleted("own")).await;
    assert_eq!(h.inferences.load(Ordering::Relaxed), 1, "scored once");
    assert_eq!(h.fetcher.calls.load(Ordering::Relaxed), 1, "fetched once");
    assert_eq!(h.metrics.leases_lost.load(Ordering::Relaxed), 0);
    assert_eq!(h.sink.results().len(), 1);
    let _ = h.stop().await;
}

fn finish_only() -> Settings {
    Settings { dedup: crate::mode::Policy::Fixed(crate::mode::Mode::FinishOnly), ..settings() }
}

#[tokio::test]
async fn finish_only_a_duplicate_in_flight_is_stored_once_and_the_loser_resends_the_stored_result() {
    // Two sends of one job (two messages), received together, both computed:
    // the first finish stores the outcome, the second finds it and re-sends it.
    let (_, body) = job("dup", "a");
    let h = start(
        vec![("m1".into(), body.clone()), ("m2".into(), body)],
        vec![("a", Ok("digit:7"))],
        MemStore::default(),
        None,
        finish_only(),
    );
    until("both messages deleted", || h.queue.deleted("m1") && h.queue.deleted("m2")).await;
    let rec = h.store.get_now("dup").expect("one record");
    assert_eq!((rec.status, rec.attempt, rec.owner.as_str()), (Status::Completed, 1, "w1"));
    let sent: Vec<String> = h.sink.results().into_iter().filter(|r| r.job_id == "dup").map(|r| r.to_json()).collect();
    assert_eq!(sent.len(), 2, "each delivery answered");
    let stored = ResultMessage::parse(rec.result.as_deref().expect("stored result")).expect("json").to_json();
    assert!(sent.iter().all(|s| *s == stored), "both sends are the stored result: {sent:?}");
    assert_eq!(h.inferences.load(Ordering::Relaxed), 2, "a duplicate in flight is computed twice");
    assert_eq!(h.metrics.finishes_lost.load(Ordering::Relaxed), 1);
    assert_eq!(h.metrics.dedup_lookups.load(Ordering::Relaxed), 2);
    let (report, h) = h.stop().await;
    assert!(report.drained);
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn finish_only_skips_finished_jobs_by_the_lookup_and_leaves_a_live_claim_alone() {
    let store = MemStore::default();
    let done = finished_by_w0("d1");
    store.put("d1", done.clone());
    let held = OutcomeRecord {
        status: Status::InProgress,
        owner: "w-claim".into(),
        lease_until_ms: now_ms() + 3_600_000,
        result: None,
        ..done.clone()
    };
    store.put("b1", held.clone());
    let h = start(
        vec![job("d1", "a"), job("b1", "a"), job("n1", "a")],
        vec![("a", Ok("digit:1"))],
        store,
        None,
        finish_only(),
    );
    until("done and new deleted", || h.queue.deleted("d1") && h.queue.deleted("n1")).await;
    until("busy seen", || h.metrics.busy.load(Ordering::Relaxed) >= 1).await;
    assert_eq!(h.result("d1").map(|r| r.worker), Some("w0".into()), "the stored result re-sent");
    assert_eq!(h.store.get_now("d1"), Some(done), "a finished record is not written again");
    assert_eq!(h.inferences.load(Ordering::Relaxed), 1, "only the new job is computed");
    let n1 = h.store.get_now("n1").expect("the new job's outcome");
    assert_eq!((n1.status, n1.attempt, n1.lease_until_ms), (Status::Completed, 1, 0), "one write, no lease");
    let (_, h) = h.stop().await;
    assert!(!h.queue.deleted("b1"), "a live claim's job is not ours");
    assert_eq!(h.store.get_now("b1"), Some(held), "the live claim untouched");
}

#[tokio::test]
async fn finish_only_skips_the_lookup_of_a_new_runs_first_delivery_and_the_finish_still_decides() {
    // d1 and d2 are finished already: d1 by a second send of its message
    // (marked, first delivery: computed, the finish finds the outcome), d2
    // redelivered (marked, looked up, so not computed).
    let store = MemStore::default();
    store.put("d1", finished_by_w0("d1"));
    store.put("d2", finished_by_w0("d2"));
    let h = start(
        vec![
            ("new-a".into(), job("a1", "a").1),
            ("new-d".into(), job("d1", "a").1),
            ("new-redelivered-d".into(), job("d2", "a").1),
            ("old".into(), job("o1", "a").1),
        ],
        vec![("a", Ok("digit:1"))],
        store,
        None,
        finish_only(),
    );
    until("every message deleted", || h.queue.undeleted().is_empty()).await;
    assert_eq!(h.metrics.dedup_lookups.load(Ordering::Relaxed), 2, "only the redelivery and the unmarked job");
    assert_eq!(h.inferences.load(Ordering::Relaxed), 3, "a1, o1 and the marked duplicate d1");
    assert_eq!(h.metrics.finishes_lost.load(Ordering::Relaxed), 1, "d1's finish found its outcome");
    for j in ["d1", "d2"] {
        assert_eq!(h.result(j).map(|r| r.worker), Some("w0".into()), "{j}: the stored result re-sent");
        let stored = h.store.get_now(j).map(|r| (r.status, r.owner));
        assert_eq!(stored, Some((Status::Completed, "w0".into())), "{j}: the stored outcome stands");
    }
    for j in ["a1", "o1"] {
        assert_eq!(h.store.get_now(j).map(|r| r.status), Some(Status::Completed), "{j}");
    }
    let (report, _) = h.stop().await;
    assert!(report.drained);
}

#[tokio::test]
async fn the_keeper_extends_an_unclaimed_jobs_visibility_without_a_table_write() {
    let log = Arc::new(Log::default());
    let queue = MemQueue::new(log.clone(), &[("u1", "{}".to_owned())]);
    let store = MemStore::default();
    let got = queue.receive(1, Duration::ZERO).await.expect("receive");
    let registry = Registry::default();
    registry.insert(crate::lease::InFlight {
        job_id: JobId::parse("u1").expect("id"),
        message_id: "u1".into(),
        receipt: got[0].receipt_handle.clone(),
        fence: Fence::unclaimed("w1"),
        lease_until_ms: now_ms() + 1_000,
    });
    let metrics: SharedMetrics = Arc::new(Metrics::default());
    crate::lease::renew_due(&queue, &store, &registry, &metrics, Duration::from_secs(30)).await;
    assert!(log.all().contains(&"vis:u1:30".to_owned()), "visibility extended: {:?}", log.all());
    assert_eq!(store.get_now("u1"), None, "no lease in the table to renew");
    assert_eq!(metrics.lease_renewals.load(Ordering::Relaxed), 1);
    assert!(registry.due(now_ms() + 10_000).is_empty(), "the next extension is due a lease later");
}
