//! Fault injection between real `scorefleet-worker` processes and the local
//! AWS emulator, through the proxy of `common/proxy.rs`: each worker gets
//! `AWS_ENDPOINT_URL` pointing at the proxy, while the test talks to the
//! emulator directly. Each fault has a test; each test checks that nothing is
//! lost (every job ends with one COMPLETED outcome and a result, the input
//! queue drains, the DLQ stays empty), that the worker stays healthy and
//! picks up new jobs once the fault clears, and that it does not hot-loop
//! (the proxy's request counts while the fault lasts stay under what the
//! worker's backoff allows).
//!
//! Most workers here run with the SDK's own retries off (`AWS_MAX_ATTEMPTS=1`)
//! so that every injected fault reaches the worker's retry and backoff, and a
//! request count measures the worker's loops rather than the SDK's; the first
//! test checks separately that the SDK (standard retries, as in production)
//! retries every injected error and names it with the injected code.
//! Run with `make test` (or `scripts/with-stack.sh cargo nextest run -p
//! scorefleet-worker --test faults`).

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use common::{Stack, Worker, spawn_worker_with_env, stack};
use proxy::{Fault, Match, Net, Proxy, Rule, Service};
use scorefleet_core::job::{JobId, JobMessage};
use scorefleet_core::lease::{ClaimOutcome, Status};
use scorefleet_core::result::{ResultMessage, ResultStatus};
use scorefleet_core::traits::{JobQueue, MessageSink, ObjectStore, OutcomeStore, now_ms};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Every queue here hides a received message this long, and every worker
/// leases its jobs for as long (the lease must not exceed the visibility).
const VISIBILITY: Duration = Duration::from_secs(6);
const LEASE_FLAG: [&str; 2] = ["--lease-seconds", "6"];
/// The worker's backoff base (`Settings::backoff`) and retries (`--retries`
/// default): the bounds on request counts are derived from them.
const WORKER_BACKOFF: Duration = Duration::from_millis(100);
const WORKER_TRIES: u64 = 4;
/// Jobs enqueued once the fault has cleared: the worker must pick them up.
const LATER: usize = 10;

/// How a worker's SDK retries.
#[derive(Clone, Copy)]
enum Sdk {
    /// Standard mode, 3 attempts: as in production.
    Retries,
    /// One attempt: every fault reaches the worker's own retry loop.
    NoRetries,
}

/// One test's stack, proxy and jobs.
struct Fixture {
    s: Stack,
    proxy: Proxy,
    /// Enqueued while the fault lasts.
    jobs: Vec<JobMessage>,
    /// Enqueued after the fault cleared.
    later: Vec<JobMessage>,
}

async fn fixture(tag: &str, n: usize) -> Fixture {
    let s = stack(tag, VISIBILITY, 5).await;
    let endpoint = s.cfg.sdk.endpoint_url().expect("the emulator's endpoint").to_owned();
    let proxy = Proxy::start(&endpoint).await;
    let mut jobs = s.digit_job_messages(n + LATER).await;
    let later = jobs.split_off(n);
    Fixture { s, proxy, jobs, later }
}

/// A fixture and one worker behind its proxy, ready (both queues answered).
async fn started(tag: &str, n: usize, sdk: Sdk, extra: &[&str]) -> (Fixture, Worker) {
    let f = fixture(tag, n).await;
    let w = f.worker(&format!("w-{tag}"), sdk, extra);
    w.ready(Duration::from_secs(60)).await;
    (f, w)
}

impl Fixture {
    /// A worker that reaches AWS through the proxy.
    fn worker(&self, id: &str, sdk: Sdk, extra: &[&str]) -> Worker {
        let url = self.proxy.url();
        let mut env = vec![("AWS_ENDPOINT_URL", url.as_str())];
        if let Sdk::NoRetries = sdk {
            env.push(("AWS_MAX_ATTEMPTS", "1"));
        }
        let flags: Vec<&str> = LEASE_FLAG.iter().chain(extra).copied().collect();
        spawn_worker_with_env(&self.s, id, &flags, &env)
    }

    async fn enqueue(&self, jobs: &[JobMessage]) {
        self.s.enqueue(&jobs.iter().map(JobMessage::to_json).collect::<Vec<_>>()).await;
    }

    fn all_ids(&self) -> Vec<JobId> {
        self.jobs.iter().chain(&self.later).map(|j| j.job_id.clone()).collect()
    }

    /// The fault has cleared: the later jobs are enqueued and must all come
    /// back within `within`; returns every result read.
    async fn recover(&self, results: Vec<ResultMessage>, within: Duration) -> Vec<ResultMessage> {
        self.enqueue(&self.later).await;
        self.s.more_results(results, self.jobs.len() + self.later.len(), within).await
    }

    /// Nothing lost: one good result per job and nothing else, one COMPLETED
    /// outcome per job, the input queue empty, the DLQ empty, every worker
    /// alive.
    async fn assert_nothing_lost(&self, results: &[ResultMessage], workers: &[&Worker]) {
        let ids = self.all_ids();
        let want: HashSet<&str> = ids.iter().map(JobId::as_str).collect();
        let got: HashSet<&str> = results.iter().map(|r| r.job_id.as_str()).collect();
        assert_eq!(got, want, "a result for every job and for nothing else");
        for r in results {
            assert_eq!(r.status, ResultStatus::Ok, "{}: {:?}", r.job_id, r.error);
            assert!(r.top().is_some(), "{}: scored", r.job_id);
        }
        let outcomes = self.s.outcomes(&ids).await;
        assert_eq!(outcomes.len(), ids.len(), "one outcome record per job");
        for (id, o) in &outcomes {
            assert_eq!(o.status, Status::Completed, "{id:?}");
        }
        // Deletes follow the results; a message whose delete failed comes
        // back after its visibility timeout and is answered from the table.
        let deadline = Instant::now() + VISIBILITY * 3;
        let mut depth = self.s.depth(&self.s.res.input_queue_url).await;
        while depth != (0, 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            depth = self.s.depth(&self.s.res.input_queue_url).await;
        }
        assert_eq!(depth, (0, 0), "input queue drained");
        assert_eq!(self.s.depth(&self.s.res.dead_letter_queue_url).await, (0, 0), "nothing in the DLQ");
        for w in workers {
            assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200), "worker alive");
        }
    }
}

impl Fixture {
    /// No job scored twice and no lease lost: what the faults that leave the
    /// worker's retry budget intact must not cost.
    async fn assert_scored_once(&self, workers: &[&Worker]) {
        let jobs = (self.jobs.len() + self.later.len()) as u64;
        assert_eq!(total(workers, "scorefleet_inferences_total").await, jobs, "one inference per job");
        assert_eq!(total(workers, "scorefleet_leases_lost_total").await, 0, "no lease lost");
    }
}

/// Requests a fault-free run needs for `messages` messages over `elapsed`
/// with `workers` workers: per message a claim, a fetch, a finish, a tenth of
/// a send and of a delete, and a second claim when it comes back; per worker
/// and second, two long polls and a keeper pass. Faults that cost retries
/// multiply it; a hot loop exceeds any multiple.
fn request_budget(messages: usize, workers: usize, elapsed: Duration) -> usize {
    5 * messages + 6 * workers * elapsed.as_secs() as usize + 20
}

/// A counter summed over workers.
async fn total(workers: &[&Worker], counter: &str) -> u64 {
    let mut sum = 0;
    for w in workers {
        sum += w.metric(&format!("{counter} ")).await;
    }
    sum
}

/// The most tries one retry loop can make within `window` when it waits at
/// least `base / 2 × 2^k` after its k-th failure in a row: the worker's
/// backoff is `base × 2^k × [0.5, 1.5)`. A loop without backoff makes
/// hundreds of tries a second against a local emulator.
fn most_tries(window: Duration, base: Duration) -> u64 {
    let (mut t, mut tries) = (Duration::ZERO, 1);
    for k in 0..32u32 {
        t += base / 2 * (1 << k.min(10));
        if t >= window {
            break;
        }
        tries += 1;
    }
    tries
}

/// Workers with the SDK's retries off run out of their own retries under
/// these faults: a job whose finish could not be stored is left for
/// redelivery and scored again, and a fetch given back is counted the same
/// way. Each job is scored at least once, and once more at most for each
/// job the workers gave up on.
async fn assert_inferences_explained(workers: &[&Worker], jobs: usize) {
    let inferences = total(workers, "scorefleet_inferences_total").await;
    let given_up = total(workers, "scorefleet_left_for_redrive_total").await;
    eprintln!("{inferences} inferences for {jobs} jobs, {given_up} left for redelivery");
    assert!(
        inferences >= jobs as u64 && inferences <= jobs as u64 + given_up,
        "{inferences} inferences for {jobs} jobs: more than the {given_up} jobs given up on explain"
    );
}

/// Waits until at least `n` results have arrived, keeping what it read.
async fn at_least(f: &Fixture, seen: Vec<ResultMessage>, n: usize, within: Duration) -> Vec<ResultMessage> {
    f.s.more_results(seen, n, within).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_error_is_retried_by_the_sdk_and_classified_transient() {
    if common::skip() {
        return;
    }
    use aws_sdk_sqs::config::retry::RetryConfig;
    let f = fixture("sdk", 1).await;
    // The project's adapters, through the proxy, with the SDK's standard
    // retries (3 attempts) and short backoffs so the test stays fast. (The
    // endpoint goes on each client's config: one set on the `SdkConfig` would
    // lose to `AWS_ENDPOINT_URL`, which the SDK reads again per service.)
    let retry = RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(5));
    let (sdk, url) = (&f.s.cfg.sdk, f.proxy.url());
    let sqs = aws_sdk_sqs::config::Builder::from(sdk).endpoint_url(&url).retry_config(retry.clone()).build();
    let dynamodb = aws_sdk_dynamodb::config::Builder::from(sdk).endpoint_url(&url).retry_config(retry.clone()).build();
    let s3 =
        aws_sdk_s3::config::Builder::from(sdk).endpoint_url(&url).retry_config(retry).force_path_style(true).build();
    let counters = f.s.counters.clone();
    let input =
        scorefleet_aws::SqsQueue::new(aws_sdk_sqs::Client::from_conf(sqs), &f.s.res.input_queue_url, counters.clone());
    let store = scorefleet_aws::DynamoOutcomeStore::new(
        aws_sdk_dynamodb::Client::from_conf(dynamodb),
        &f.s.res.table,
        counters.clone(),
    );
    let s3 = scorefleet_aws::S3Store::new(aws_sdk_s3::Client::from_conf(s3), counters);
    let key = "digits/00000.png";

    // One call of `op` through the adapter: Ok, or (transient?, message).
    let call = |op: &'static str, n: u32| {
        let (input, store, s3) = (&input, &store, &s3);
        let bucket = f.s.res.bucket.clone();
        async move {
            match op {
                "UpdateItem" => {
                    let job = JobId::parse(&format!("sdk-probe-{n}")).expect("job id");
                    store
                        .claim(&job, "r", "probe", now_ms(), 5_000)
                        .await
                        .map(|_| ())
                        .map_err(|e| (e.is_transient(), e.to_string()))
                }
                "ReceiveMessage" => {
                    input.receive(1, Duration::ZERO).await.map(|_| ()).map_err(|e| (e.is_transient(), e.to_string()))
                }
                "SendMessageBatch" => {
                    input.send(&["{}".to_owned()]).await.map(|_| ()).map_err(|e| (e.is_transient(), e.to_string()))
                }
                "DeleteMessageBatch" => input
                    .delete(&["no-such-handle".to_owned()])
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.is_transient(), e.to_string())),
                "GetObject" => s3
                    .get(&bucket, key, 1 << 20)
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind == scorefleet_core::ErrorKind::FetchFailed, e.message)),
                other => panic!("no probe for {other}"),
            }
        }
    };
    let cases: &[(&str, Fault, &str)] = &[
        ("UpdateItem", Fault::Throttle, "ProvisionedThroughputExceededException"),
        ("UpdateItem", Fault::Error { status: 400, code: "ThrottlingException" }, "ThrottlingException"),
        ("UpdateItem", Fault::Status(500), "InternalServerError"),
        ("UpdateItem", Fault::Status(503), "ServiceUnavailable"),
        ("UpdateItem", Fault::Reset, ""),
        ("ReceiveMessage", Fault::Throttle, "RequestThrottled"),
        ("ReceiveMessage", Fault::Error { status: 400, code: "ThrottlingException" }, "ThrottlingException"),
        ("ReceiveMessage", Fault::Status(500), "InternalError"),
        ("ReceiveMessage", Fault::Reset, ""),
        ("SendMessageBatch", Fault::Throttle, "RequestThrottled"),
        ("DeleteMessageBatch", Fault::Throttle, "RequestThrottled"),
        ("GetObject", Fault::Throttle, "SlowDown"),
        ("GetObject", Fault::Status(500), "InternalError"),
        ("GetObject", Fault::Status(503), "ServiceUnavailable"),
        ("GetObject", Fault::Reset, ""),
    ];
    for (i, (op, fault, code)) in cases.iter().enumerate() {
        let what = format!("{op} {fault:?}");
        // Once: the SDK retries and the call succeeds.
        let t0 = Instant::now();
        let rule = f.proxy.add(Rule::new(Match::ops(&[op]), *fault).times(1));
        let res = call(op, 2 * i as u32).await;
        assert!(res.is_ok(), "{what}: one fault is retried by the SDK, got {res:?}");
        assert_eq!(f.proxy.injected_by(rule), 1, "{what}: injected");
        assert_eq!(f.proxy.requests(op, t0, Instant::now()), 2, "{what}: the fault and one retry");
        f.proxy.remove(rule);
        // Every time: the SDK gives up after 3 attempts and the adapter calls
        // the error transient, with the injected code.
        let t0 = Instant::now();
        let rule = f.proxy.add(Rule::new(Match::ops(&[op]), *fault));
        let res = call(op, 2 * i as u32 + 1).await;
        f.proxy.remove(rule);
        let (transient, message) = res.expect_err(&what);
        assert!(transient, "{what}: transient, got {message}");
        assert!(message.contains(code), "{what}: the SDK reports {code}: {message}");
        assert_eq!(f.proxy.requests(op, t0, Instant::now()), 3, "{what}: three attempts");
    }

    // A claim carried out whose answer is lost: the SDK's retry meets our own
    // claim. It must not claim a second time (today it answers Busy under our
    // own name; the worker then leaves the message until the lease ends).
    let job = JobId::parse("sdk-probe-lost-answer").expect("job id");
    let rule = f.proxy.add(Rule::new(Match::ops(&["UpdateItem"]), Fault::DropResponse).times(1));
    let got = store.claim(&job, "r", "probe", now_ms(), 5_000).await.expect("claim");
    f.proxy.remove(rule);
    assert!(
        matches!(&got, ClaimOutcome::Busy { owner, .. } if owner == "probe")
            || matches!(&got, ClaimOutcome::Claimed(fence) if fence.attempt == 1),
        "{got:?}"
    );
    let rec = f.s.outcomes(std::slice::from_ref(&job)).await.remove(&job).expect("record");
    assert_eq!((rec.owner.as_str(), rec.attempt), ("probe", 1), "claimed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_every_request_slows_the_worker_but_loses_nothing() {
    if common::skip() {
        return;
    }
    const N: usize = 40;
    let (f, w) = started("latency", N, Sdk::Retries, &[]).await;
    let rule = f.proxy.add(Rule::new(Match::any(), Fault::Delay(Duration::from_millis(300))));
    f.enqueue(&f.jobs).await;
    let start = Instant::now();
    let results = f.s.results(N, Duration::from_secs(60)).await;
    let (elapsed, delayed) = (start.elapsed(), f.proxy.injected_by(rule));
    f.proxy.clear();
    let requests = f.proxy.all_requests(start, Instant::now());
    eprintln!("latency: {N} jobs in {elapsed:?}, {delayed} requests delayed, {requests} requests");
    assert!(delayed as usize >= 3 * N, "claim, fetch and finish of every job were delayed ({delayed})");
    let budget = request_budget(N, 1, elapsed);
    assert!(requests <= budget, "{requests} requests for {N} jobs in {elapsed:?} (budget {budget})");
    let results = f.recover(results, Duration::from_secs(30)).await;
    f.assert_nothing_lost(&results, &[&w]).await;
    f.assert_scored_once(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_before_and_after_the_emulator_answers_lose_nothing() {
    if common::skip() {
        return;
    }
    const N: usize = 40;
    let (f, w) = started("reset", N, Sdk::Retries, &[]).await;
    let window = Duration::from_secs(8);
    let start = Instant::now();
    // A third of all requests never reach the emulator; a fifth of the rest
    // are carried out and their answer lost (the worker's retry then meets
    // its own write).
    let before = f.proxy.add(Rule::new(Match::any(), Fault::Reset).every(3).during(window));
    let after = f.proxy.add(Rule::new(Match::any(), Fault::DropResponse).every(5).during(window));
    f.enqueue(&f.jobs).await;
    let results = at_least(&f, Vec::new(), 1, window).await;
    tokio::time::sleep(window.saturating_sub(start.elapsed())).await;
    let (resets, dropped) = (f.proxy.injected_by(before), f.proxy.injected_by(after));
    f.proxy.clear();
    let requests = f.proxy.all_requests(start, start + window);
    eprintln!("resets: {resets} before, {dropped} after the emulator acted; {requests} requests in {window:?}");
    assert!(resets >= 10 && dropped >= 3, "faults injected: {resets} resets, {dropped} lost answers");
    // The SDK retries what failed: up to three tries per request.
    let budget = 3 * request_budget(N, 1, window);
    assert!(requests <= budget, "{requests} requests in {window:?} (budget {budget})");
    let results = at_least(&f, results, N, Duration::from_secs(45)).await;
    let results = f.recover(results, Duration::from_secs(30)).await;
    f.assert_nothing_lost(&results, &[&w]).await;
    // One worker: no one else can take a lease, so none may count as lost
    // (a finish whose answer was lost once did).
    f.assert_scored_once(&[&w]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_on_dynamodb_and_s3_get_object_are_retried_with_backoff() {
    if common::skip() {
        return;
    }
    const N: usize = 40;
    const FETCHERS: u64 = 4;
    let (f, w) = started("5xx", N, Sdk::NoRetries, &["--fetchers", &FETCHERS.to_string()]).await;
    let window = Duration::from_secs(6);
    let start = Instant::now();
    // Every GetObject fails with 503; every other DynamoDB request with 500,
    // and every third of the rest with 503.
    let get = f.proxy.add(Rule::new(Match::ops(&["GetObject"]), Fault::Status(503)).every(1).during(window));
    let dynamo500 =
        f.proxy.add(Rule::new(Match::service(Service::DynamoDb), Fault::Status(500)).every(2).during(window));
    let dynamo503 =
        f.proxy.add(Rule::new(Match::service(Service::DynamoDb), Fault::Status(503)).every(3).during(window));
    f.enqueue(&f.jobs).await;
    tokio::time::sleep(window).await;
    let gets = f.proxy.requests("GetObject", start, start + window) as u64;
    let injected = (f.proxy.injected_by(get), f.proxy.injected_by(dynamo500), f.proxy.injected_by(dynamo503));
    f.proxy.clear();
    eprintln!("5xx: {gets} GetObject in {window:?}; injected (GetObject 503, DynamoDB 500, 503) {injected:?}");
    assert!(injected.0 >= FETCHERS && injected.1 >= 5 && injected.2 >= 2, "faults injected: {injected:?}");
    // Each fetch slot makes at most WORKER_TRIES tries per job, spaced by the
    // backoff; then the job is given back and the slot takes another.
    let per_chain: Duration = (0..WORKER_TRIES as u32 - 1).map(|k| WORKER_BACKOFF / 2 * (1 << k)).sum();
    let bound = FETCHERS * WORKER_TRIES * (window.as_millis() as u64 / per_chain.as_millis() as u64 + 1);
    assert!(gets <= bound, "{gets} GetObject in {window:?}: more than backoff allows ({bound})");
    let results = f.s.results(N, Duration::from_secs(45)).await;
    let results = f.recover(results, Duration::from_secs(30)).await;
    f.assert_nothing_lost(&results, &[&w]).await;
    assert_inferences_explained(&[&w], N + LATER).await;
    assert!(
        total(&[&w], "scorefleet_left_for_redrive_total").await >= 1,
        "a fetch ran out of retries and was given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_on_dynamodb_sqs_and_s3_backs_off_and_loses_nothing() {
    if common::skip() {
        return;
    }
    const N: usize = 40;
    const RECEIVERS: u64 = 2;
    let (f, w) = started("throttle", N, Sdk::NoRetries, &["--receivers", &RECEIVERS.to_string()]).await;

    // 1. Every ReceiveMessage throttled: the long polls back off.
    let window = Duration::from_secs(5);
    let start = Instant::now();
    f.proxy.add(Rule::new(Match::ops(&["ReceiveMessage"]), Fault::Throttle).during(window));
    // The long polls already waiting (1 s) end before the jobs arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.enqueue(&f.jobs).await;
    tokio::time::sleep(window.saturating_sub(start.elapsed())).await;
    let receives = f.proxy.requests("ReceiveMessage", start, start + window) as u64;
    let bound = RECEIVERS * most_tries(window, WORKER_BACKOFF);
    eprintln!("throttle: {receives} ReceiveMessage in {window:?} (bound {bound})");
    assert!(receives >= RECEIVERS, "the receivers kept trying ({receives})");
    assert!(receives <= bound, "{receives} throttled long polls in {window:?}: more than backoff allows ({bound})");
    assert_eq!(total(&[&w], "scorefleet_messages_received_total").await, 0, "nothing received while throttled");
    f.proxy.clear();

    // 2. Claims, finishes, fetches, result sends and deletes throttled.
    let window = Duration::from_secs(6);
    let rules = [
        f.proxy.add(Rule::new(Match::ops(&["UpdateItem"]), Fault::Throttle).every(2).during(window)),
        f.proxy.add(
            Rule::new(Match::ops(&["UpdateItem"]), Fault::Error { status: 400, code: "ThrottlingException" })
                .every(4)
                .during(window),
        ),
        f.proxy.add(Rule::new(Match::ops(&["GetObject"]), Fault::Throttle).every(3).during(window)),
        f.proxy.add(Rule::new(Match::ops(&["SendMessageBatch"]), Fault::Throttle).times(3).during(window)),
        f.proxy.add(
            Rule::new(Match::ops(&["DeleteMessageBatch"]), Fault::Error { status: 400, code: "ThrottlingException" })
                .times(1)
                .during(window),
        ),
    ];
    let results = f.s.results(N, Duration::from_secs(50)).await;
    let injected: Vec<u64> = rules.iter().map(|r| f.proxy.injected_by(*r)).collect();
    f.proxy.clear();
    eprintln!("throttle: injected (UpdateItem PTEE, ThrottlingException, SlowDown, Send, Delete) {injected:?}");
    assert!(injected.iter().all(|&n| n >= 1), "every throttle was hit: {injected:?}");
    let results = f.recover(results, Duration::from_secs(30)).await;
    f.assert_nothing_lost(&results, &[&w]).await;
    assert_inferences_explained(&[&w], N + LATER).await;
    // A throttled delete leaves its messages to come back; they are answered
    // from the table, so their results may be sent twice, never more.
    let extra = results.len() - (N + LATER);
    assert!(extra <= 10 * injected[4] as usize, "{extra} duplicate results for {} failed deletes", injected[4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_for_jobs_enqueued_twice_score_each_job_once() {
    if common::skip() {
        return;
    }
    const N: usize = 30;
    let f = fixture("race", N).await;
    // Claims are slowed down so that both copies of a job are claimed at
    // nearly the same time, by one worker or by both; three claims are sent
    // twice, so a worker's retry meets its own claim.
    let claims = || Match::ops(&["UpdateItem"]).body_contains("if_not_exists");
    let twice = f.proxy.add(Rule::new(claims(), Fault::Duplicate).times(3));
    let slow = f.proxy.add(Rule::new(claims(), Fault::Delay(Duration::from_millis(200))));
    // Half the jobs as adjacent copies (one receive holds both), half as two
    // rounds (the two workers hold one copy each).
    let (pairs, rounds) = f.jobs.split_at(N / 2);
    let mut copies: Vec<JobMessage> = pairs.iter().flat_map(|j| [j.clone(), j.clone()]).collect();
    copies.extend(rounds.iter().cloned());
    copies.extend(rounds.iter().cloned());
    f.enqueue(&copies).await;
    let a = f.worker("w-race-a", Sdk::Retries, &[]);
    let b = f.worker("w-race-b", Sdk::Retries, &[]);
    let start = Instant::now();
    let results = f.s.results(N, Duration::from_secs(60)).await;
    let (elapsed, requests) = (start.elapsed(), f.proxy.all_requests(start, Instant::now()));
    let budget = request_budget(copies.len(), 2, elapsed);
    eprintln!("race: {} messages in {elapsed:?}, {requests} requests (budget {budget})", copies.len());
    assert!(requests <= budget, "{requests} requests for {} messages in {elapsed:?}", copies.len());
    eprintln!("race: {} claims delayed, {} sent twice", f.proxy.injected_by(slow), f.proxy.injected_by(twice));
    assert_eq!(f.proxy.injected_by(twice), 3);
    f.proxy.clear();
    let results = f.recover(results, Duration::from_secs(30)).await;
    let workers = [&a, &b];
    f.assert_nothing_lost(&results, &workers).await;
    f.assert_scored_once(&workers).await;
    // Every job's second copy was refused its claim (ConditionalCheckFailed)
    // and answered from the table once the first copy finished.
    let dups = total(&workers, "scorefleet_duplicates_skipped_total").await;
    let busy = total(&workers, "scorefleet_busy_skipped_total").await;
    eprintln!("race: {dups} duplicates answered from the table, {busy} claims refused under a live lease");
    assert!(dups >= N as u64, "each second copy answered from the table ({dups})");
    assert!(busy >= 1, "a copy met a live lease ({busy})");
    let outcomes = f.s.outcomes(&f.all_ids()).await;
    let once = outcomes.values().filter(|o| o.attempt == 1).count();
    assert!(once >= N + LATER - 3, "claimed once, except after a duplicated claim ({once})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_of_a_few_seconds_loses_nothing_and_the_worker_recovers() {
    if common::skip() {
        return;
    }
    const N: usize = 60;
    let (f, w) = started("cut", N, Sdk::NoRetries, &[]).await;
    f.enqueue(&f.jobs).await;
    let results = f.s.results(5, Duration::from_secs(60)).await;
    let cut = Duration::from_secs(4);

    // 1. Refused: every connection is reset at once.
    let receives = || w.metric("scorefleet_aws_requests_total{api=\"ReceiveMessage\"} ");
    let receives_before = receives().await;
    f.proxy.set_net(Net::Refuse);
    tokio::time::sleep(cut / 2).await;
    assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200), "alive during the cut");
    tokio::time::sleep(cut / 2).await;
    let (attempts, polls) = (f.proxy.cut_connections(), receives().await - receives_before);
    f.proxy.set_net(Net::Up);
    let back = Instant::now();
    // Recovered once a long poll gets through again (the receivers' backoff
    // grew during the cut; it is capped at 20 s × 1.5).
    while f.proxy.requests("ReceiveMessage", back, Instant::now()) == 0 {
        assert!(back.elapsed() < Duration::from_secs(35), "no long poll within 35 s of the network's return");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cut: {attempts} connections refused, {polls} long polls in {cut:?}; polling again {:?} after",
        back.elapsed()
    );
    // Each receiver's loop backs off; one long poll each may have been in
    // flight when the cut began.
    let bound = 2 * most_tries(cut, WORKER_BACKOFF) + 2;
    assert!(polls >= 2 && polls <= bound, "{polls} long polls in {cut:?}: outside what backoff allows (2..={bound})");
    // Every other stage tries a bounded number of times per job, with
    // backoff: claim and finish WORKER_TRIES each, fetch WORKER_TRIES then a
    // release and a give-back, and the keeper's renewals (a tick every
    // quarter lease). A loop without backoff makes thousands of attempts.
    let keeper_ticks = (cut.as_millis() / (VISIBILITY.as_millis() / 4)) as u64 + 1;
    let per_job = 3 * WORKER_TRIES + 2 + keeper_ticks;
    let bound = N as u64 * per_job + 2 * most_tries(cut, WORKER_BACKOFF);
    assert!(attempts <= bound as usize, "{attempts} connection attempts in {cut:?} (bound {bound})");

    // 2. Blackholed: connections accepted and never answered.
    f.proxy.set_net(Net::Blackhole);
    tokio::time::sleep(cut).await;
    f.proxy.set_net(Net::Up);
    let results = at_least(&f, results, N, Duration::from_secs(50)).await;
    let results = f.recover(results, Duration::from_secs(30)).await;
    f.assert_nothing_lost(&results, &[&w]).await;
    let inferences = total(&[&w], "scorefleet_inferences_total").await;
    let takeovers = total(&[&w], "scorefleet_leases_taken_over_total").await;
    assert!(
        inferences >= (N + LATER) as u64 && inferences <= (N + LATER) as u64 + takeovers,
        "{inferences} inferences"
    );
}

/// Finish-only mode (`--dedup finish-only`), a duplicate in flight: two
/// copies of one job pass the batched lookup together and are both
/// computed. The proxy holds the first finish for a second, so the other
/// finish lands first on any emulator (moto does not serialise concurrent
/// conditional writes); the held one then finds the outcome stored and
/// re-sends it. One stored outcome, two results, both the stored one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finish_only_a_duplicate_in_flight_is_stored_once_and_the_loser_resends_the_stored_result() {
    if common::skip() {
        return;
    }
    let (f, w) = started("fodup", 1, Sdk::Retries, &["--dedup", "finish-only"]).await;
    let hold = f.proxy.add(Rule::new(Match::ops(&["UpdateItem"]), Fault::Delay(Duration::from_secs(1))).times(1));
    let body = f.jobs[0].to_json();
    f.s.enqueue(&[body.clone(), body]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut results = Vec::new();
    while results.len() < 2 {
        assert!(Instant::now() < deadline, "only {} of 2 results", results.len());
        let got = f.s.output.receive(10, Duration::from_secs(1)).await.expect("receive results");
        let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
        results.extend(got.into_iter().map(|m| ResultMessage::parse(&m.body).expect("result JSON")));
        if !handles.is_empty() {
            f.s.output.delete(&handles).await.expect("delete results");
        }
    }
    assert_eq!(f.proxy.injected_by(hold), 1, "one finish was held back");
    let id = f.jobs[0].job_id.clone();
    let outcomes = f.s.outcomes(std::slice::from_ref(&id)).await;
    let rec = outcomes.get(&id).expect("one outcome");
    assert_eq!((rec.status, rec.attempt), (Status::Completed, 1), "stored once, by one write");
    let stored = ResultMessage::parse(rec.result.as_deref().expect("stored result")).expect("json");
    for r in &results {
        assert_eq!(r, &stored, "each delivery answered with the stored result");
    }
    assert_eq!(w.metric("scorefleet_inferences_total ").await, 2, "both copies computed");
    assert_eq!(w.metric("scorefleet_finishes_lost_total ").await, 1, "the later finish lost");
    assert_eq!(w.metric("scorefleet_dedup_mode{mode=\"finish-only\"} ").await, 1);
    // Nothing claimed: the finishes were the only table writes.
    let deadline = Instant::now() + VISIBILITY * 2;
    while f.s.depth(&f.s.res.input_queue_url).await != (0, 0) {
        assert!(Instant::now() < deadline, "both copies deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
