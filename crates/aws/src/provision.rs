//! Idempotent creation of everything scorefleet runs on: an input queue with
//! a dead-letter queue (RedrivePolicy), an output queue, the dedup table
//! (on-demand, TTL on `expires_at`, the [`RUN_INDEX`] index by `run_id` for
//! run status) and a bucket. For tests, the demo and
//! first-time users; production infrastructure belongs in the deploy
//! templates.
//!
//! Running it twice converges on the same resources: existing queues get the
//! wanted attributes set again, an existing table or bucket is accepted, an
//! already-enabled TTL is left alone. Queue URLs and ARNs are always asked
//! of the service, never built or parsed (emulators use different hosts and
//! account ids).

use crate::config::AwsConfig;
use crate::errors::{classify, error_code, permanent};
use crate::metrics::ApiCounters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use scorefleet_core::traits::ServiceError;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The TTL attribute of the dedup table.
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The global secondary index of the dedup table by `run_id`, which run
/// status queries. Sparse: only a finish writes `run_id`, so only outcomes are
/// in it and a job costs one index write. It projects only
/// [`RUN_INDEX_ATTRIBUTES`], so the `result` JSON stays out of it and a
/// status query reads ~100 bytes per job.
pub const RUN_INDEX: &str = "by_run";
/// The non-key attributes [`RUN_INDEX`] carries (its keys `run_id` and
/// `job_id` come with it).
pub const RUN_INDEX_ATTRIBUTES: [&str; 3] = ["status", "finished_ms", "attempt"];
/// How long to wait for a new table to become ACTIVE.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    /// The jobs queue the workers read.
    pub input_queue: String,
    /// Where a job goes after `max_receive_count` failed deliveries.
    pub dead_letter_queue: String,
    /// The results queue.
    pub output_queue: String,
    /// The dedup/outcome table.
    pub table: String,
    /// The bucket for images and model weights.
    pub bucket: String,
    /// Deliveries of one message before SQS moves it to the DLQ.
    pub max_receive_count: u32,
    /// The input queue's default visibility timeout (the worker's lease).
    pub visibility_timeout: Duration,
}

impl StackSpec {
    /// `{prefix}-in`, `{prefix}-dlq`, `{prefix}-out`, `{prefix}-outcomes` and
    /// bucket `{prefix}` (lower-cased: bucket names must be), with 5
    /// deliveries before the DLQ and a 60 s visibility timeout.
    pub fn named(prefix: &str) -> Self {
        Self {
            input_queue: format!("{prefix}-in"),
            dead_letter_queue: format!("{prefix}-dlq"),
            output_queue: format!("{prefix}-out"),
            table: format!("{prefix}-outcomes"),
            bucket: prefix.to_ascii_lowercase(),
            max_receive_count: 5,
            visibility_timeout: Duration::from_secs(60),
        }
    }
}

/// What exists after [`provision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The input queue's URL.
    pub input_queue_url: String,
    /// The dead-letter queue's URL.
    pub dead_letter_queue_url: String,
    /// The dead-letter queue's ARN (the redrive target).
    pub dead_letter_queue_arn: String,
    /// The output queue's URL.
    pub output_queue_url: String,
    /// The table name.
    pub table: String,
    /// The bucket name.
    pub bucket: String,
}

/// A queue's redrive policy, read back from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    /// The DLQ's ARN.
    pub dead_letter_target_arn: String,
    /// Deliveries before the move.
    pub max_receive_count: u32,
}

/// Creates (or converges) every resource of `spec`.
pub async fn provision(cfg: &AwsConfig, spec: &StackSpec, counters: &ApiCounters) -> Result<Provisioned, ServiceError> {
    let sqs = cfg.sqs();
    let dead_letter_queue_url = ensure_queue(&sqs, &spec.dead_letter_queue, HashMap::new(), counters).await?;
    let dead_letter_queue_arn = queue_arn(&sqs, &dead_letter_queue_url, counters).await?;
    let redrive = format!(
        r#"{{"deadLetterTargetArn":"{dead_letter_queue_arn}","maxReceiveCount":"{}"}}"#,
        spec.max_receive_count
    );
    let input_attrs = HashMap::from([
        (QueueAttributeName::RedrivePolicy, redrive),
        (QueueAttributeName::VisibilityTimeout, spec.visibility_timeout.as_secs().to_string()),
    ]);
    let input_queue_url = ensure_queue(&sqs, &spec.input_queue, input_attrs, counters).await?;
    let output_queue_url =
        ensure_queue(&sqs, &spec.output_queue, output_attributes(&spec.output_queue), counters).await?;
    ensure_table(&cfg.dynamodb(), &spec.table, counters).await?;
    let region = cfg.sdk.region().map(|r| r.as_ref().to_owned());
    ensure_bucket(&cfg.s3(), &spec.bucket, region.as_deref(), counters).await?;
    Ok(Provisioned {
        input_queue_url,
        dead_letter_queue_url,
        dead_letter_queue_arn,
        output_queue_url,
        table: spec.table.clone(),
        bucket: spec.bucket.clone(),
    })
}

/// The output queue's attributes: none for a standard queue. A name ending
/// in `.fifo` makes a FIFO queue that deduplicates per message group (the
/// worker sends each result with its job id as group and deduplication id,
/// so a re-sent result within five minutes is not delivered twice) with the
/// throughput limit per group (high-throughput mode: no queue-wide 300 per
/// second cap).
pub fn output_attributes(name: &str) -> HashMap<QueueAttributeName, String> {
    if !name.ends_with(".fifo") {
        return HashMap::new();
    }
    HashMap::from([
        (QueueAttributeName::FifoQueue, "true".to_owned()),
        (QueueAttributeName::DeduplicationScope, "messageGroup".to_owned()),
        (QueueAttributeName::FifoThroughputLimit, "perMessageGroupId".to_owned()),
    ])
}

/// Creates a queue (or finds it) and sets `attributes` on it; returns its URL.
/// `FifoQueue` is given only at creation (a queue's type cannot change).
pub async fn ensure_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
    counters: &ApiCounters,
) -> Result<String, ServiceError> {
    counters.incr("CreateQueue");
    let created = sqs.create_queue().queue_name(name).set_attributes(Some(attributes.clone())).send().await;
    let url = match created {
        Ok(out) => out.queue_url,
        // The queue exists with other attributes: find it and converge below.
        Err(e) if matches!(error_code(&e), Some("QueueAlreadyExists" | "QueueNameExists")) => {
            counters.incr("GetQueueUrl");
            sqs.get_queue_url().queue_name(name).send().await.map_err(|e| classify("GetQueueUrl", &e))?.queue_url
        }
        Err(e) => return Err(classify("CreateQueue", &e)),
    };
    let url = url.ok_or_else(|| permanent("CreateQueue", format!("no URL returned for queue {name}")))?;
    let mut attributes = attributes;
    attributes.remove(&QueueAttributeName::FifoQueue);
    if !attributes.is_empty() {
        // Also when CreateQueue succeeded: some endpoints return an existing
        // queue without applying differing attributes.
        counters.incr("SetQueueAttributes");
        sqs.set_queue_attributes()
            .queue_url(&url)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| classify("SetQueueAttributes", &e))?;
    }
    Ok(url)
}

/// One attribute of a queue, if the service reports it.
async fn queue_attribute(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    counters: &ApiCounters,
    name: QueueAttributeName,
) -> Result<Option<String>, ServiceError> {
    const OP: &str = "GetQueueAttributes";
    counters.incr(OP);
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|e| classify(OP, &e))?;
    Ok(out.attributes.and_then(|mut a| a.remove(&name)))
}

/// A queue's ARN, as the service reports it.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str, counters: &ApiCounters) -> Result<String, ServiceError> {
    queue_attribute(sqs, url, counters, QueueAttributeName::QueueArn)
        .await?
        .ok_or_else(|| permanent("GetQueueAttributes", format!("no QueueArn for {url}")))
}

/// Messages received from a queue and not yet deleted or visible again
/// (SQS's ApproximateNumberOfMessagesNotVisible: approximate by design).
pub async fn queue_in_flight(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    counters: &ApiCounters,
) -> Result<Option<u64>, ServiceError> {
    Ok(queue_attribute(sqs, url, counters, QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .await?
        .and_then(|v| v.parse().ok()))
}

/// Reads a queue's own visibility timeout (`None` when it does not say).
pub async fn queue_visibility(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    counters: &ApiCounters,
) -> Result<Option<Duration>, ServiceError> {
    let v = queue_attribute(sqs, url, counters, QueueAttributeName::VisibilityTimeout).await?;
    Ok(v.and_then(|v| v.parse().ok()).map(Duration::from_secs))
}

/// Reads a queue's redrive policy, if it has one.
pub async fn redrive_policy(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    counters: &ApiCounters,
) -> Result<Option<RedrivePolicy>, ServiceError> {
    match queue_attribute(sqs, url, counters, QueueAttributeName::RedrivePolicy).await? {
        None => Ok(None),
        Some(json) => parse_redrive_policy(&json).map(Some).map_err(|m| permanent("GetQueueAttributes", m)),
    }
}

/// Parses a RedrivePolicy document. `maxReceiveCount` comes back as a number
/// from some endpoints (moto) and as a string from others (ministack, and
/// what AWS documents), so both are read.
pub fn parse_redrive_policy(json: &str) -> Result<RedrivePolicy, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("RedrivePolicy is not JSON: {e}"))?;
    let arn = v
        .get("deadLetterTargetArn")
        .and_then(|a| a.as_str())
        .ok_or("RedrivePolicy has no deadLetterTargetArn")?
        .to_owned();
    let count = match v.get("maxReceiveCount") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .ok_or("RedrivePolicy has no valid maxReceiveCount")?;
    Ok(RedrivePolicy { dead_letter_target_arn: arn, max_receive_count: count })
}

/// Whether a table description has [`RUN_INDEX`]: `None` without it,
/// `Some(active)` with it.
pub fn run_index_status(desc: &TableDescription) -> Option<bool> {
    desc.global_secondary_indexes()
        .iter()
        .find(|i| i.index_name() == Some(RUN_INDEX))
        // An endpoint that reports no index status has nothing to wait for.
        .map(|i| i.index_status().is_none_or(|s| *s == IndexStatus::Active))
}

/// Whether `table` has [`RUN_INDEX`] (one `DescribeTable`).
pub async fn has_run_index(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    counters: &ApiCounters,
) -> Result<bool, ServiceError> {
    counters.incr("DescribeTable");
    let out = ddb.describe_table().table_name(table).send().await.map_err(|e| classify("DescribeTable", &e))?;
    Ok(out.table.as_ref().and_then(run_index_status).is_some())
}

/// Creates the dedup table (on-demand, key `job_id`, global secondary index
/// [`RUN_INDEX`] on `run_id`) unless it exists, waits until it and the index
/// are ACTIVE, and turns TTL on for [`TTL_ATTRIBUTE`].
///
/// The migration path of an existing table: one without the index gets it
/// added (`UpdateTable`; DynamoDB backfills it from the items that carry a
/// `run_id`, and this waits until it is ACTIVE); if the endpoint refuses,
/// the table is accepted as it is, with a warning, and run status fails
/// naming the index. A table whose index predates the sparse index needs no
/// change: the key is the same attribute, and its entries of jobs still in
/// progress (written by older workers' claims) leave it as those jobs
/// finish or are taken over.
pub async fn ensure_table(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    counters: &ApiCounters,
) -> Result<(), ServiceError> {
    let build = |e: aws_sdk_dynamodb::error::BuildError| permanent("CreateTable", e.to_string());
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build)
    };
    let hash_key = |name: &str| KeySchemaElement::builder().attribute_name(name).key_type(KeyType::Hash).build();
    let projection = run_index_projection();
    let by_run = GlobalSecondaryIndex::builder()
        .index_name(RUN_INDEX)
        .key_schema(hash_key("run_id").map_err(build)?)
        .projection(projection)
        .build()
        .map_err(build)?;
    counters.incr("CreateTable");
    let created = ddb
        .create_table()
        .table_name(table)
        .attribute_definitions(attribute("job_id")?)
        .attribute_definitions(attribute("run_id")?)
        .key_schema(hash_key("job_id").map_err(build)?)
        .global_secondary_indexes(by_run)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
        Err(e) => return Err(classify("CreateTable", &e)),
    }
    let deadline = Instant::now() + TABLE_ACTIVE_TIMEOUT;
    let mut index_asked = false;
    loop {
        counters.incr("DescribeTable");
        let out = ddb.describe_table().table_name(table).send().await.map_err(|e| classify("DescribeTable", &e))?;
        let active = out.table.as_ref().and_then(|t| t.table_status.as_ref()) == Some(&TableStatus::Active);
        // The index must be ACTIVE too: a Query on a CREATING index fails.
        let index = out.table.as_ref().and_then(run_index_status);
        if active && index.is_none() && !index_asked {
            index_asked = true;
            match add_run_index(ddb, table, counters).await {
                Ok(()) => {
                    tracing::info!(table, index = RUN_INDEX, "adding the run index to an existing table");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(table, index = RUN_INDEX, error = %e, "could not add the run index; `status` will not work on this table");
                    break;
                }
            }
        }
        if active && index != Some(false) {
            if index.is_none() {
                // Asked for, yet not listed: an endpoint that ignores the update.
                tracing::warn!(table, index = RUN_INDEX, "the table has no run index; `status` will not work on it");
            }
            break;
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::Transient {
                op: "DescribeTable",
                message: format!("table {table} not ACTIVE after {TABLE_ACTIVE_TIMEOUT:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    counters.incr("DescribeTimeToLive");
    let ttl = ddb
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| classify("DescribeTimeToLive", &e))?
        .time_to_live_description;
    let on = ttl.as_ref().is_some_and(|d| {
        matches!(d.time_to_live_status, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling))
            && d.attribute_name.as_deref() == Some(TTL_ATTRIBUTE)
    });
    if on {
        return Ok(());
    }
    counters.incr("UpdateTimeToLive");
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(|e| permanent("UpdateTimeToLive", e.to_string()))?;
    match ddb.update_time_to_live().table_name(table).time_to_live_specification(spec).send().await {
        Ok(_) => Ok(()),
        // A concurrent provision, or an endpoint whose Describe lags.
        Err(e) if aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string().contains("already enabled") => Ok(()),
        Err(e) => Err(classify("UpdateTimeToLive", &e)),
    }
}

/// The [`RUN_INDEX`] definition: key `run_id`, projecting [`RUN_INDEX_ATTRIBUTES`].
fn run_index_projection() -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::Include)
        .set_non_key_attributes(Some(RUN_INDEX_ATTRIBUTES.iter().map(|a| (*a).to_owned()).collect()))
        .build()
}

/// Adds [`RUN_INDEX`] to an existing table (one `UpdateTable`); DynamoDB
/// builds it in the background.
async fn add_run_index(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    counters: &ApiCounters,
) -> Result<(), ServiceError> {
    use aws_sdk_dynamodb::types::{CreateGlobalSecondaryIndexAction, GlobalSecondaryIndexUpdate};
    let build = |e: aws_sdk_dynamodb::error::BuildError| permanent("UpdateTable", e.to_string());
    let create = CreateGlobalSecondaryIndexAction::builder()
        .index_name(RUN_INDEX)
        .key_schema(
            KeySchemaElement::builder().attribute_name("run_id").key_type(KeyType::Hash).build().map_err(build)?,
        )
        .projection(run_index_projection())
        .build()
        .map_err(build)?;
    counters.incr("UpdateTable");
    ddb.update_table()
        .table_name(table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("run_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)?,
        )
        .global_secondary_index_updates(GlobalSecondaryIndexUpdate::builder().create(create).build())
        .send()
        .await
        .map_err(|e| classify("UpdateTable", &e))?;
    Ok(())
}

/// Creates a bucket unless this account already owns it.
pub async fn ensure_bucket(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    region: Option<&str>,
    counters: &ApiCounters,
) -> Result<(), ServiceError> {
    counters.incr("CreateBucket");
    let mut req = s3.create_bucket().bucket(bucket);
    // us-east-1 is the one region that refuses an explicit constraint.
    if let Some(r) = region.filter(|r| *r != "us-east-1") {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(r)).build(),
        );
    }
    match req.send().await {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some("BucketAlreadyOwnedByYou") => Ok(()),
        Err(e) if error_code(&e) == Some("BucketAlreadyExists") => {
            // Some endpoints say this for a bucket we own: ours iff we can
            // reach it.
            counters.incr("HeadBucket");
            s3.head_bucket().bucket(bucket).send().await.map(|_| ()).map_err(|_| classify("CreateBucket", &e))
        }
        Err(e) => Err(classify("CreateBucket", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_reads_numbers_and_strings() {
        let want = RedrivePolicy { dead_letter_target_arn: "arn:x".into(), max_receive_count: 3 };
        assert_eq!(parse_redrive_policy(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":3}"#), Ok(want.clone()));
        assert_eq!(parse_redrive_policy(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":"3"}"#), Ok(want));
        assert!(parse_redrive_policy(r#"{"deadLetterTargetArn":"arn:x"}"#).is_err());
        assert!(parse_redrive_policy(r#"{"maxReceiveCount":3}"#).is_err());
        assert!(parse_redrive_policy("nope").is_err());
    }

    #[test]
    fn named_spec_makes_a_valid_bucket_name() {
        let s = StackSpec::named("SF-Test-1");
        assert_eq!(s.bucket, "sf-test-1");
        assert_eq!(s.input_queue, "SF-Test-1-in");
    }
}
