//! SQS: the input queue ([`JobQueue`]) and the output side ([`MessageSink`]).
//!
//! - Receive is a long poll (the caller's wait, at most SQS's 20 s) for at
//!   most 10 messages, asking for `ApproximateReceiveCount` and the
//!   new-run mark (the message attribute [`NEW_RUN_ATTRIBUTE`]). Emulators tend to
//!   return full batches; real SQS often returns fewer, so callers must never
//!   rely on a batch size.
//! - Send, delete and change-visibility go out in batches of at most 10
//!   entries (send also keeps a batch under 256 KiB). An entry's id is its
//!   position within its batch: always unique, even when SQS has delivered
//!   the same message twice into one receive (reusing a message id as the
//!   entry id fails the whole call with `BatchEntryIdsNotDistinct`);
//!   and a receipt handle named twice in one call is sent once (moto refuses
//!   the whole batch otherwise), its outcome reported for every index.
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
    MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use scorefleet_core::traits::{EntryFailure, JobQueue, MessageSink, Received, ServiceError};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Entries per batch call: SQS's limit.
pub const MAX_BATCH: usize = 10;
/// Bytes of message bodies per SendMessageBatch: the classic SQS limit for a
/// whole batch (kept even where the service allows more, so the same code
/// works on every endpoint).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// The message attribute of the producer's new-run mark
/// ([`MessageSink::send_marked`]), a `String` attribute of value `1`.
pub const NEW_RUN_ATTRIBUTE: &str = "scorefleet-new-run";
/// What the mark adds to a message's size as SQS counts it: name, type and
/// value.
const NEW_RUN_ATTRIBUTE_BYTES: usize = NEW_RUN_ATTRIBUTE.len() + "String".len() + 1;
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
    entry_retries: u32,
    /// The wait between those retries.
    backoff: Backoff,
    /// The visibility timeout asked for on receive (None: the queue's own).
    receive_visibility: Option<Duration>,
    /// A FIFO queue (its name ends in `.fifo`): sends carry a message group
    /// and a deduplication id.
    fifo: bool,
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
        let url: String = queue_url.into();
        // SQS requires FIFO queue names to end in `.fifo`, and the URL ends
        // with the name on every endpoint.
        let fifo = url.ends_with(".fifo");
        Self { client, url, counters, entry_retries: 3, backoff: Backoff::default(), receive_visibility: None, fifo }
    }

    /// Whether this is a FIFO queue (its URL ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// Asks for this visibility timeout on every [`JobQueue::receive`] instead
    /// of the queue's own, so a consumer's lease bookkeeping does not depend on
    /// how the queue was configured.
    pub fn with_receive_visibility(mut self, visibility: Duration) -> Self {
        self.receive_visibility = Some(visibility);
        self
    }

    /// Changes how often, and after what first delay, failed batch entries are
    /// retried before being reported (default 3 retries from 50 ms).
    pub fn with_entry_retries(mut self, retries: u32, base_delay: Duration) -> Self {
        self.entry_retries = retries;
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
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(NEW_RUN_ATTRIBUTE);
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
            let new_run = m
                .message_attributes
                .as_ref()
                .and_then(|a| a.get(NEW_RUN_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .is_some_and(|v| v == "1");
            received.push(Received {
                message_id,
                receipt_handle,
                body: m.body.unwrap_or_default(),
                receive_count,
                new_run,
            });
        }
        Ok(received)
    }

    /// Runs one batch API over `chunks` of the caller's entries. `call` sends
    /// one request for `(entry id, caller index)` pairs. Retries the retryable
    /// failed entries, returns the rest, sorted by caller index.
    async fn batched<F, Fut>(
        &self,
        op: &'static str,
        chunks: Vec<Vec<usize>>,
        call: F,
    ) -> Result<Vec<EntryFailure>, ServiceError>
    where
        F: Fn(Vec<(String, usize)>) -> Fut,
        Fut: Future<Output = Result<BatchReply, ServiceError>>,
    {
        let mut failures = Vec::new();
        for chunk in chunks {
            // An entry's id is its position in `chunk`, kept across retries.
            let position = |i: usize| chunk.iter().position(|&c| c == i).unwrap_or(usize::MAX);
            let mut pending: Vec<usize> = chunk.clone();
            let mut retry = 0;
            loop {
                let entries = pending.iter().map(|&i| (position(i).to_string(), i)).collect();
                self.counters.incr(op);
                let reply = call(entries).await?;
                let index_of = |id: &str| {
                    id.parse::<usize>().ok().and_then(|p| chunk.get(p).copied()).filter(|i| pending.contains(i))
                };
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
                if retry >= self.entry_retries {
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

/// Splits caller indices into batches of at most [`MAX_BATCH`].
fn count_chunks(indices: &[usize]) -> Vec<Vec<usize>> {
    indices.chunks(MAX_BATCH).map(<[usize]>::to_vec).collect()
}

/// One representative per distinct receipt handle (its last occurrence, so
/// for change-visibility the caller's latest wish wins), and each other
/// occurrence with its representative. Some endpoints (moto) refuse a whole
/// batch that names one handle twice, and the operation is the same anyway.
fn dedup_handles<'a>(handles: impl Iterator<Item = &'a str>) -> (Vec<usize>, Vec<(usize, usize)>) {
    let handles: Vec<&str> = handles.collect();
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, h) in handles.iter().enumerate() {
        last.insert(h, i);
    }
    let mut reps = Vec::new();
    let mut dups = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        match last.get(h) {
            Some(&rep) if rep != i => dups.push((i, rep)),
            _ => reps.push(i),
        }
    }
    (reps, dups)
}

/// Gives each duplicate the failure of its representative, if it failed.
fn copy_failures(mut failures: Vec<EntryFailure>, dups: &[(usize, usize)]) -> Vec<EntryFailure> {
    let copies: Vec<EntryFailure> = dups
        .iter()
        .filter_map(|&(dup, rep)| {
            failures.iter().find(|f| f.index == rep).map(|f| EntryFailure { index: dup, ..f.clone() })
        })
        .collect();
    failures.extend(copies);
    failures.sort_by_key(|f| f.index);
    failures
}

/// Splits bodies into batches of at most [`MAX_BATCH`] entries and
/// [`MAX_BATCH_BYTES`] bytes, `extra(i)` bytes of attributes counted with
/// body `i` (a message larger than that alone gets its own batch, and the
/// service's answer for it).
fn send_chunks(bodies: &[String], extra: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, b) in bodies.iter().enumerate() {
        let size = b.len() + extra(i);
        if i > start && (i - start == MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
            chunks.push((start..i).collect());
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < bodies.len() {
        chunks.push((start..bodies.len()).collect());
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
        self.receive_with(max, wait, self.receive_visibility).await
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        const OP: &str = "DeleteMessageBatch";
        let client = &self.client;
        let url = &self.url;
        let (reps, dups) = dedup_handles(receipt_handles.iter().map(String::as_str));
        let failures = self
            .batched(OP, count_chunks(&reps), |entries| async move {
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
            .await?;
        Ok(copy_failures(failures, &dups))
    }

    async fn change_visibility(&self, entries: &[(String, Duration)]) -> Result<Vec<EntryFailure>, ServiceError> {
        const OP: &str = "ChangeMessageVisibilityBatch";
        let client = &self.client;
        let url = &self.url;
        let (reps, dups) = dedup_handles(entries.iter().map(|(h, _)| h.as_str()));
        let failures = self
            .batched(OP, count_chunks(&reps), |batch| async move {
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
            .await?;
        Ok(copy_failures(failures, &dups))
    }
}

impl SqsQueue {
    /// SendMessageBatch in chunks. On a FIFO queue every entry needs a message
    /// group: with `keys`, each entry's key is both its group (one job per
    /// group: no ordering stalls between jobs) and its deduplication id;
    /// without, one group and the queue's content-based deduplication.
    async fn send_entries(
        &self,
        bodies: &[String],
        keys: Option<&[String]>,
        new_run: Option<&[bool]>,
    ) -> Result<Vec<EntryFailure>, ServiceError> {
        const OP: &str = "SendMessageBatch";
        let client = &self.client;
        let url = &self.url;
        let fifo = self.fifo;
        let marked = |i: usize| new_run.and_then(|m| m.get(i)).copied().unwrap_or(false);
        let chunks = send_chunks(bodies, |i| if marked(i) { NEW_RUN_ATTRIBUTE_BYTES } else { 0 });
        let mark = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("1")
            .build()
            .map_err(|e| build_err(OP, e))?;
        let mark = &mark;
        self.batched(OP, chunks, |entries| async move {
            let entries = entries
                .into_iter()
                .map(|(id, i)| {
                    let mut entry = SendMessageBatchRequestEntry::builder().id(id).message_body(&bodies[i]);
                    if marked(i) {
                        entry = entry.message_attributes(NEW_RUN_ATTRIBUTE, mark.clone());
                    }
                    let entry = match (fifo, keys.and_then(|k| k.get(i))) {
                        (true, Some(key)) => entry.message_group_id(key).message_deduplication_id(key),
                        (true, None) => entry.message_group_id(UNKEYED_GROUP),
                        (false, _) => entry,
                    };
                    entry.build().map_err(|e| build_err(OP, e))
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

/// The message group of sends without keys to a FIFO queue.
const UNKEYED_GROUP: &str = "scorefleet";

impl MessageSink for SqsQueue {
    async fn send(&self, bodies: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        self.send_entries(bodies, None, None).await
    }

    async fn send_keyed(&self, keys: &[String], bodies: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
        debug_assert_eq!(keys.len(), bodies.len());
        self.send_entries(bodies, Some(keys), None).await
    }

    async fn send_marked(&self, bodies: &[String], new_run: &[bool]) -> Result<Vec<EntryFailure>, ServiceError> {
        debug_assert_eq!(new_run.len(), bodies.len());
        self.send_entries(bodies, None, Some(new_run)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A queue whose client is never called: `batched` is driven through a
    /// fake `call`.
    fn offline_queue() -> SqsQueue {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        SqsQueue::new(aws_sdk_sqs::Client::from_conf(conf), "http://unused", Arc::new(ApiCounters::new()))
            .with_entry_retries(2, Duration::from_millis(1))
    }

    fn entry_error(id: &str, code: &str, sender_fault: bool) -> BatchResultErrorEntry {
        BatchResultErrorEntry::builder().id(id).code(code).sender_fault(sender_fault).build().expect("all fields set")
    }

    #[tokio::test]
    async fn retryable_entries_are_retried_and_the_rest_reported_with_caller_indices() {
        let q = offline_queue();
        let calls: Mutex<Vec<Vec<(String, usize)>>> = Mutex::new(Vec::new());
        // 12 entries: batch 1 is indices 0..10, batch 2 is 10..12.
        let failures = q
            .batched("DeleteMessageBatch", count_chunks(&(0..12).collect::<Vec<_>>()), |entries| {
                let round = {
                    let mut c = calls.lock().expect("lock");
                    c.push(entries.clone());
                    c.iter().filter(|e| e.first().map(|f| f.1 < 10) == entries.first().map(|f| f.1 < 10)).count()
                };
                async move {
                    let mut ok = Vec::new();
                    let mut failed = Vec::new();
                    for (id, i) in entries {
                        match (i, round) {
                            // Throttled once, then fine.
                            (3, 1) => failed.push(entry_error(&id, "ThrottlingException", false)),
                            // The sender's fault: reported at once, never retried.
                            (5, _) => failed.push(entry_error(&id, "ReceiptHandleIsInvalid", true)),
                            // Not the sender's fault, but no retry helps.
                            (7, _) => failed.push(entry_error(&id, "InternalError", false)),
                            // Not mentioned in the first answer at all.
                            (11, 1) => {}
                            _ => ok.push(id),
                        }
                    }
                    Ok(BatchReply { ok, failed })
                }
            })
            .await
            .expect("no request failed");
        let got: Vec<(usize, &str)> = failures.iter().map(|f| (f.index, f.code.as_str())).collect();
        assert_eq!(got, vec![(5, "ReceiptHandleIsInvalid"), (7, "InternalError")]);
        let calls = calls.into_inner().expect("lock");
        // Batch 1: the first try, then retries of 3 and 7, then of 7 alone;
        // batch 2: the first try, then 11 alone. Ids are positions in the
        // batch, unchanged on retries.
        let ids = |c: &Vec<(String, usize)>| c.iter().map(|(id, i)| (id.clone(), *i)).collect::<Vec<_>>();
        assert_eq!(calls.len(), 5, "{calls:?}");
        assert_eq!(ids(&calls[1]), vec![("3".into(), 3), ("7".into(), 7)]);
        assert_eq!(ids(&calls[2]), vec![("7".into(), 7)]);
        assert_eq!(ids(&calls[4]), vec![("1".into(), 11)]);
        assert_eq!(q.counters().get("DeleteMessageBatch"), 5);
    }

    #[tokio::test]
    async fn an_unknown_entry_id_in_an_answer_is_an_error_not_a_silent_drop() {
        let q = offline_queue();
        let res = q
            .batched("SendMessageBatch", count_chunks(&[0, 1]), |_| async {
                Ok(BatchReply { ok: vec!["0".into()], failed: vec![entry_error("9", "X", true)] })
            })
            .await;
        assert!(matches!(res, Err(ServiceError::Permanent { .. })), "{res:?}");
    }

    #[test]
    fn count_chunks_are_at_most_ten_and_cover_everything() {
        let idx: Vec<usize> = (0..23).collect();
        assert!(count_chunks(&[]).is_empty());
        assert_eq!(count_chunks(&idx[..10]), vec![idx[..10].to_vec()]);
        assert_eq!(count_chunks(&idx), vec![idx[..10].to_vec(), idx[10..20].to_vec(), idx[20..].to_vec()]);
    }

    #[test]
    fn send_chunks_respect_count_and_bytes() {
        let small: Vec<String> = (0..21).map(|i| i.to_string()).collect();
        let r = |a: usize, b: usize| (a..b).collect::<Vec<_>>();
        assert_eq!(send_chunks(&small, |_| 0), vec![r(0, 10), r(10, 20), r(20, 21)]);
        let big = "x".repeat(100 * 1024);
        let bodies = vec![big.clone(), big.clone(), big.clone(), "y".into(), "x".repeat(300 * 1024), "z".into()];
        // 100+100 KiB fit, a third would pass 256 KiB; the oversized body is
        // alone in its batch.
        assert_eq!(send_chunks(&bodies, |_| 0), vec![r(0, 2), r(2, 4), r(4, 5), r(5, 6)]);
        assert!(send_chunks(&[], |_| 0).is_empty());
        // Four bodies of 64 KiB fill a batch exactly; the mark's bytes on
        // each push the fourth into the next.
        let full: Vec<String> = (0..4).map(|_| "x".repeat(64 * 1024)).collect();
        assert_eq!(send_chunks(&full, |_| 0), vec![r(0, 4)]);
        assert_eq!(send_chunks(&full, |_| NEW_RUN_ATTRIBUTE_BYTES), vec![r(0, 3), r(3, 4)]);
    }

    #[test]
    fn duplicate_handles_are_sent_once_and_share_their_failure() {
        let (reps, dups) = dedup_handles(["a", "b", "a", "c", "a"].into_iter());
        assert_eq!(reps, vec![1, 3, 4], "last occurrence represents");
        assert_eq!(dups, vec![(0, 4), (2, 4)]);
        let f = |index| EntryFailure { index, code: "X".into(), message: String::new() };
        let got = copy_failures(vec![f(4)], &dups);
        assert_eq!(got.iter().map(|f| f.index).collect::<Vec<_>>(), vec![0, 2, 4]);
        assert!(copy_failures(vec![f(1)], &dups).iter().all(|f| f.index == 1));
    }

    #[test]
    fn visibility_is_clamped_to_the_sqs_maximum() {
        assert_eq!(visibility_secs(Duration::from_secs(30)), 30);
        assert_eq!(visibility_secs(Duration::from_secs(u64::MAX)), 43_200);
    }
}
