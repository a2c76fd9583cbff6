//! Run status: how many jobs of a run are done, failed and in flight.
//!
//! Counted by a **query**, not by counters. Every job has exactly one item in
//! the outcome table (keyed by `job_id`), and its `status` changes only
//! through the fenced transitions of [`scorefleet_core::lease`]. Counting
//! those items by `status` is therefore exact under duplicate deliveries,
//! take-overs and crashes: a job delivered twice is still one item, and a
//! worker that dies between two writes leaves no half-counted job behind. A
//! counter incremented after a fenced finish would be lost whenever the
//! worker died between the finish and the increment (the redelivery then
//! finds COMPLETED and never counts again), and could not be made exactly-once
//! without a transaction per job.
//!
//! The query runs on the [`RUN_INDEX`] global secondary index (partition key
//! `run_id`). The index is **sparse**: only a finish writes `run_id`, so it
//! holds the outcomes and a job costs one index write (a claim, a renewal or a
//! release writes no indexed attribute). Jobs in progress are therefore not
//! counted here, except those claimed by workers from before the sparse index,
//! whose claims wrote `run_id`; the producer's `status` shows what is left
//! (total − finished, exact) and the input queue's in-flight messages. The
//! index projects only `status`, `finished_ms` and `attempt`: about
//! 100 bytes per job, so a status call for n jobs reads ≈ n × 100 B (half a
//! read unit per 4 KB, eventually consistent) in ⌈n × 100 B / 1 MB⌉ `Query`
//! pages, and the `result` JSON is never read.
//!
//! The run's size comes from a **run record** in the same table, written by
//! the producer after it enqueues ([`DynamoOutcomeStore::record_enqueued`]):
//! partition key `job_id = "#run <run_id>"` (job ids have no spaces, so no
//! job can take it), `total`, `enqueued_ms`, `updated_ms`, `expires_at`,
//! `started_ms` (set by the first enqueue's [`DynamoOutcomeStore::begin_run`]), and
//! no `run_id` attribute, so it never appears in the index it would skew.

use super::{DynamoOutcomeStore, Item, n, s};
use crate::errors::{classify, permanent};
use crate::provision::{RUN_INDEX, has_run_index};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use scorefleet_core::lease::Status;
use scorefleet_core::traits::ServiceError;
use std::collections::HashMap;

/// The window of [`RunStatus::finished_last_minute`].
pub const RECENT_WINDOW_MS: u64 = 60_000;

/// Where a run stands, as counted from the outcome table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStatus {
    /// The run.
    pub run_id: String,
    /// Jobs the producer enqueued (the largest count any enqueue of this run
    /// recorded); `None` when no enqueue recorded one.
    pub total: Option<u64>,
    /// Jobs finished as `COMPLETED`.
    pub completed: u64,
    /// Jobs finished as `FAILED`.
    pub failed: u64,
    /// `IN_PROGRESS` entries of the index: jobs claimed and not finished by
    /// workers from before the sparse index (newer claims are not indexed; 0
    /// once every worker is new and those jobs are finished).
    pub in_progress: u64,
    /// The earliest finish (epoch ms) among finished jobs.
    pub first_finished_ms: Option<u64>,
    /// The latest finish (epoch ms) among finished jobs.
    pub last_finished_ms: Option<u64>,
    /// Jobs finished within [`RECENT_WINDOW_MS`] before `now_ms`.
    pub finished_last_minute: u64,
    /// When the run was first enqueued (epoch ms), from the run record.
    pub enqueued_ms: Option<u64>,
}

impl RunStatus {
    /// Finished jobs, either way.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed
    }
}

/// The run record's key: a `job_id` no job can have (job ids have no spaces).
pub fn run_record_key(run_id: &str) -> String {
    format!("#run {run_id}")
}

impl DynamoOutcomeStore {
    /// Records that `total` jobs of `run_id` were enqueued. The stored total
    /// only grows: re-running the same enqueue sends the same job ids, so it
    /// must not add up, and a smaller, partial re-run must not lower it. The
    /// first call's time is kept as `enqueued_ms`. One `UpdateItem`.
    ///
    /// Returns whether the stored total is now `total` (false: a larger total
    /// was already recorded and stands).
    pub async fn record_enqueued(&self, run_id: &str, total: u64, now_ms: u64) -> Result<bool, ServiceError> {
        // `<=` rather than `<`: an equal re-run refreshes `updated_ms` and
        // the TTL. An expired record (TTL lags) counts as absent, so a run id
        // re-used after a week starts over instead of keeping its old total.
        self.update_run_record(
            run_id,
            "SET #t = :n, #en = if_not_exists(#en, :now), #up = :now, #exp = :exp",
            "attribute_not_exists(#t) OR #t <= :n OR #exp <= :now_s",
            &[("#t", "total"), ("#en", "enqueued_ms"), ("#up", "updated_ms"), ("#exp", "expires_at")],
            vec![(":n", n(total))],
            now_ms,
        )
        .await
    }

    /// Marks the start of `run_id`'s first enqueue: returns true when this
    /// call is the first for the run (no run record, or one past its TTL),
    /// false when an enqueue of the run started before (`started_ms`) or
    /// recorded a total. The producer marks the messages of a first enqueue
    /// so that workers skip their lookup; a false here only keeps the
    /// lookups. One conditional `UpdateItem`.
    pub async fn begin_run(&self, run_id: &str, now_ms: u64) -> Result<bool, ServiceError> {
        // An expired record's total belongs to the run id's earlier use.
        self.update_run_record(
            run_id,
            "SET #st = :now, #exp = :exp REMOVE #t, #en, #up",
            "(attribute_not_exists(#st) AND attribute_not_exists(#t)) OR #exp <= :now_s",
            &[
                ("#st", "started_ms"),
                ("#t", "total"),
                ("#en", "enqueued_ms"),
                ("#up", "updated_ms"),
                ("#exp", "expires_at"),
            ],
            Vec::new(),
            now_ms,
        )
        .await
    }

    /// One conditional `UpdateItem` of the run record; false when the
    /// condition refused it. Besides `values`, the expressions may use `:now`
    /// (ms), `:now_s` and `:exp` (the TTL from now, in seconds).
    async fn update_run_record(
        &self,
        run_id: &str,
        update: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
        now_ms: u64,
    ) -> Result<bool, ServiceError> {
        const OP: &str = "UpdateItem";
        let clock =
            [(":now", n(now_ms)), (":exp", n(now_ms / 1000 + self.ttl.as_secs())), (":now_s", n(now_ms / 1000))];
        let values: Item = values.into_iter().chain(clock).map(|(k, v)| (k.to_owned(), v)).collect();
        let names: HashMap<String, String> = names.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.counters.incr(OP);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("job_id", s(&run_record_key(run_id)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            // The old item is not needed: a refusal is the whole answer.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::None)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(ctx))
                if matches!(ctx.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(classify(OP, &e)),
        }
    }

    /// Counts the jobs of `run_id` by status, with finish times for
    /// throughput, and reads the run record: one consistent `GetItem` plus
    /// one `Query` on [`RUN_INDEX`] per 1 MB of index entries (~10,000 jobs).
    ///
    /// The index is eventually consistent, so a count may trail the table by
    /// a moment; it never counts a job twice. A table created before the
    /// index existed gives a permanent error naming the index (no fallback
    /// to a full-table scan, which would cost a read of every result).
    pub async fn run_status(&self, run_id: &str, now_ms: u64) -> Result<RunStatus, ServiceError> {
        let mut st = RunStatus { run_id: run_id.to_owned(), ..RunStatus::default() };
        self.read_run_record(run_id, now_ms, &mut st).await?;
        const OP: &str = "Query";
        let recent_since = now_ms.saturating_sub(RECENT_WINDOW_MS);
        let mut start: Option<Item> = None;
        loop {
            self.counters.incr(OP);
            let res = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(RUN_INDEX)
                .key_condition_expression("#run = :run")
                .projection_expression("#st, #fin")
                .expression_attribute_names("#run", "run_id")
                .expression_attribute_names("#st", "status")
                .expression_attribute_names("#fin", "finished_ms")
                .expression_attribute_values(":run", s(run_id))
                .set_limit(self.status_page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await;
            let out = match res {
                Ok(out) => out,
                Err(e) => return Err(self.query_failed(&e).await),
            };
            for item in out.items() {
                let status = item
                    .get("status")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|v| Status::parse(v))
                    .ok_or_else(|| permanent(OP, format!("run {run_id}: an index entry without a valid status")))?;
                match status {
                    Status::InProgress => st.in_progress += 1,
                    Status::Completed => st.completed += 1,
                    Status::Failed => st.failed += 1,
                }
                if status == Status::InProgress {
                    continue;
                }
                // Jobs finished before `finished_ms` was written have none:
                // counted, but not in throughput.
                if let Some(fin) = item.get("finished_ms").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()) {
                    st.first_finished_ms = Some(st.first_finished_ms.map_or(fin, |f: u64| f.min(fin)));
                    st.last_finished_ms = Some(st.last_finished_ms.map_or(fin, |l: u64| l.max(fin)));
                    if fin > recent_since && fin <= now_ms {
                        st.finished_last_minute += 1;
                    }
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(st)
    }

    /// Fills `total` and `enqueued_ms` from the run record, if there is a
    /// live one.
    async fn read_run_record(&self, run_id: &str, now_ms: u64, st: &mut RunStatus) -> Result<(), ServiceError> {
        const OP: &str = "GetItem";
        self.counters.incr(OP);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job_id", s(&run_record_key(run_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(OP, &e))?;
        let Some(item) = out.item else { return Ok(()) };
        let num = |k: &str| -> Result<Option<u64>, ServiceError> {
            match item.get(k) {
                None => Ok(None),
                Some(AttributeValue::N(raw)) => raw
                    .parse()
                    .map(Some)
                    .map_err(|_| permanent(OP, format!("run record {run_id}: `{k}` is not a whole number: {raw}"))),
                Some(_) => Err(permanent(OP, format!("run record {run_id}: `{k}` is not a number"))),
            }
        };
        // Past its TTL the record counts as absent, like every item here.
        if num("expires_at")?.is_some_and(|exp| exp.saturating_mul(1000) <= now_ms) {
            return Ok(());
        }
        st.total = num("total")?;
        st.enqueued_ms = num("enqueued_ms")?;
        Ok(())
    }

    /// Turns a failed Query into an error. A table without the index is the
    /// likely permanent cause (a table made before it existed), and the
    /// services word that differently, so it is asked of the table itself.
    async fn query_failed<E>(&self, e: &SdkError<E>) -> ServiceError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let err = classify("Query", e);
        if err.is_transient() {
            return err;
        }
        match has_run_index(&self.client, &self.table, &self.counters).await {
            Ok(false) => permanent(
                "Query",
                format!(
                    "table {} has no global secondary index `{RUN_INDEX}` (partition key run_id), which run status \
                     needs; it was created before the index existed. Add the index (projection INCLUDE status, \
                     finished_ms, attempt) or provision a new table",
                    self.table
                ),
            ),
            _ => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_record_keys_are_never_job_ids() {
        let k = run_record_key("nightly-2026-11-26");
        assert_eq!(k, "#run nightly-2026-11-26");
        assert!(scorefleet_core::job::JobId::parse(&k).is_err(), "job ids have no spaces");
    }

    #[test]
    fn finished_adds_both_outcomes() {
        let st = RunStatus { completed: 3, failed: 2, in_progress: 7, ..RunStatus::default() };
        assert_eq!(st.finished(), 5);
    }
}
