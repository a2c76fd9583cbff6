//! Shared helpers for the emulator tests: configuration from the stack's
//! environment, uniquely named resources (so tests run in parallel), polling
//! with deadlines, and clean-up.
//!
//! Clean-up runs at the end of a passing test; a failing test leaves its
//! resources behind for inspection (the emulator is thrown away after the run).
#![allow(dead_code)] // each test binary uses its own subset

use aws_sdk_sqs::types::QueueAttributeName;
use scorefleet_aws::{ApiCounters, AwsConfig, SqsQueue};
use scorefleet_core::traits::{JobQueue, Received};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod skip;
pub use skip::skip;

/// Configuration for a test, or a failure that says how to get one: these
/// tests must never pass by skipping.
pub async fn config() -> AwsConfig {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => {}
        _ => panic!(
            "AWS_ENDPOINT_URL is not set: these tests need the local AWS emulator. Run `make test` \
             (or `scripts/with-stack.sh cargo nextest run -p scorefleet-aws`)."
        ),
    }
    AwsConfig::load().await
}

/// Fresh counters for one test.
pub fn counters() -> Arc<ApiCounters> {
    Arc::new(ApiCounters::new())
}

/// Which emulator is running (`ministack` or `moto`), as scripts/stack.sh
/// exports it.
pub fn emulator() -> String {
    std::env::var("SCOREFLEET_EMULATOR").unwrap_or_else(|_| "ministack".into())
}

/// A name no other test (or earlier run against the same emulator) uses:
/// lower case, at most 50 characters, valid for queues, tables and buckets.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(20).collect::<String>().to_lowercase();
    format!("sf-{tag}-{}-{n}-{nanos:x}", std::process::id())
}

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain queue with the given visibility timeout.
pub async fn queue(cfg: &AwsConfig, tag: &str, visibility: Duration, counters: &Arc<ApiCounters>) -> SqsQueue {
    let attrs = HashMap::from([(QueueAttributeName::VisibilityTimeout, visibility.as_secs().to_string())]);
    let url =
        scorefleet_aws::provision::ensure_queue(&cfg.sqs(), &unique(tag), attrs, counters).await.expect("create queue");
    SqsQueue::new(cfg.sqs(), url, counters.clone())
}

/// Deletes a queue.
pub async fn delete_queue(cfg: &AwsConfig, url: &str) {
    cfg.sqs().delete_queue().queue_url(url).send().await.expect("delete queue");
}

/// Receives until `n` distinct messages have arrived (short polls of 1 s),
/// never assuming how many one receive returns.
pub async fn receive_n(q: &SqsQueue, n: usize, timeout: Duration) -> Vec<Received> {
    let mut got: Vec<Received> = Vec::new();
    let deadline = Instant::now() + timeout;
    while got.len() < n {
        assert!(Instant::now() < deadline, "received {} of {n} messages within {timeout:?}", got.len());
        for m in q.receive(10, Duration::from_secs(1)).await.expect("receive") {
            if !got.iter().any(|g| g.message_id == m.message_id) {
                got.push(m);
            }
        }
    }
    got
}

/// (visible, in flight) as the queue reports them. Approximate on real SQS;
/// exact on the emulators.
pub async fn depth(cfg: &AwsConfig, url: &str) -> (u64, u64) {
    let out = cfg
        .sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes.unwrap_or_default();
    let get = |k: &QueueAttributeName| attrs.get(k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    (
        get(&QueueAttributeName::ApproximateNumberOfMessages),
        get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// A table created the way `provision` creates it.
pub async fn table(cfg: &AwsConfig, tag: &str) -> String {
    let name = unique(tag);
    scorefleet_aws::provision::ensure_table(&cfg.dynamodb(), &name, &ApiCounters::new()).await.expect("create table");
    name
}

/// Deletes a table.
pub async fn delete_table(cfg: &AwsConfig, name: &str) {
    cfg.dynamodb().delete_table().table_name(name).send().await.expect("delete table");
}

/// A bucket.
pub async fn bucket(cfg: &AwsConfig, tag: &str) -> String {
    let name = unique(tag);
    let region = cfg.sdk.region().map(|r| r.as_ref().to_owned());
    scorefleet_aws::provision::ensure_bucket(&cfg.s3(), &name, region.as_deref(), &ApiCounters::new())
        .await
        .expect("create bucket");
    name
}

/// Empties and deletes a bucket.
pub async fn delete_bucket(cfg: &AwsConfig, name: &str) {
    let s3 = cfg.s3();
    let store = scorefleet_aws::S3Store::new(s3.clone(), counters());
    let keys = store.list(name, "").await.expect("list for clean-up");
    for chunk in keys.chunks(1000) {
        let objects = chunk
            .iter()
            .map(|k| aws_sdk_s3::types::ObjectIdentifier::builder().key(k).build().expect("key is set"))
            .collect();
        let delete = aws_sdk_s3::types::Delete::builder().set_objects(Some(objects)).build().expect("objects set");
        s3.delete_objects().bucket(name).delete(delete).send().await.expect("delete objects");
    }
    s3.delete_bucket().bucket(name).send().await.expect("delete bucket");
}
