//! Run status against the local emulator: the sparse `by_run` index that
//! provision creates (or adds to an older table), counts by query that stay
//! exact under duplicate claims and finishes in both dedup modes, and the run
//! record's total, which never doubles or shrinks.

mod common;

use common::{config, counters};
use scorefleet_aws::AwsConfig;
use scorefleet_aws::DynamoOutcomeStore;
use scorefleet_aws::provision::{RUN_INDEX, RUN_INDEX_ATTRIBUTES, has_run_index};
use scorefleet_core::job::JobId;
use scorefleet_core::lease::{ClaimOutcome, Fence, LeaseError, Terminal, Unclaimed, UnclaimedFinish};
use scorefleet_core::traits::{OutcomeStore, ServiceError, now_ms};

const LEASE_MS: u64 = 60_000;

async fn claim(store: &DynamoOutcomeStore, id: &JobId, run: &str, owner: &str, now: u64) -> Fence {
    match store.claim(id, run, owner, now, LEASE_MS).await.expect("claim") {
        ClaimOutcome::Claimed(f) | ClaimOutcome::TakenOver { fence: f, .. } => f,
        other => panic!("{other:?}"),
    }
}

/// A table as it was made before the run index existed: key `job_id`, no
/// secondary index (not provisioned).
async fn table_without_index(cfg: &AwsConfig, tag: &str) -> String {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let name = common::unique(tag);
    cfg.dynamodb()
        .create_table()
        .table_name(&name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("job_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("job_id").key_type(KeyType::Hash).build().expect("key"))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create an index-less table");
    name
}

/// A job's item as stored, every attribute.
async fn raw_item(
    cfg: &AwsConfig,
    table: &str,
    id: &JobId,
) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    cfg.dynamodb()
        .get_item()
        .table_name(table)
        .key("job_id", aws_sdk_dynamodb::types::AttributeValue::S(id.as_str().into()))
        .send()
        .await
        .expect("get")
        .item
        .expect("item")
}

#[tokio::test]
async fn provision_creates_the_run_index_with_a_small_projection() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let table = common::table(&cfg, "runindex").await;
    assert!(has_run_index(&cfg.dynamodb(), &table, &counters()).await.expect("describe"));
    let desc = cfg.dynamodb().describe_table().table_name(&table).send().await.expect("describe").table.expect("table");
    let index =
        desc.global_secondary_indexes().iter().find(|i| i.index_name() == Some(RUN_INDEX)).expect("the run index");
    let keys: Vec<_> = index.key_schema().iter().map(|k| k.attribute_name()).collect();
    assert_eq!(keys, ["run_id"]);
    let mut projected: Vec<String> = index.projection().map(|p| p.non_key_attributes().to_vec()).unwrap_or_default();
    projected.sort();
    let mut want: Vec<String> = RUN_INDEX_ATTRIBUTES.iter().map(|a| (*a).to_owned()).collect();
    want.sort();
    assert_eq!(projected, want, "the result JSON stays out of the index");
    // Provisioning again converges on the same table.
    scorefleet_aws::provision::ensure_table(&cfg.dynamodb(), &table, &counters()).await.expect("again");
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn run_status_counts_each_job_once_and_only_its_own_run() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let table = common::table(&cfg, "runstatus").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, c.clone());
    let run_a = common::unique("ra");
    let run_b = common::unique("rb");
    let ids = |tag: &str, k: usize| -> Vec<JobId> {
        (0..k).map(|i| JobId::parse(&common::unique(&format!("{tag}{i}"))).expect("id")).collect()
    };
    let (a, b) = (ids("a", 6), ids("b", 2));
    let now = now_ms();

    // Run A: 2 completed, 1 failed, 2 in progress, 1 never claimed (the
    // claims are not in the sparse index: in_progress counts none of them).
    let mut fences = Vec::new();
    for id in &a[..5] {
        fences.push(claim(&store, id, &run_a, "w1", now).await);
    }
    for (i, terminal) in [(0, Terminal::Completed), (1, Terminal::Completed), (2, Terminal::Failed)] {
        assert_eq!(store.finish(&a[i], &fences[i], terminal, "{}", now).await.expect("finish"), Ok(()));
    }
    // Run B: 1 completed, 1 in progress; never counted for A.
    let fb = claim(&store, &b[0], &run_b, "w2", now).await;
    store.finish(&b[0], &fb, Terminal::Completed, "{}", now).await.expect("finish").expect("ours");
    claim(&store, &b[1], &run_b, "w2", now).await;
    assert!(store.record_enqueued(&run_a, 6, now).await.expect("record"));

    // finish writes its time, for throughput.
    let raw = raw_item(&cfg, &table, &a[0]).await;
    assert_eq!(raw.get("finished_ms").and_then(|v| v.as_n().ok()), Some(&now.to_string()));
    // A claim stays out of the index: run_id is written by the finish only.
    let claimed = raw_item(&cfg, &table, &a[3]).await;
    assert!(!claimed.contains_key("run_id"), "an in-progress item carries no index key: {claimed:?}");
    assert_eq!(raw.get("run_id").and_then(|v| v.as_s().ok()), Some(&run_a), "the finish put it into the index");

    let before = (c.get("Query"), c.get("GetItem"));
    let st = store.run_status(&run_a, now_ms()).await.expect("status");
    assert_eq!((c.get("Query") - before.0, c.get("GetItem") - before.1), (1, 1), "one page, one run record read");
    assert_eq!((st.total, st.completed, st.failed, st.in_progress, st.finished_last_minute), (Some(6), 2, 1, 0, 3));
    assert_eq!((st.first_finished_ms, st.last_finished_ms), (Some(now), Some(now)));
    assert_eq!(st.enqueued_ms, Some(now));

    // Duplicate deliveries: a finished job claimed again is Done, finished
    // again is refused; a live lease claimed by another worker is Busy; an
    // ended lease taken over is still one job in progress.
    assert!(matches!(store.claim(&a[0], &run_a, "w3", now + 1, LEASE_MS).await.expect("claim"), ClaimOutcome::Done(_)));
    assert_eq!(
        store.finish(&a[0], &fences[0], Terminal::Completed, "{}", now + 2).await.expect("finish"),
        Err(LeaseError::AlreadyFinished)
    );
    assert!(matches!(
        store.claim(&a[3], &run_a, "w3", now + 1, LEASE_MS).await.expect("claim"),
        ClaimOutcome::Busy { .. }
    ));
    let taken = claim(&store, &a[4], &run_a, "w3", now + LEASE_MS).await;
    assert_eq!(taken.attempt, 2);
    let again = store.run_status(&run_a, now_ms()).await.expect("status");
    assert_eq!(again, st, "duplicates change nothing");

    // The taker-over finishes: one more done, one fewer in flight.
    store.finish(&a[4], &taken, Terminal::Completed, "{}", now + 3).await.expect("finish").expect("ours");
    let after = store.run_status(&run_a, now_ms()).await.expect("status");
    assert_eq!((after.completed, after.failed, after.in_progress, after.last_finished_ms), (3, 1, 0, Some(now + 3)));

    // Finish-only jobs of the same run: one write each, counted once; a
    // duplicate's finish is refused and changes nothing.
    let unclaimed =
        |terminal, at| UnclaimedFinish { owner: "u1", run_id: &run_a, terminal, result_json: "{}", now_ms: at };
    assert_eq!(store.finish_unclaimed(&a[5], &unclaimed(Terminal::Completed, now + 4)).await.expect("finish"), Ok(()));
    assert!(matches!(
        store.finish_unclaimed(&a[5], &unclaimed(Terminal::Failed, now + 5)).await.expect("finish"),
        Err(Unclaimed::Done(_))
    ));
    let last = store.run_status(&run_a, now_ms()).await.expect("status");
    assert_eq!((last.completed, last.failed, last.finished(), last.total), (4, 1, 5, Some(6)));
    assert_eq!(last.last_finished_ms, Some(now + 4));

    let other = store.run_status(&run_b, now_ms()).await.expect("status");
    assert_eq!((other.total, other.completed, other.failed, other.in_progress), (None, 1, 0, 0));
    let none = store.run_status("no-such-run", now_ms()).await.expect("status");
    assert_eq!((none.total, none.finished(), none.in_progress), (None, 0, 0));
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn record_enqueued_never_lowers_or_doubles_the_total() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let table = common::table(&cfg, "runtotal").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, counters());
    let run = common::unique("r");
    let now = now_ms();
    let total = |st: scorefleet_aws::RunStatus| (st.total, st.enqueued_ms);

    assert!(store.record_enqueued(&run, 10, now).await.expect("record"));
    // The same command again: the same ids, the same total.
    assert!(store.record_enqueued(&run, 10, now + 1).await.expect("record"));
    assert_eq!(total(store.run_status(&run, now + 2).await.expect("status")), (Some(10), Some(now)));
    // A partial re-run does not lower it.
    assert!(!store.record_enqueued(&run, 4, now + 3).await.expect("record"));
    assert_eq!(total(store.run_status(&run, now + 4).await.expect("status")), (Some(10), Some(now)));
    // A bigger manifest raises it; the first enqueue time stays.
    assert!(store.record_enqueued(&run, 12, now + 5).await.expect("record"));
    assert_eq!(total(store.run_status(&run, now + 6).await.expect("status")), (Some(12), Some(now)));
    // The run record is not a job of the run.
    let st = store.run_status(&run, now + 7).await.expect("status");
    assert_eq!((st.completed, st.failed, st.in_progress), (0, 0, 0));
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn begin_run_is_true_once_per_run_and_never_after_a_total_or_past_its_ttl() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let table = common::table(&cfg, "runbegin").await;
    let store =
        DynamoOutcomeStore::new(cfg.dynamodb(), &table, counters()).with_ttl(std::time::Duration::from_secs(3_600));
    let (run, other) = (common::unique("r"), common::unique("o"));
    let now = now_ms();
    assert!(store.begin_run(&run, now).await.expect("begin"), "the run's first enqueue");
    assert!(!store.begin_run(&run, now + 1).await.expect("begin"), "a second enqueue of the run");
    // The total of the first enqueue is kept beside the mark, and the record
    // still reads as the run's.
    assert!(store.record_enqueued(&run, 5, now + 2).await.expect("record"));
    assert_eq!(store.run_status(&run, now + 3).await.expect("status").total, Some(5));
    // A run whose total was recorded by a producer that did not mark starts
    // (an older one) is not new either.
    assert!(store.record_enqueued(&other, 3, now).await.expect("record"));
    assert!(!store.begin_run(&other, now + 1).await.expect("begin"));
    // Past the record's TTL the run id starts over.
    let later = now + 3_601_000;
    assert!(store.begin_run(&run, later).await.expect("begin"), "an expired record counts as absent");
    assert_eq!(store.run_status(&run, later).await.expect("status").total, None, "its old total is gone");
    assert!(store.record_enqueued(&run, 2, later).await.expect("record"));
    assert_eq!(store.run_status(&run, later).await.expect("status").total, Some(2), "the new use's total");
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn a_table_without_the_run_index_fails_status_naming_the_index() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let ddb = cfg.dynamodb();
    let table = table_without_index(&cfg, "oldtable").await;
    let store = DynamoOutcomeStore::new(ddb.clone(), &table, counters());
    assert!(!has_run_index(&ddb, &table, &counters()).await.expect("describe"));
    match store.run_status("r", now_ms()).await {
        Err(ServiceError::Permanent { message, .. }) => {
            assert!(message.contains(RUN_INDEX) && message.contains(&table), "{message}")
        }
        other => panic!("expected a permanent error naming the index, got {other:?}"),
    }
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn run_status_reads_every_page() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let table = common::table(&cfg, "runpages").await;
    // Pages of 3 items: 11 jobs take 4 pages (5 when the last page is full
    // and the service only learns on the next request that nothing is left).
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, c.clone()).with_status_page_size(3);
    let run = common::unique("r");
    let now = now_ms();
    for i in 0..11 {
        let id = JobId::parse(&common::unique(&format!("p{i}"))).expect("id");
        let f = claim(&store, &id, &run, "w", now).await;
        let terminal = if i % 2 == 0 { Terminal::Completed } else { Terminal::Failed };
        store.finish(&id, &f, terminal, "{}", now).await.expect("finish").expect("ours");
    }
    let before = c.get("Query");
    let st = store.run_status(&run, now_ms()).await.expect("status");
    assert_eq!((st.completed, st.failed), (6, 5));
    assert!((4..=5).contains(&(c.get("Query") - before)), "{} pages", c.get("Query") - before);
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn provisioning_adds_the_run_index_to_an_older_table_and_counts_its_outcomes_and_legacy_claims() {
    if common::skip() {
        return;
    }
    use aws_sdk_dynamodb::types::AttributeValue;
    let cfg = config().await;
    let ddb = cfg.dynamodb();
    let table = table_without_index(&cfg, "migrate").await;
    // Items as older workers wrote them: run_id on every item, claims included.
    let run = common::unique("r");
    let now = now_ms();
    for (id, status) in [("old-done", "COMPLETED"), ("old-failed", "FAILED"), ("old-claim", "IN_PROGRESS")] {
        let mut item = std::collections::HashMap::from([
            ("job_id".to_owned(), AttributeValue::S(common::unique(id))),
            ("status".to_owned(), AttributeValue::S(status.into())),
            ("owner".to_owned(), AttributeValue::S("old".into())),
            ("attempt".to_owned(), AttributeValue::N("1".into())),
            ("lease_until_ms".to_owned(), AttributeValue::N((now + LEASE_MS).to_string())),
            ("run_id".to_owned(), AttributeValue::S(run.clone())),
            ("expires_at".to_owned(), AttributeValue::N((now / 1000 + 3600).to_string())),
        ]);
        if status != "IN_PROGRESS" {
            item.insert("result".into(), AttributeValue::S("{}".into()));
            item.insert("finished_ms".into(), AttributeValue::N(now.to_string()));
        }
        ddb.put_item().table_name(&table).set_item(Some(item)).send().await.expect("put");
    }
    scorefleet_aws::provision::ensure_table(&ddb, &table, &counters()).await.expect("provision adds the index");
    assert!(has_run_index(&ddb, &table, &counters()).await.expect("describe"), "the index was added");
    let store = DynamoOutcomeStore::new(ddb.clone(), &table, counters());
    // New workers on the migrated table: a claim and its finish, and a finish-only job.
    let fresh = JobId::parse(&common::unique("new")).expect("id");
    let f = claim(&store, &fresh, &run, "w", now).await;
    store.finish(&fresh, &f, Terminal::Completed, "{}", now).await.expect("finish").expect("ours");
    let unclaimed =
        UnclaimedFinish { owner: "u", run_id: &run, terminal: Terminal::Failed, result_json: "{}", now_ms: now };
    let solo = JobId::parse(&common::unique("solo")).expect("id");
    assert_eq!(store.finish_unclaimed(&solo, &unclaimed).await.expect("finish"), Ok(()));
    // The index backfills in the background on DynamoDB: wait for the counts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = store.run_status(&run, now_ms()).await.expect("status");
        if (st.completed, st.failed, st.in_progress) == (2, 2, 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "status never reached 2/2/1: {st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    common::delete_table(&cfg, &table).await;
}
