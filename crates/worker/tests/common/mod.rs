//! Shared helpers for the worker's emulator tests: a uniquely named stack per
//! test, MNIST digits as PNGs in S3 with the model's offline predictions,
//! real `scorefleet-worker` processes, and draining the results queue.
//! Every test calls [`skip`] first.
#![allow(dead_code)] // each test binary uses its own subset

use aws_sdk_sqs::types::QueueAttributeName;
use scorefleet_aws::{ApiCounters, AwsConfig, DynamoOutcomeStore, Provisioned, S3Store, SqsQueue, StackSpec};
use scorefleet_core::job::{JobId, JobMessage};
use scorefleet_core::result::ResultMessage;
use scorefleet_core::traits::{JobQueue, MessageSink, Predictor, Preprocessor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[path = "../../../aws/tests/common/skip.rs"]
mod skip_impl;
pub use skip_impl::skip;

/// The emulator's configuration (call [`skip`] first).
pub async fn config() -> AwsConfig {
    assert!(!skip(), "no emulator configured");
    AwsConfig::load().await
}

/// A name no other test uses (lower case, short enough for every resource).
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("sfw-{tag}-{}-{n}-{nanos:x}", std::process::id())
}

/// One test's resources and clients.
pub struct Stack {
    pub cfg: AwsConfig,
    pub counters: Arc<ApiCounters>,
    pub res: Provisioned,
    pub input: SqsQueue,
    pub output: SqsQueue,
    pub dlq: SqsQueue,
    pub store: DynamoOutcomeStore,
    pub s3: S3Store,
    pub run_id: String,
}

/// Provisions a fresh stack whose input queue has `visibility` and moves a
/// message to the DLQ after `max_receive_count` deliveries.
pub async fn stack(tag: &str, visibility: Duration, max_receive_count: u32) -> Stack {
    let cfg = config().await;
    let counters = Arc::new(ApiCounters::new());
    let spec = StackSpec { max_receive_count, visibility_timeout: visibility, ..StackSpec::named(&unique(tag)) };
    let res = scorefleet_aws::provision(&cfg, &spec, &counters).await.expect("provision");
    Stack {
        input: SqsQueue::new(cfg.sqs(), &res.input_queue_url, counters.clone()),
        output: SqsQueue::new(cfg.sqs(), &res.output_queue_url, counters.clone()),
        dlq: SqsQueue::new(cfg.sqs(), &res.dead_letter_queue_url, counters.clone()),
        store: DynamoOutcomeStore::new(cfg.dynamodb(), &res.table, counters.clone()),
        s3: S3Store::new(cfg.s3(), counters.clone()),
        run_id: unique("run"),
        cfg,
        counters,
        res,
    }
}

impl Stack {
    /// Enqueues job bodies, 10 per call.
    pub async fn enqueue(&self, bodies: &[String]) {
        let failed = self.output_like_input().send(bodies).await.expect("send jobs");
        assert!(failed.is_empty(), "jobs refused: {failed:?}");
    }

    fn output_like_input(&self) -> SqsQueue {
        SqsQueue::new(self.cfg.sqs(), &self.res.input_queue_url, self.counters.clone())
    }

    /// A job for `s3://<bucket>/<key>`.
    pub fn job(&self, key: &str) -> JobMessage {
        JobMessage::new(&format!("s3://{}/{key}", self.res.bucket), &self.run_id, None).expect("valid job")
    }

    /// Uploads an object.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.s3.put(&self.res.bucket, key, bytes).await.expect("put object");
    }

    /// Messages visible and in flight on a queue.
    pub async fn depth(&self, url: &str) -> (u64, u64) {
        let out = self
            .cfg
            .sqs()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes");
        let attrs = out.attributes().cloned().unwrap_or_default();
        let n = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Receives results until `want` distinct job ids have arrived (or the
    /// deadline passes), deleting what it reads. Returns every result read,
    /// duplicates included.
    pub async fn results(&self, want: usize, timeout: Duration) -> Vec<ResultMessage> {
        self.more_results(Vec::new(), want, timeout).await
    }

    /// Like [`Stack::results`], counting the results already taken off the
    /// queue (`seen`) towards `want`; returns them with the new ones.
    pub async fn more_results(&self, seen: Vec<ResultMessage>, want: usize, timeout: Duration) -> Vec<ResultMessage> {
        let deadline = Instant::now() + timeout;
        let mut ids: std::collections::HashSet<String> = seen.iter().map(|r| r.job_id.clone()).collect();
        let mut all = seen;
        while ids.len() < want {
            assert!(Instant::now() < deadline, "only {} of {want} results after {timeout:?}", ids.len());
            let got = self.output.receive(10, Duration::from_secs(1)).await.expect("receive results");
            let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
            for m in got {
                let r = ResultMessage::parse(&m.body).expect("result JSON");
                ids.insert(r.job_id.clone());
                all.push(r);
            }
            if !handles.is_empty() {
                self.output.delete(&handles).await.expect("delete results");
            }
        }
        all
    }

    /// Uploads the first `n` MNIST digits under `digits/` and returns one
    /// job per image (not enqueued).
    pub async fn digit_job_messages(&self, n: usize) -> Vec<JobMessage> {
        let uploads = digits(n).into_iter().enumerate().map(|(i, png)| async move {
            let key = format!("digits/{i:05}.png");
            self.put(&key, png).await;
            self.job(&key)
        });
        futures::future::join_all(uploads).await
    }

    /// The outcome records of `ids`.
    pub async fn outcomes(&self, ids: &[JobId]) -> HashMap<JobId, scorefleet_core::lease::OutcomeRecord> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(100) {
            out.extend(self.store.get_many(chunk).await.expect("batch get"));
        }
        out
    }
}

/// The workspace root (tests run in the crate directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first `n` MNIST test digits as PNG bytes.
pub fn digits(n: usize) -> Vec<Vec<u8>> {
    let mnist = scorefleet_model::mnist::Mnist::test(&root().join("data/mnist")).expect("MNIST test set").take(n);
    (0..mnist.len())
        .map(|i| {
            let side = scorefleet_model::mnist::SIDE as u32;
            let img = image::GrayImage::from_raw(side, side, mnist.image(i).to_vec()).expect("28x28");
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("encode PNG");
            png
        })
        .collect()
}

/// The model's own top label for each image, computed in process.
pub async fn offline_labels(pngs: &[Vec<u8>]) -> Vec<String> {
    let backend = scorefleet_model::BackendKind::default_kind().expect("a backend");
    let cache = std::env::temp_dir().join(unique("cache"));
    let loaded = scorefleet_model::load_model(
        &root().join("models/digits/manifest.json"),
        None,
        &cache,
        &scorefleet_model::weights::NoFetcher,
        backend,
    )
    .await
    .expect("load model");
    let (pre, mut model) = loaded.into_parts(scorefleet_model::Limits::default());
    let inputs: Vec<_> = pngs.iter().map(|p| pre.preprocess(p).expect("preprocess")).collect();
    let mut labels = Vec::new();
    for chunk in inputs.chunks(32) {
        for row in model.predict(chunk, 1).expect("predict") {
            labels.push(row[0].label.clone());
        }
    }
    labels
}

/// A running worker process.
pub struct Worker {
    pub child: Child,
    pub port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Starts `scorefleet-worker` on the stack with `extra` flags (`--dedup
/// claim` unless they name a mode).
pub fn spawn_worker(stack: &Stack, id: &str, extra: &[&str]) -> Worker {
    spawn_worker_with_env(stack, id, extra, &[])
}

/// Like [`spawn_worker`], with environment variables set for the worker only
/// (e.g. `AWS_ENDPOINT_URL` pointing at a fault-injecting proxy while the
/// test keeps talking to the emulator directly).
pub fn spawn_worker_with_env(stack: &Stack, id: &str, extra: &[&str], env: &[(&str, &str)]) -> Worker {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_scorefleet-worker"))
        .current_dir(root())
        .args(["--input-queue-url", &stack.res.input_queue_url])
        .args(["--output-queue-url", &stack.res.output_queue_url])
        .args(["--table", &stack.res.table])
        // The bundled digits model unless the test names another.
        .args(if extra.contains(&"--model-manifest") {
            &[][..]
        } else {
            &["--model-manifest", "models/digits/manifest.json"][..]
        })
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--worker-id", id])
        .args(["--wait-seconds", "1"])
        // The claim mode unless the test names one: most tests here check
        // that a job is scored once, which finish-only does not promise for
        // copies in flight at once (its own tests pass --dedup finish-only).
        .args(if extra.contains(&"--dedup") { &[][..] } else { &["--dedup", "claim"][..] })
        .args(extra)
        .env("SCOREFLEET_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start scorefleet-worker");
    Worker { child, port }
}

impl Worker {
    /// GETs a path on the worker's HTTP port: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let status = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(Instant::now() < deadline, "worker not ready after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A counter from `/metrics` (0 when absent).
    pub async fn metric(&self, line_prefix: &str) -> u64 {
        let body = self.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse::<f64>().ok()))
            .map_or(0, |v| v as u64)
    }

    /// Sends a signal (`TERM`, `KILL`) by pid.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "worker still running after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Never leave a worker behind, whatever the test did.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads `n` digits and returns their jobs' ids, bodies and the model's
/// offline label for each.
pub async fn digit_jobs(s: &Stack, n: usize) -> (Vec<JobId>, Vec<String>, HashMap<String, String>) {
    let pngs = digits(n);
    let labels = offline_labels(&pngs).await;
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    let mut want = HashMap::new();
    let uploads = pngs.into_iter().enumerate().map(|(i, png)| async move {
        let key = format!("digits/{i:05}.png");
        s.put(&key, png).await;
        key
    });
    let keys = futures::future::join_all(uploads).await;
    for (key, label) in keys.iter().zip(labels) {
        let job = s.job(key);
        want.insert(job.job_id.to_string(), label);
        ids.push(job.job_id.clone());
        bodies.push(job.to_json());
    }
    (ids, bodies, want)
}
