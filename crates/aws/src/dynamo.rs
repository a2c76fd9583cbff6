//! DynamoDB: the dedup table ([`OutcomeStore`]).
//!
//! Each transition of [`scorefleet_core::lease`] is ONE conditional
//! `UpdateItem`; the pure functions there are the specification, and this
//! module reuses them to classify a refused write from the old item that
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD` hands back, so a refusal
//! costs no extra read.
//!
//! Item layout (one per job): `job_id` (S, partition key), `status` (S:
//! `IN_PROGRESS|COMPLETED|FAILED`), `owner` (S), `attempt` (N, the fencing
//! token), `lease_until_ms` (N), `result` (S, once finished), `finished_ms`
//! (N, epoch ms of the finish, for run throughput), `job_run` (S, the job's
//! run, written by the claim), `run_id` (S, the key of the **sparse**
//! `by_run` index that run status queries: written only by a finish, so an
//! in-progress item is not in the index and a job costs one index write, at
//! its finish), `expires_at` (N, epoch seconds, the table's TTL attribute).
//! Run records (see [`runs`]) share the table under keys no job id can take.
//!
//! TTL is checked in code as well as by the table: DynamoDB deletes expired
//! items up to days late, and emulators never do, so an item whose
//! `expires_at` has passed counts as absent everywhere here.
//!
//! Conditions, with `now_s = now_ms / 1000` (so that `expires_at > now_s` is
//! exactly the core's `expires_at_s * 1000 > now_ms`):
//! - claim: `attribute_not_exists(job_id) OR expires_at <= now_s OR
//!   (status = IN_PROGRESS AND lease_until_ms <= now_ms)`; sets `attempt =
//!   if_not_exists(attempt, 0) + 1` and `job_run`, removes `result`,
//!   `finished_ms` and `run_id` (an expired outcome re-claimed leaves the index).
//! - renew / finish / release: `status = IN_PROGRESS AND owner = :o AND
//!   attempt = :a AND expires_at > now_s`; the finish also copies `job_run`
//!   into `run_id`, which puts the job into the index.
//! - finish without a claim (finish-only mode): the claim's condition; sets
//!   the outcome, `run_id`, `job_run` and `attempt = if_not_exists(attempt,
//!   0) + 1` in one write.

use crate::backoff::Backoff;
use crate::errors::{classify, permanent};
use crate::metrics::ApiCounters;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnValue, ReturnValuesOnConditionCheckFailure};
use scorefleet_core::job::JobId;
use scorefleet_core::lease::{
    self, ClaimOutcome, ClaimRequest, Fence, LeaseError, OutcomeRecord, Status, Terminal, Unclaimed, UnclaimedFinish,
    is_live,
};
use scorefleet_core::traits::{OutcomeStore, ServiceError, now_ms};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub mod runs;

pub use runs::RunStatus;

/// The default record lifetime: long enough to cover re-runs and late
/// redeliveries of a nightly run, short enough to keep the table small.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Keys per BatchGetItem: DynamoDB's limit.
pub const MAX_BATCH_GET: usize = 100;

type Item = HashMap<String, AttributeValue>;

/// The dedup table as an [`OutcomeStore`].
#[derive(Debug, Clone)]
pub struct DynamoOutcomeStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// How long a record lives after its claim (its `expires_at`).
    ttl: Duration,
    counters: Arc<ApiCounters>,
    /// Retries of BatchGetItem's unprocessed keys.
    retries: u32,
    /// The wait between those retries.
    backoff: Backoff,
    /// Items per run-status `Query` page; `None`: DynamoDB's 1 MB pages.
    status_page_size: Option<i32>,
}

impl DynamoOutcomeStore {
    /// The store over `table` (created by [`crate::provision`]), with the
    /// default TTL of 7 days.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>, counters: Arc<ApiCounters>) -> Self {
        Self {
            client,
            table: table.into(),
            ttl: DEFAULT_TTL,
            counters,
            retries: 3,
            backoff: Backoff::default(),
            status_page_size: None,
        }
    }

    /// Caps the items per page of [`run_status`](Self::run_status)'s
    /// `Query`. Only useful to exercise pagination without a megabyte of
    /// items; a smaller page costs more requests and the same read units.
    pub fn with_status_page_size(mut self, items: i32) -> Self {
        self.status_page_size = Some(items.max(1));
        self
    }

    /// Sets the record lifetime.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The record lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Reads many records with BatchGetItem (consistent reads, 100 keys per
    /// request, unprocessed keys retried with backoff). Absent and
    /// TTL-expired records are left out of the map; duplicate ids are fine.
    pub async fn get_many(&self, ids: &[JobId]) -> Result<HashMap<JobId, OutcomeRecord>, ServiceError> {
        self.batch_get(ids, true).await
    }

    /// [`get_many`](Self::get_many) with `consistent_read` as given: an
    /// eventually consistent read costs half a read unit per item.
    async fn batch_get(&self, ids: &[JobId], consistent: bool) -> Result<HashMap<JobId, OutcomeRecord>, ServiceError> {
        const OP: &str = "BatchGetItem";
        // BatchGetItem refuses duplicate keys in one request.
        let unique: Vec<&JobId> = ids.iter().collect::<BTreeSet<_>>().into_iter().collect();
        let now = now_ms();
        let mut found = HashMap::new();
        for chunk in unique.chunks(MAX_BATCH_GET) {
            let keys: Vec<Item> = chunk.iter().map(|id| key(id)).collect();
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent)
                .build()
                .map_err(|e| permanent(OP, e.to_string()))?;
            let mut retry = 0;
            loop {
                self.counters.incr(OP);
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| classify(OP, &e))?;
                for item in out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default() {
                    let id = item
                        .get("job_id")
                        .and_then(|v| v.as_s().ok())
                        .and_then(|s| JobId::parse(s).ok())
                        .ok_or_else(|| permanent(OP, "an item without a valid job_id"))?;
                    let rec = parse_record(&item).map_err(|m| permanent(OP, format!("job {}: {m}", id.as_str())))?;
                    if is_live(&rec, now) {
                        found.insert(id, rec);
                    }
                }
                match out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)) {
                    Some(rest) if !rest.keys.is_empty() => {
                        if retry >= self.retries {
                            return Err(ServiceError::Transient {
                                op: OP,
                                message: format!("{} keys still unprocessed after {retry} retries", rest.keys.len()),
                            });
                        }
                        self.backoff.wait(retry).await;
                        retry += 1;
                        request = rest;
                    }
                    _ => break,
                }
            }
        }
        Ok(found)
    }

    /// A consistent read of the raw record (TTL-expired ones included).
    async fn read(&self, job: &JobId) -> Result<Option<OutcomeRecord>, ServiceError> {
        const OP: &str = "GetItem";
        self.counters.incr(OP);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(job)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(OP, &e))?;
        out.item
            .map(|item| parse_record(&item).map_err(|m| permanent(OP, format!("job {}: {m}", job.as_str()))))
            .transpose()
    }

    /// The record a refused conditional write was checked against: from
    /// `ALL_OLD` when the service returned it, else (the item is absent, or an
    /// emulator ignores `ReturnValuesOnConditionCheckFailure`) from a read.
    async fn refused_against(&self, old: Option<Item>, job: &JobId) -> Result<Option<OutcomeRecord>, ServiceError> {
        match old {
            Some(item) if !item.is_empty() => {
                parse_record(&item).map(Some).map_err(|m| permanent("UpdateItem", format!("job {}: {m}", job.as_str())))
            }
            _ => self.read(job).await,
        }
    }

    /// An UpdateItem of `set` under [`CLAIMABLE`] (absent, expired, or an
    /// ended lease): the claim's write and the unclaimed finish's. `values`
    /// come on top of the shared `:ip`, `:zero`, `:one`, `:now_s`, `:now_ms`;
    /// both writes use every alias, which DynamoDB requires of the names it
    /// is given. A refusal hands back the old item (ALL_OLD).
    fn claimable_update(
        &self,
        job: &JobId,
        set: &str,
        mut values: Item,
        now_ms: u64,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        values.extend([
            (":ip".to_owned(), s(Status::InProgress.as_str())),
            (":zero".to_owned(), n(0)),
            (":one".to_owned(), n(1)),
            (":now_s".to_owned(), n(now_ms / 1000)),
            (":now_ms".to_owned(), n(now_ms)),
        ]);
        self.counters.incr("UpdateItem");
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job)))
            .update_expression(set)
            .condition_expression(CLAIMABLE)
            .set_expression_attribute_names(Some(names(&[
                "pk", "st", "ow", "at", "lu", "run", "jrun", "exp", "res", "fin",
            ])))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    /// A fenced UpdateItem: `set` applies only while `fence` holds a live
    /// IN_PROGRESS record. On refusal, `spec` (the core's pure transition)
    /// names the [`LeaseError`].
    async fn fenced(
        &self,
        job: &JobId,
        fence: &Fence,
        now_ms: u64,
        set: &str,
        mut values: Item,
        spec: impl Fn(Option<&OutcomeRecord>) -> Result<OutcomeRecord, LeaseError>,
    ) -> Result<Result<(), LeaseError>, ServiceError> {
        const OP: &str = "UpdateItem";
        values.insert(":ip".into(), s(Status::InProgress.as_str()));
        values.insert(":o".into(), s(&fence.owner));
        values.insert(":a".into(), n(fence.attempt));
        values.insert(":now_s".into(), n(now_ms / 1000));
        let mut names = names(&["st", "ow", "at", "exp"]);
        if set.contains("#lu") {
            names.insert("#lu".into(), "lease_until_ms".into());
        }
        if set.contains("#res") {
            names.insert("#res".into(), "result".into());
        }
        if set.contains("#fin") {
            names.insert("#fin".into(), "finished_ms".into());
        }
        if set.contains("#run") {
            names.insert("#run".into(), "run_id".into());
            names.insert("#jrun".into(), "job_run".into());
        }
        self.counters.incr(OP);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job)))
            .update_expression(set)
            .condition_expression("#st = :ip AND #ow = :o AND #at = :a AND #exp > :now_s")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match res {
            Ok(_) => return Ok(Ok(())),
            Err(e) => condition_failed(e)?,
        };
        let cur = self.refused_against(old, job).await?;
        match spec(cur.as_ref()) {
            Err(lease_err) => Ok(Err(lease_err)),
            // The table refused what the specification allows: the record
            // changed between the write and the read, or clocks disagree on
            // the TTL second. Nothing was written; the caller may retry.
            Ok(_) => Err(ServiceError::Transient {
                op: OP,
                message: format!("job {}: conditional write refused on a record the fence holds", job.as_str()),
            }),
        }
    }
}

impl OutcomeStore for DynamoOutcomeStore {
    async fn claim(
        &self,
        job: &JobId,
        run_id: &str,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<ClaimOutcome, ServiceError> {
        const OP: &str = "UpdateItem";
        let req = ClaimRequest { owner, run_id, now_ms, lease_ms, ttl_s: self.ttl.as_secs() };
        let values = Item::from([
            (":o".to_owned(), s(owner)),
            (":lu".to_owned(), n(now_ms.saturating_add(lease_ms))),
            (":jrun".to_owned(), s(run_id)),
            (":exp".to_owned(), n(now_ms / 1000 + req.ttl_s)),
        ]);
        // No `run_id`: the claim stays out of the sparse index (an expired
        // outcome re-claimed leaves it); the finish copies `job_run` into it.
        // ReturnValues=ALL_OLD rather than ALL_NEW: the old item tells a fresh
        // claim from a take-over (and whose), and the new attempt is exactly
        // old + 1 because the write is atomic.
        let res = self
            .claimable_update(
                job,
                "SET #st = :ip, #ow = :o, #at = if_not_exists(#at, :zero) + :one, #lu = :lu, #jrun = :jrun, \
                 #exp = :exp REMOVE #res, #fin, #run",
                values,
                now_ms,
            )
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let old = match out.attributes {
                    Some(item) if !item.is_empty() => {
                        Some(parse_record(&item).map_err(|m| permanent(OP, format!("job {}: {m}", job.as_str())))?)
                    }
                    _ => None,
                };
                match lease::claim(old.as_ref(), &req).0 {
                    won @ (ClaimOutcome::Claimed(_) | ClaimOutcome::TakenOver { .. }) => Ok(won),
                    // The write went through, so the lease is ours whatever
                    // the old item looked like to our clock.
                    _ => Ok(ClaimOutcome::TakenOver {
                        fence: Fence { owner: owner.to_owned(), attempt: old.as_ref().map_or(0, |r| r.attempt) + 1 },
                        previous_owner: old.map(|r| r.owner).unwrap_or_default(),
                    }),
                }
            }
            Err(e) => {
                let old = condition_failed(e)?;
                let cur = self.refused_against(old, job).await?;
                match lease::claim(cur.as_ref(), &req).0 {
                    lost @ (ClaimOutcome::Busy { .. } | ClaimOutcome::Done(_)) => Ok(lost),
                    // Refused, yet claimable now: the record changed in
                    // between (a release, an expiry). Nothing was written.
                    _ => Err(ServiceError::Transient {
                        op: OP,
                        message: format!("job {}: claim refused on a record that is claimable now", job.as_str()),
                    }),
                }
            }
        }
    }

    async fn renew(&self, job: &JobId, fence: &Fence, until_ms: u64) -> Result<Result<(), LeaseError>, ServiceError> {
        let now = now_ms();
        let values = Item::from([(":u".to_owned(), n(until_ms))]);
        self.fenced(job, fence, now, "SET #lu = :u", values, |cur| lease::renew(cur, fence, until_ms, now)).await
    }

    async fn finish(
        &self,
        job: &JobId,
        fence: &Fence,
        terminal: Terminal,
        result_json: &str,
        now_ms: u64,
    ) -> Result<Result<(), LeaseError>, ServiceError> {
        let values = Item::from([
            (":st".to_owned(), s(Status::from(terminal).as_str())),
            (":zero".to_owned(), n(0)),
            (":res".to_owned(), s(result_json)),
            (":fin".to_owned(), n(now_ms)),
        ]);
        // finished_ms is what run status measures throughput by; it is
        // written in the same fenced write as the outcome, so a job counts as
        // finished exactly when it has a finish time. run_id (the index key)
        // likewise: the job enters the sparse index with its outcome.
        let set = "SET #st = :st, #lu = :zero, #res = :res, #fin = :fin, #run = #jrun";
        self.fenced(job, fence, now_ms, set, values, |cur| lease::finish(cur, fence, terminal, result_json, now_ms))
            .await
    }

    async fn release(&self, job: &JobId, fence: &Fence) -> Result<Result<(), LeaseError>, ServiceError> {
        let now = now_ms();
        let values = Item::from([(":zero".to_owned(), n(0))]);
        self.fenced(job, fence, now, "SET #lu = :zero", values, |cur| lease::release(cur, fence, now)).await
    }

    async fn get(&self, job: &JobId) -> Result<Option<OutcomeRecord>, ServiceError> {
        let now = now_ms();
        Ok(self.read(job).await?.filter(|r| is_live(r, now)))
    }

    async fn finish_unclaimed(
        &self,
        job: &JobId,
        req: &UnclaimedFinish<'_>,
    ) -> Result<Result<(), Unclaimed>, ServiceError> {
        const OP: &str = "UpdateItem";
        let now = req.now_ms;
        let values = Item::from([
            (":st".to_owned(), s(Status::from(req.terminal).as_str())),
            (":o".to_owned(), s(req.owner)),
            (":res".to_owned(), s(req.result_json)),
            (":fin".to_owned(), n(now)),
            (":run".to_owned(), s(req.run_id)),
            (":exp".to_owned(), n(now / 1000 + self.ttl.as_secs())),
        ]);
        let set = "SET #st = :st, #ow = :o, #at = if_not_exists(#at, :zero) + :one, #lu = :zero, #res = :res, \
                   #fin = :fin, #run = :run, #jrun = :run, #exp = :exp";
        let res = self.claimable_update(job, set, values, now).send().await;
        let old = match res {
            Ok(_) => return Ok(Ok(())),
            Err(e) => condition_failed(e)?,
        };
        let cur = self.refused_against(old, job).await?;
        match lease::finish_unclaimed(cur.as_ref(), req, self.ttl.as_secs()) {
            Err(stands) => Ok(Err(stands)),
            // Refused, yet writable now: the record changed in between.
            Ok(_) => Err(ServiceError::Transient {
                op: OP,
                message: format!("job {}: finish refused on a record that is writable now", job.as_str()),
            }),
        }
    }

    /// One eventually consistent BatchGetItem per 100 ids.
    async fn lookup(&self, jobs: &[JobId]) -> Result<HashMap<JobId, OutcomeRecord>, ServiceError> {
        self.batch_get(jobs, false).await
    }
}

/// The states a claim (or a finish without one) may write over: absent, past
/// its TTL, or in progress with an ended lease.
const CLAIMABLE: &str = "attribute_not_exists(#pk) OR #exp <= :now_s OR (#st = :ip AND #lu <= :now_ms)";

/// The old item of a refused condition, or the error (classified) if it was
/// something else. `Ok(None)`: refused, but the service sent no item.
fn condition_failed(e: SdkError<UpdateItemError>) -> Result<Option<Item>, ServiceError> {
    match e {
        SdkError::ServiceError(ctx) if matches!(ctx.err(), UpdateItemError::ConditionalCheckFailedException(_)) => {
            match ctx.into_err() {
                UpdateItemError::ConditionalCheckFailedException(c) => Ok(c.item),
                _ => Ok(None),
            }
        }
        other => Err(classify("UpdateItem", &other)),
    }
}

fn key(job: &JobId) -> Item {
    Item::from([("job_id".to_owned(), s(job.as_str()))])
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// `#alias → attribute` for the given aliases. Every attribute goes through
/// an alias: `status`, `owner` and `result` are DynamoDB reserved words, and
/// one rule is simpler than knowing which.
fn names(aliases: &[&str]) -> HashMap<String, String> {
    aliases
        .iter()
        .filter_map(|a| {
            let attr = match *a {
                "pk" => "job_id",
                "st" => "status",
                "ow" => "owner",
                "at" => "attempt",
                "lu" => "lease_until_ms",
                "run" => "run_id",
                "jrun" => "job_run",
                "exp" => "expires_at",
                "res" => "result",
                "fin" => "finished_ms",
                _ => return None,
            };
            Some((format!("#{a}"), attr.to_owned()))
        })
        .collect()
}

/// Reads a stored item into the core's record. An item without
/// `expires_at` never expires (written by hand, or before TTL was on).
pub fn parse_record(item: &HashMap<String, AttributeValue>) -> Result<OutcomeRecord, String> {
    let get_s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str);
    let get_n = |k: &str| -> Result<Option<u64>, String> {
        match item.get(k) {
            None => Ok(None),
            Some(v) => {
                let raw = v.as_n().map_err(|_| format!("`{k}` is not a number"))?;
                raw.parse::<u64>().map(Some).map_err(|_| format!("`{k}` is not a whole number: {raw}"))
            }
        }
    };
    let status_raw = get_s("status").ok_or("missing `status`")?;
    let status = Status::parse(status_raw).ok_or_else(|| format!("unknown status `{status_raw}`"))?;
    Ok(OutcomeRecord {
        status,
        owner: get_s("owner").ok_or("missing `owner`")?.to_owned(),
        attempt: get_n("attempt")?.ok_or("missing `attempt`")?,
        lease_until_ms: get_n("lease_until_ms")?.unwrap_or(0),
        result: get_s("result").map(str::to_owned),
        // `job_run` since the sparse index; `run_id` alone on items written before it.
        run_id: get_s("job_run").or_else(|| get_s("run_id")).unwrap_or_default().to_owned(),
        expires_at_s: get_n("expires_at")?.unwrap_or(u64::MAX),
    })
}

/// The item a record is stored as (for tools and tests that seed the table).
pub fn record_item(job: &JobId, r: &OutcomeRecord) -> HashMap<String, AttributeValue> {
    let mut item = key(job);
    item.insert("status".into(), s(r.status.as_str()));
    item.insert("owner".into(), s(&r.owner));
    item.insert("attempt".into(), n(r.attempt));
    item.insert("lease_until_ms".into(), n(r.lease_until_ms));
    item.insert("job_run".into(), s(&r.run_id));
    // Only outcomes carry the sparse index's key.
    if r.status != Status::InProgress {
        item.insert("run_id".into(), s(&r.run_id));
    }
    item.insert("expires_at".into(), n(r.expires_at_s));
    if let Some(res) = &r.result {
        item.insert("result".into(), s(res));
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> OutcomeRecord {
        OutcomeRecord {
            status: Status::Completed,
            owner: "w1".into(),
            attempt: 3,
            lease_until_ms: 0,
            result: Some("{}".into()),
            run_id: "r".into(),
            expires_at_s: 1_700_000_000,
        }
    }

    #[test]
    fn records_round_trip_through_items() {
        let id = JobId::parse("j-1").expect("valid id");
        let r = rec();
        let item = record_item(&id, &r);
        assert_eq!(parse_record(&item), Ok(r.clone()));
        let mut in_progress = OutcomeRecord { status: Status::InProgress, result: None, ..r };
        in_progress.lease_until_ms = 5;
        assert_eq!(parse_record(&record_item(&id, &in_progress)), Ok(in_progress));
    }

    #[test]
    fn malformed_items_are_errors_not_panics() {
        let id = JobId::parse("j-1").expect("valid id");
        let good = record_item(&id, &rec());
        let mut no_status = good.clone();
        no_status.remove("status");
        assert!(parse_record(&no_status).is_err());
        let mut bad_status = good.clone();
        bad_status.insert("status".into(), s("NOPE"));
        assert!(parse_record(&bad_status).is_err());
        let mut bad_attempt = good.clone();
        bad_attempt.insert("attempt".into(), s("3"));
        assert!(parse_record(&bad_attempt).is_err());
        let mut neg = good.clone();
        neg.insert("attempt".into(), AttributeValue::N("-1".into()));
        assert!(parse_record(&neg).is_err());
        let mut no_ttl = good;
        no_ttl.remove("expires_at");
        assert_eq!(parse_record(&no_ttl).map(|r| r.expires_at_s), Ok(u64::MAX));
    }

    #[test]
    fn liveness_matches_the_core_rule() {
        let r = OutcomeRecord { expires_at_s: 10, ..rec() };
        assert!(is_live(&r, 9_999));
        assert!(!is_live(&r, 10_000));
        assert_eq!(names(&["st", "pk"]).get("#st").map(String::as_str), Some("status"));
    }
}
