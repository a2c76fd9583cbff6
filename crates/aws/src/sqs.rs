//! SQS: the input queue ([`JobQueue`]) and the output side ([`MessageSink`]).
//!
//! - Receive is a long poll (the caller's wait, at most SQS's 20 s) for at
//!   most 10 messages, asking for `ApproximateReceiveCount`. Emulators tend to
//!   return full batches; real SQS often returns fewer, so callers must never
//!   rely on a batch size.
//! - Send, delete and change-visibility go out in batches of at most 10
//!   entries (send also keeps a batch under 256 KiB). An entry's id is its
//!   position within its batch: always unique, even when SQS has delivered
//!   the same message twice into one receive (reusing a message id as the
//!   entry id fails the whole call with `BatchEntryIdsNotDistinct`).
//! - Failed entries that are not the sender's fault (throttling, internal
//!   errors, entries missing from the answer) are retried a few times with
//!   backoff and jitter; every entry that still fails is returned as an
//!   [`EntryFailure`] with the caller's index. Nothing is dropped silently.
//! - A failure of a whole request returns `Err` at once; batches sent before
//!   it stand (delete and change-visibility are idempotent, and consumers
//!   drop duplicate sends by `job_id`).

use crate::backoff::Backoff;
use crate::errors::{classify, is_transient_code, permanent};
use crate::metrics::ApiCounters;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use scorefleet_core::traits::{EntryFailure, JobQueue, MessageSink, Received, ServiceError};
use std::collections::HashSet;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Entries per batch call: SQS's limit.
pub const MAX_BATCH: usize = 10;
/// Bytes of message bodies per SendMessageBatch: the classic SQS limit for a
/// whole batch (kept even where the service allows more, so the same code
/// works on every endpoint).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// The longest long poll SQS allows.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// The longest visibility timeout SQS allows (12 h).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// Entry error codes that no retry can fix, even when the service does not
/// flag them as the sender's fault.
const PERMANENT_ENTRY_CODES: &[&str] = &[
    "ReceiptHandleIsInvalid",
    "InvalidParameterValue",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
    "InvalidMessageContents",
    "MessageTooLong",
];

/// One SQS queue, used as a [`JobQueue`] (input) or a [`MessageSink`]
/// (output, or the producer's input side).
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    counters: Arc<ApiCounters>,
    /// Retries of failed batch entries (the SDK retries whole requests).
    backoff: Backoff,
}

/// What one batch request answered: ids that succeeded, entries that failed.
struct BatchReply {
    ok: Vec<String>,
    failed: Vec<BatchResultErrorEntry>,
}

impl SqsQueue {
    /// A queue by URL, as returned by CreateQueue/GetQueueUrl (never built by
    /// hand: emulators and regions format URLs differently).
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>, counters: Arc<ApiCounters>) -> Self {
        Self { client, url: queue_url.into(), counters, backoff: Backoff::default() }
    }

    /// Changes how often, and after what first delay, failed batch entries are
    /// retried before being reported (default 3 retries from 50 ms).
    pub fn with_entry_retries(mut self, retries: u32, base_delay: Duration) -> Self {
        self.backoff.retries = retries;
        self.backoff.base = base_delay;
        self
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request counters this queue adds to.
    pub fn counters(&self) -> &Arc<ApiCounters> {
        &self.counters
    }

    /// Receive, optionally overriding the queue's visibility timeout for the
    /// messages received (the worker can ask for its lease length directly).
    pub async fn receive_with(
        &self,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, ServiceError> {
        const OP: &str = "ReceiveMessage";
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut req = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.min(MAX_BATCH) as i32)
            .wait_time_seconds(wait.min(MAX_WAIT).as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(v) = visibility {
            req = req.visibility_timeout(visibility_secs(v));
        }
        self.counters.incr(OP);
        let out = req.send().await.map_err(|e| classify(OP, &e))?;
        let mut received = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let (Some(message_id), Some(receipt_handle)) = (m.message_id, m.receipt_handle) else {
                // Without a handle the message cannot be deleted; it will come
                // back after its visibility timeout, and be seen then.
                tracing::warn!(queue = %self.url, "received a message without an id or receipt handle; skipped");
                continue;
            };
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            received.push(Received { message_id, receipt_handle, body: m.body.unwrap_or_default(), receive_count });
        }
        Ok(received)
    }

    /// Runs one batch API over `chunks` of the caller's entries. `call` sends
    /// one request for `(entry id, caller index)` pairs. Retries the retryable
    /// failed entries, returns the rest, sorted by caller index.
    async fn batched<F, Fut>(
        &self,
        op: &'static str,
        chunks: Vec<Range<usize>>,
        call: F,
    ) -> Result<Vec<EntryFailure>, ServiceError>
    where
        F: Fn(Vec<(String, usize)>) -> Fut,
        Fut: Future<Output = Result<BatchReply, ServiceError>>,
    {
        let mut failures = Vec::new();
        for chunk in chunks {
            let base = chunk.start;
            let mut pending: Vec<usize> = chunk.collect();
            let mut retry = 0;
            loop {
                let entries = pending.iter().map(|&i| ((i - base).to_string(), i)).collect();
                self.counters.incr(op);
                let reply = call(entries).await?;
                let index_of = |id: &str| id.parse::<usize>().ok().map(|p| base + p).filter(|i| pending.contains(i));
                let mut answered = HashSet::new();
                for id in &reply.ok {
                    answered.insert(index_of(id).ok_or_else(|| permanent(op, format!("unknown entry id `{id}`")))?);
                }
                let mut retryable = Vec::new();
                for f in reply.failed {
                    let index = index_of(&f.id).ok_or_else(|| permanent(op, format!("unknown entry id `{}`", f.id)))?;
                    answered.insert(index);
                    let again = !f.sender_fault && !PERMANENT_ENTRY_CODES.contains(&f.code.as_str());
                    let failure = EntryFailure { index, code: f.code, message: f.message.unwrap_or_default() };
                    if again { retryable.push(failure) } else { failures.push(failure) }
                }
                // An entry the answer does not mention has an unknown fate;
                // trying it again is safe for all three operations.
                for &index in pending.iter().filter(|i| !answered.contains(i)) {
                    retryable.push(EntryFailure {
                        index,
                        code: "MissingFromResponse".into(),
                        message: "the service answered neither success nor failure for this entry".into(),
                    });
                }
                if retryable.is_empty() {
                    break;
                }
                if retry >= self.backoff.retries {
                    tracing::warn!(op, queue = %self.url, n = retryable.len(), "batch entries still failing after retries");
                    failures.extend(retryable);
                    break;
                }
                let throttled = retryable.iter().any(|f| is_transient_code(&f.code));
                tracing::debug!(op, queue = %self.url, n = retryable.len(), throttled, retry, "retrying failed batch entries");
                self.backoff.wait(retry).await;
                retry += 1;
                pending = retryable.into_iter().map(|f| f.index).collect();
            }
        }
        failures.sort_by_key(|f| f.index);
        Ok(failures)
    }
}

/// Splits `n` entries into batches of at most [`MAX_BATCH`].
fn count_chunks(n: usize) -> Vec<Range<usize>> {
    (0..n).step_by(MAX_BATCH).map(|s| s..(s + MAX_BATCH).min(n)).collect()
}

/// Splits bodies into batches of at most [`MAX_BATCH`] entries and
/// [`MAX_BATCH_BYTES`] bytes (a body larger than that alone gets its own
/// batch, and the service's answer for it).
fn send_chunks(bodies: &[String]) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, b) in bodies.iter().enumerate() {
        if i > start && (i - start == MAX_BATCH || bytes + b.len() > MAX_BATCH_BYTES) {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += b.len();
    }
    if start < bodies.len() {
        chunks.push(start..bodies.len());
    }
    chunks
}

fn visibility_secs(d: Duration) -> i32 {
    d.min(MAX_VISIBILITY).as_secs() as i32
}

fn build_err(op: &'static str, e: impl std::fmt::Display) -> ServiceError {
    permanent(op, format!("could not build a batch entry: {e}"))
}

impl JobQueue for SqsQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, ServiceError> {
        self.receive_with(max, wait, None).await
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        const OP: &str = "DeleteMessageBatch";
        let client = &self.client;
        let url = &self.url;
        self.batched(OP, count_chunks(receipt_handles.len()), |entries| async move {
            let entries = entries
                .into_iter()
                .map(|(id, i)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(id)
                        .receipt_handle(&receipt_handles[i])
                        .build()
                        .map_err(|e| build_err(OP, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(OP, &e))?;
            Ok(BatchReply { ok: out.successful.into_iter().map(|s| s.id).collect(), failed: out.failed })
        })
        .await
    }

    async fn change_visibility(&self, entries: &[(String, Duration)]) -> Result<Vec<EntryFailure>, ServiceError> {
        const OP: &str = "ChangeMessageVisibilityBatch";
        let client = &self.client;
        let url = &self.url;
        self.batched(OP, count_chunks(entries.len()), |batch| async move {
            let batch = batch
                .into_iter()
                .map(|(id, i)| {
                    let (handle, vis) = &entries[i];
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(id)
                        .receipt_handle(handle)
                        .visibility_timeout(visibility_secs(*vis))
                        .build()
                        .map_err(|e| build_err(OP, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(batch))
                .send()
                .await
                .map_err(|e| classify(OP, &e))?;
            Ok(BatchReply { ok: out.successful.into_iter().map(|s| s.id).collect(), failed: out.failed })
        })
        .await
    }
}

impl MessageSink for SqsQueue {
    async fn send(&self, bodies: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        const OP: &str = "SendMessageBatch";
        let client = &self.client;
        let url = &self.url;
        self.batched(OP, send_chunks(bodies), |entries| async move {
            let entries = entries
                .into_iter()
                .map(|(id, i)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(&bodies[i])
                        .build()
                        .map_err(|e| build_err(OP, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(OP, &e))?;
            Ok(BatchReply { ok: out.successful.into_iter().map(|s| s.id).collect(), failed: out.failed })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_chunks_are_at_most_ten_and_cover_everything() {
        assert!(count_chunks(0).is_empty());
        assert_eq!(count_chunks(10), vec![0..10]);
        assert_eq!(count_chunks(23), vec![0..10, 10..20, 20..23]);
    }

    #[test]
    fn send_chunks_respect_count_and_bytes() {
        let small: Vec<String> = (0..21).map(|i| i.to_string()).collect();
        assert_eq!(send_chunks(&small), vec![0..10, 10..20, 20..21]);
        let big = "x".repeat(100 * 1024);
        let bodies = vec![big.clone(), big.clone(), big.clone(), "y".into(), "x".repeat(300 * 1024), "z".into()];
        // 100+100 KiB fit, a third would pass 256 KiB; the oversized body is
        // alone in its batch.
        assert_eq!(send_chunks(&bodies), vec![0..2, 2..4, 4..5, 5..6]);
        assert!(send_chunks(&[]).is_empty());
    }

    #[test]
    fn visibility_is_clamped_to_the_sqs_maximum() {
        assert_eq!(visibility_secs(Duration::from_secs(30)), 30);
        assert_eq!(visibility_secs(Duration::from_secs(u64::MAX)), 43_200);
    }
}
