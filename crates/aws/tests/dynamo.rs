//! The DynamoDB outcome store against the local emulator: every lease
//! transition of `scorefleet_core::lease`, as conditional writes.

mod common;

use common::{config, counters};
use scorefleet_aws::DynamoOutcomeStore;
use scorefleet_aws::dynamo::record_item;
use scorefleet_core::job::JobId;
use scorefleet_core::lease::{ClaimOutcome, Fence, LeaseError, OutcomeRecord, Status, Terminal};
use scorefleet_core::traits::{OutcomeStore, now_ms};

const LEASE_MS: u64 = 60_000;

fn job(tag: &str) -> JobId {
    JobId::parse(&common::unique(tag)).expect("valid id")
}

fn fence(owner: &str, attempt: u64) -> Fence {
    Fence { owner: owner.into(), attempt }
}

#[tokio::test]
async fn a_live_lease_refuses_a_second_claim_and_an_ended_one_is_taken_over() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let table = common::table(&cfg, "claim").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, c.clone());
    let id = job("j");
    let now = now_ms();

    assert_eq!(store.claim(&id, "run", "a", now, LEASE_MS).await.expect("claim"), ClaimOutcome::Claimed(fence("a", 1)));
    assert_eq!(
        store.claim(&id, "run", "b", now + 1, LEASE_MS).await.expect("claim"),
        ClaimOutcome::Busy { owner: "a".into(), lease_until_ms: now + LEASE_MS }
    );
    // Refusals are classified from ALL_OLD: no extra read.
    assert_eq!((c.get("UpdateItem"), c.get("GetItem")), (2, 0));

    // The lease ends (lease_until_ms <= now): b takes over with a new attempt.
    assert_eq!(
        store.claim(&id, "run", "b", now + LEASE_MS, LEASE_MS).await.expect("claim"),
        ClaimOutcome::TakenOver { fence: fence("b", 2), previous_owner: "a".into() }
    );
    let rec = store.get(&id).await.expect("get").expect("record");
    assert_eq!(
        (rec.status, rec.owner.as_str(), rec.attempt, rec.lease_until_ms, rec.run_id.as_str()),
        (Status::InProgress, "b", 2, now + 2 * LEASE_MS, "run")
    );
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn a_stale_owner_is_fenced_and_a_finished_job_stays_finished() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let table = common::table(&cfg, "fence").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, counters());
    let id = job("j");
    let now = now_ms();

    let a = match store.claim(&id, "run", "a", now - 10, 1).await.expect("claim") {
        ClaimOutcome::Claimed(f) => f,
        other => panic!("{other:?}"),
    };
    let b = match store.claim(&id, "run", "b", now, LEASE_MS).await.expect("take over") {
        ClaimOutcome::TakenOver { fence, .. } => fence,
        other => panic!("{other:?}"),
    };
    assert_eq!((a.attempt, b.attempt), (1, 2));

    // a wakes up believing it still holds the lease: every write is refused.
    let lost = Err(LeaseError::Fenced { owner: "b".into(), attempt: 2 });
    assert_eq!(store.renew(&id, &a, now + LEASE_MS).await.expect("renew"), lost);
    assert_eq!(store.finish(&id, &a, Terminal::Completed, "{\"stale\":1}", now).await.expect("finish"), lost);
    assert_eq!(store.release(&id, &a).await.expect("release"), lost);
    // Same owner name, old attempt: still fenced.
    assert_eq!(store.renew(&id, &fence("b", 1), now + LEASE_MS).await.expect("renew"), lost);

    assert_eq!(store.renew(&id, &b, now + 2 * LEASE_MS).await.expect("renew"), Ok(()));
    assert_eq!(store.finish(&id, &b, Terminal::Completed, "{\"ok\":1}", now).await.expect("finish"), Ok(()));
    assert_eq!(
        store.finish(&id, &b, Terminal::Failed, "{}", now).await.expect("finish"),
        Err(LeaseError::AlreadyFinished)
    );
    assert_eq!(store.release(&id, &b).await.expect("release"), Err(LeaseError::AlreadyFinished));
    assert_eq!(store.renew(&id, &a, now).await.expect("renew"), lost);

    let done = match store.claim(&id, "run", "c", now_ms() + 10 * LEASE_MS, LEASE_MS).await.expect("claim") {
        ClaimOutcome::Done(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((done.status, done.result.as_deref(), done.attempt), (Status::Completed, Some("{\"ok\":1}"), 2));

    let never = job("never");
    assert_eq!(store.renew(&never, &a, now).await.expect("renew"), Err(LeaseError::NotFound));
    assert_eq!(store.release(&never, &a).await.expect("release"), Err(LeaseError::NotFound));
    assert_eq!(store.get(&never).await.expect("get"), None);
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn a_released_lease_is_taken_over_at_once() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let table = common::table(&cfg, "release").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, counters());
    let id = job("j");
    let now = now_ms();
    let a = match store.claim(&id, "run", "a", now, LEASE_MS).await.expect("claim") {
        ClaimOutcome::Claimed(f) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(store.release(&id, &a).await.expect("release"), Ok(()));
    assert_eq!(
        store.claim(&id, "run", "b", now + 1, LEASE_MS).await.expect("claim"),
        ClaimOutcome::TakenOver { fence: fence("b", 2), previous_owner: "a".into() }
    );
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn an_item_past_its_ttl_counts_as_absent() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let table = common::table(&cfg, "ttl").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, counters());
    let id = job("j");
    let now = now_ms();
    // A finished record whose TTL passed but which the table has not deleted
    // (DynamoDB lags; emulators never delete).
    let expired = OutcomeRecord {
        status: Status::Completed,
        owner: "a".into(),
        attempt: 5,
        lease_until_ms: 0,
        result: Some("{}".into()),
        run_id: "old".into(),
        expires_at_s: now / 1000 - 10,
    };
    cfg.dynamodb().put_item().table_name(&table).set_item(Some(record_item(&id, &expired))).send().await.expect("seed");

    assert_eq!(store.get(&id).await.expect("get"), None);
    assert!(store.get_many(std::slice::from_ref(&id)).await.expect("get many").is_empty());
    assert_eq!(store.renew(&id, &fence("a", 5), now + LEASE_MS).await.expect("renew"), Err(LeaseError::NotFound));
    assert_eq!(
        store.finish(&id, &fence("a", 5), Terminal::Failed, "{}", now).await.expect("finish"),
        Err(LeaseError::NotFound)
    );
    // Claimable as if absent; the attempt still grows, so old fences stay dead.
    assert_eq!(store.claim(&id, "new", "b", now, LEASE_MS).await.expect("claim"), ClaimOutcome::Claimed(fence("b", 6)));
    let rec = store.get(&id).await.expect("get").expect("live again");
    assert_eq!((rec.status, rec.result, rec.run_id.as_str()), (Status::InProgress, None, "new"));
    assert!(rec.expires_at_s >= now / 1000 + store.ttl().as_secs());

    // A claim made a TTL ago has expired too, by the store's own TTL.
    let other = job("k");
    let long_ago = now - store.ttl().as_millis() as u64 - 5_000;
    store.claim(&other, "r", "a", long_ago, LEASE_MS).await.expect("claim");
    assert_eq!(store.get(&other).await.expect("get"), None);
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn get_many_reads_past_one_hundred_ids() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let table = common::table(&cfg, "many").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, c.clone());
    let now = now_ms();
    let ids: Vec<JobId> = (0..120).map(|i| JobId::parse(&format!("job-{i}")).expect("id")).collect();
    for id in ids.iter().step_by(2) {
        store.claim(id, "r", "w", now, LEASE_MS).await.expect("claim");
    }
    let mut ask = ids.clone();
    ask.push(ids[0].clone()); // a duplicate must not break the request
    let found = store.get_many(&ask).await.expect("get many");
    assert_eq!(found.len(), 60);
    assert!(ids.iter().step_by(2).all(|id| found.get(id).is_some_and(|r| r.owner == "w" && r.attempt == 1)));
    assert_eq!(c.get("BatchGetItem"), 2, "120 distinct ids are 2 requests");
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn finish_only_stores_one_outcome_names_what_stands_and_fences_a_replaced_claim() {
    if common::skip() {
        return;
    }
    use scorefleet_core::lease::{Unclaimed, UnclaimedFinish};
    let cfg = config().await;
    let c = counters();
    let table = common::table(&cfg, "finishonly").await;
    let store = DynamoOutcomeStore::new(cfg.dynamodb(), &table, c.clone());
    let now = now_ms();
    let req = |owner: &'static str, body: &'static str, at: u64| UnclaimedFinish {
        owner,
        run_id: "run",
        terminal: Terminal::Completed,
        result_json: body,
        now_ms: at,
    };

    // Two copies of one job in flight, both computed: the first finish
    // stores its outcome, the second is refused with the stored one.
    let dup = job("dup");
    assert!(store.lookup(std::slice::from_ref(&dup)).await.expect("lookup").is_empty());
    let before = c.get("UpdateItem");
    assert_eq!(store.finish_unclaimed(&dup, &req("a", "{\"by\":\"a\"}", now)).await.expect("finish"), Ok(()));
    match store.finish_unclaimed(&dup, &req("b", "{\"by\":\"b\"}", now + 1)).await.expect("finish") {
        Err(Unclaimed::Done(stored)) => {
            assert_eq!((stored.owner.as_str(), stored.result.as_deref()), ("a", Some("{\"by\":\"a\"}")))
        }
        other => panic!("the second finish must find the first: {other:?}"),
    }
    assert_eq!((c.get("UpdateItem") - before, c.get("GetItem")), (2, 0), "one write each; the refusal reads ALL_OLD");
    let rec = store.get(&dup).await.expect("get").expect("record");
    assert_eq!((rec.status, rec.owner.as_str(), rec.attempt, rec.run_id.as_str()), (Status::Completed, "a", 1, "run"));
    // The batched read finds it (eventually consistent: the emulators are not lagging).
    let found = store.lookup(&[dup.clone(), job("absent")]).await.expect("lookup");
    assert_eq!(found.len(), 1);
    assert_eq!(found.get(&dup).map(|r| r.status), Some(Status::Completed));

    // A claim-mode worker's live lease is not overwritten; an ended one is,
    // and its holder is then fenced.
    let held = job("held");
    let ClaimOutcome::Claimed(fa) = store.claim(&held, "run", "w", now, LEASE_MS).await.expect("claim") else {
        panic!("fresh")
    };
    assert_eq!(
        store.finish_unclaimed(&held, &req("u", "{}", now + 1)).await.expect("finish"),
        Err(Unclaimed::Busy { owner: "w".into(), lease_until_ms: now + LEASE_MS })
    );
    assert_eq!(store.finish_unclaimed(&held, &req("u", "{}", now + LEASE_MS)).await.expect("finish"), Ok(()));
    assert_eq!(
        store.finish(&held, &fa, Terminal::Completed, "{}", now + LEASE_MS).await.expect("finish"),
        Err(LeaseError::Fenced { owner: "u".into(), attempt: 2 })
    );
    common::delete_table(&cfg, &table).await;
}
