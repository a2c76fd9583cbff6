//! The worker against the local AWS emulator, as a fleet runs it: real
//! `scorefleet-worker` processes, MNIST digits as PNGs in S3, jobs on SQS,
//! outcomes in DynamoDB. Run with `make test` (it starts the emulator and
//! exports `AWS_ENDPOINT_URL`); without it they are skipped with one line.

mod common;

use common::{digit_jobs, digits, spawn_worker, stack};
use scorefleet_core::ErrorKind;
use scorefleet_core::lease::Status;
use scorefleet_core::result::ResultStatus;
use scorefleet_core::traits::JobQueue;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_two_workers_score_every_job_once_as_the_model_does() {
    if common::skip() {
        return;
    }
    const N: usize = 500;
    let s = stack("e2e", Duration::from_secs(30), 5).await;
    let (ids, bodies, want) = digit_jobs(&s, N).await;
    s.enqueue(&bodies).await;
    let a = spawn_worker(&s, "w-a", &["--lease-seconds", "30"]);
    let b = spawn_worker(&s, "w-b", &["--lease-seconds", "30"]);
    let results = s.results(N, Duration::from_secs(240)).await;
    let distinct: HashSet<&str> = results.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(distinct.len(), N, "exactly {N} distinct job ids");
    for r in &results {
        assert_eq!(r.status, ResultStatus::Ok, "{}: {:?}", r.job_id, r.error);
        let top = r.top().map(|p| p.label.clone());
        assert_eq!(top.as_ref(), want.get(&r.job_id), "{}: worker and offline model disagree", r.job_id);
        assert_eq!(r.model.as_ref().map(|m| m.name.as_str()), Some("digits"));
    }
    let outcomes = s.outcomes(&ids).await;
    assert_eq!(outcomes.len(), N);
    assert!(outcomes.values().all(|o| o.status == Status::Completed));
    // Results are sent before deletes, so the queue may still be settling.
    let mut depth = s.depth(&s.res.input_queue_url).await;
    for _ in 0..50 {
        if depth == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        depth = s.depth(&s.res.input_queue_url).await;
    }
    assert_eq!(depth, (0, 0), "input queue empty at the end");
    let inferences = a.metric("scorefleet_inferences_total ").await + b.metric("scorefleet_inferences_total ").await;
    assert_eq!(inferences, N as u64, "one inference per job across the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_each_end_as_their_typed_error_and_the_worker_stays_healthy() {
    if common::skip() {
        return;
    }
    // Short visibility and two deliveries before the DLQ, so the nameless
    // message gets there within the test.
    let s = stack("bad", Duration::from_secs(3), 2).await;
    let b = &s.res.bucket;
    s.put("not-an-image.png", b"this is not a png".to_vec()).await;
    s.put("big.png", vec![0u8; 300_000]).await;
    // A decompression bomb: 10000 x 10000 pixels of zeros in about 100 KB.
    let bomb = {
        let img = image::GrayImage::new(10_000, 10_000);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("encode");
        png
    };
    s.put("bomb.png", bomb).await;
    let job = |id: &str, url: &str| format!(r#"{{"v":1,"job_id":"{id}","url":"{url}","run_id":"r"}}"#);
    let cases: Vec<(&str, String, ErrorKind)> = vec![
        (
            "bad-version",
            r#"{"v":7,"job_id":"bad-version","url":"s3://x/y","run_id":"r"}"#.into(),
            ErrorKind::InvalidMessage,
        ),
        ("bad-scheme", job("bad-scheme", "ftp://example.com/a.png"), ErrorKind::InvalidMessage),
        ("not-image", job("not-image", &format!("s3://{b}/not-an-image.png")), ErrorKind::Decode),
        ("missing", job("missing", &format!("s3://{b}/nothing-here.png")), ErrorKind::FetchNotFound),
        ("too-big", job("too-big", &format!("s3://{b}/big.png")), ErrorKind::TooLarge),
        ("bomb", job("bomb", &format!("s3://{b}/bomb.png")), ErrorKind::TooLarge),
        ("metadata", job("metadata", "http://169.254.169.254/latest/meta-data/"), ErrorKind::BlockedUrl),
        ("private", job("private", "http://10.0.0.1/a.png"), ErrorKind::BlockedUrl),
    ];
    let mut bodies: Vec<String> = cases.iter().map(|(_, b, _)| b.clone()).collect();
    bodies.push("{this is not json".into());
    s.enqueue(&bodies).await;
    let w = spawn_worker(
        &s,
        "w-bad",
        &["--lease-seconds", "3", "--max-image-bytes", "200000", "--max-pixels", "4000000", "--retries", "1"],
    );
    w.ready(Duration::from_secs(60)).await;
    let results = s.results(cases.len(), Duration::from_secs(120)).await;
    let by_id: HashMap<&str, _> = results.iter().map(|r| (r.job_id.as_str(), r)).collect();
    for (id, _, kind) in &cases {
        let r = by_id.get(id).unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(r.status, ResultStatus::Error, "{id}");
        assert_eq!(r.error.as_ref().map(|e| e.kind), Some(*kind), "{id}: {:?}", r.error);
    }
    // The nameless one has no result: it reaches the DLQ by redrive.
    let mut in_dlq = Vec::new();
    for _ in 0..60 {
        in_dlq = s.dlq.receive(10, Duration::from_secs(1)).await.expect("receive dlq");
        if !in_dlq.is_empty() {
            break;
        }
    }
    assert_eq!(in_dlq.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["{this is not json"]);
    assert_eq!(w.get("/healthz").await.map(|(s, _)| s), Some(200), "still alive");
    assert_eq!(w.get("/readyz").await.map(|(s, _)| s), Some(200), "still ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_time_returns_unstarted_messages_and_loses_nothing() {
    if common::skip() {
        return;
    }
    const N: usize = 120;
    let s = stack("drain", Duration::from_secs(60), 5).await;
    let (ids, bodies, _) = digit_jobs(&s, N).await;
    s.enqueue(&bodies).await;
    let mut w =
        spawn_worker(&s, "w-drain", &["--lease-seconds", "60", "--drain-timeout-seconds", "20", "--max-batch", "8"]);
    let first = s.results(1, Duration::from_secs(120)).await;
    w.signal("TERM");
    let status = w.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after SIGTERM, got {status:?}");
    // Nothing stays hidden: every message the worker did not finish is
    // visible again at once, not after the 60 s visibility timeout.
    let (_, in_flight) = s.depth(&s.res.input_queue_url).await;
    assert_eq!(in_flight, 0, "no message left invisible after the drain");
    // A second worker finishes the rest; every job ends exactly once.
    let _w2 = spawn_worker(&s, "w-after", &["--lease-seconds", "60"]);
    // `first` came off the output queue already: it counts towards N.
    let all = s.more_results(first, N, Duration::from_secs(240)).await;
    let distinct: HashSet<&str> = all.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(distinct.len(), N);
    let outcomes = s.outcomes(&ids).await;
    assert_eq!(outcomes.len(), N);
    assert!(outcomes.values().all(|o| o.status == Status::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_worker_the_survivor_takes_over_and_every_job_completes_once() {
    if common::skip() {
        return;
    }
    const N: usize = 150;
    // Short leases so the dead worker's claims expire within the test.
    let s = stack("crash", Duration::from_secs(6), 10).await;
    let (ids, bodies, want) = digit_jobs(&s, N).await;
    s.enqueue(&bodies).await;
    // The victim holds at most 20 jobs but waits up to 4 s to fill a batch
    // of 64, so it sits on claimed jobs; it is killed while it holds some (a
    // fast worker's claims may all be finished whenever the test looks).
    let victim = spawn_worker(
        &s,
        "w-victim",
        &["--lease-seconds", "6", "--max-batch", "64", "--max-wait-ms", "4000", "--max-in-flight", "20"],
    );
    let survivor = spawn_worker(&s, "w-survivor", &["--lease-seconds", "6", "--max-batch", "4"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while victim.metric("scorefleet_in_flight ").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the victim never claimed a job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.signal("KILL");
    let all = s.more_results(Vec::new(), N, Duration::from_secs(300)).await;
    let distinct: HashSet<&str> = all.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(distinct.len(), N, "every job completes");
    for r in &all {
        assert_eq!(r.top().map(|p| &p.label), want.get(&r.job_id), "{}", r.job_id);
    }
    let outcomes = s.outcomes(&ids).await;
    assert_eq!(outcomes.len(), N, "one outcome record per job");
    assert!(outcomes.values().all(|o| o.status == Status::Completed));
    // The victim died holding claims; the survivor took them over once their
    // leases ran out.
    assert!(survivor.metric("scorefleet_leases_taken_over_total ").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_scored_once_and_every_copy_is_deleted() {
    if common::skip() {
        return;
    }
    if std::env::var("SCOREFLEET_EMULATOR").is_ok_and(|e| e == "moto") {
        // Run on moto as `duplicates_on_moto`, ignored: see there.
        return;
    }
    duplicates_scored_once().await;
}

/// The same test on moto, where it is flaky: it failed 3 of about 20 runs
/// (2026-11-27). moto's threaded server does not make a conditional
/// UpdateItem atomic, so two copies of one job claimed at the same instant
/// can both win; DynamoDB and ministack serialise them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky on moto (3 of ~20 runs): its conditional UpdateItem is not atomic under concurrent claims"]
async fn duplicates_on_moto() {
    if common::skip() {
        return;
    }
    duplicates_scored_once().await;
}

async fn duplicates_scored_once() {
    let s = stack("dup", Duration::from_secs(4), 10).await;
    let (ids, bodies, want) = digit_jobs(&s, 1).await;
    let body = bodies[0].clone();
    s.enqueue(&[body.clone(), body.clone(), body.clone()]).await;
    let w = spawn_worker(&s, "w-dup", &["--lease-seconds", "4"]);
    let first = s.results(1, Duration::from_secs(120)).await;
    assert_eq!(first[0].top().map(|p| &p.label), want.get(ids[0].as_str()));
    // Every copy is answered and deleted: the busy ones come back after their
    // visibility timeout and are answered from the table.
    let mut depth = s.depth(&s.res.input_queue_url).await;
    for _ in 0..150 {
        if depth == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        depth = s.depth(&s.res.input_queue_url).await;
    }
    assert_eq!(depth, (0, 0), "all three copies deleted");
    // Once more after completion.
    s.enqueue(&[body]).await;
    let mut dups = 0;
    for _ in 0..150 {
        dups = w.metric("scorefleet_duplicates_skipped_total ").await;
        if dups >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dups >= 3, "two busy copies and the late copy answered from the table, got {dups}");
    assert_eq!(w.metric("scorefleet_inferences_total ").await, 1, "one inference");
    let outcomes = s.outcomes(&ids).await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes.values().next().map(|o| o.attempt), Some(1), "claimed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_outlives_the_visibility_timeout_stays_with_its_owner() {
    if common::skip() {
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = stack("lease", Duration::from_secs(3), 10).await;
    let png = digits(1).remove(0);
    // An image server that takes ~8 s (well past the 3 s visibility) to send
    // one small PNG, a byte chunk per second.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let png = png.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", png.len());
                let _ = sock.write_all(head.as_bytes()).await;
                for chunk in png.chunks(png.len().div_ceil(8)) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = sock.write_all(chunk).await;
                }
            });
        }
    });
    let url = format!("http://127.0.0.1:{port}/slow.png");
    let job = scorefleet_core::job::JobMessage::new(&url, &s.run_id, None).expect("job");
    s.enqueue(&[job.to_json()]).await;
    let flags = ["--lease-seconds", "3", "--allow-private-cidrs", "127.0.0.0/8"];
    let a = spawn_worker(&s, "w-one", &flags);
    let b = spawn_worker(&s, "w-two", &flags);
    let results = s.results(1, Duration::from_secs(120)).await;
    assert_eq!(results[0].status, ResultStatus::Ok, "{:?}", results[0].error);
    let outcomes = s.outcomes(std::slice::from_ref(&job.job_id)).await;
    let rec = outcomes.get(&job.job_id).expect("outcome");
    assert_eq!(rec.attempt, 1, "never claimed a second time");
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 1, "fetched once: no second worker started it");
    let renewals =
        a.metric("scorefleet_lease_renewals_total ").await + b.metric("scorefleet_lease_renewals_total ").await;
    assert!(renewals >= 2, "the owner kept its lease alive ({renewals} renewals)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_panic_stops_the_worker_nonzero_and_strands_no_job() {
    if common::skip() {
        return;
    }
    const N: usize = 60;
    // Lease and visibility well past the test's deadline for the second
    // worker: a message the first one stranded (invisible, or claimed) could
    // not come back in time.
    const LEASE: u64 = 60;
    const DRAIN: u64 = 10;
    let s = stack("panic", Duration::from_secs(LEASE), 5).await;
    let (ids, bodies, want) = digit_jobs(&s, N).await;
    s.enqueue(&bodies).await;
    let lease = LEASE.to_string();
    let drain = DRAIN.to_string();
    // Batches of 4 (waiting up to 200 ms to fill) and a model that panics on
    // its third: when it does, jobs are claimed, fetched, batched and
    // recorded in every stage.
    let mut a = spawn_worker(
        &s,
        "w-panics",
        &[
            "--lease-seconds",
            &lease,
            "--drain-timeout-seconds",
            &drain,
            "--max-batch",
            "4",
            "--max-wait-ms",
            "200",
            "--fault-panic-on-batch",
            "3",
        ],
    );
    // Watch readiness until the process ends: the last 200 is (about) when
    // the fault was seen; the drain must end within its limit after it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_ready = None;
    let status = loop {
        if let Some(status) = a.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker is still running 120 s after its model panicked");
        if let Some((200, _)) = a.get("/readyz").await {
            last_ready = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = Instant::now();
    assert!(!status.success(), "a model panic must end the worker non-zero, got {status:?}");
    let last_ready = last_ready.expect("the worker was ready before its model panicked");
    let after = exited - last_ready;
    assert!(after <= Duration::from_secs(DRAIN + 3), "exited {after:?} after it stopped being ready");

    // A second worker finishes every job well before a stranded message's
    // visibility (a whole lease after the first worker received it) ends.
    let b = spawn_worker(&s, "w-after", &["--lease-seconds", &lease]);
    b.ready(Duration::from_secs(60)).await;
    let all = s.results(N, Duration::from_secs(LEASE / 2)).await;
    let mut per_job: HashMap<&str, usize> = HashMap::new();
    for r in &all {
        *per_job.entry(r.job_id.as_str()).or_default() += 1;
        assert_eq!(r.top().map(|p| &p.label), want.get(&r.job_id), "{}", r.job_id);
    }
    assert_eq!(per_job.len(), N, "every job finished");
    assert!(per_job.values().all(|n| *n == 1), "nothing scored (or sent) twice: {per_job:?}");
    let by_b = all.iter().filter(|r| r.worker == "w-after").count() as u64;
    assert!(by_b > 0, "the first worker stopped before finishing everything");
    assert_eq!(b.metric("scorefleet_inferences_total ").await, by_b, "the second worker scored only what it sent");
    let outcomes = s.outcomes(&ids).await;
    assert_eq!(outcomes.len(), N);
    assert!(outcomes.values().all(|o| o.status == Status::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_longer_than_the_queue_visibility_is_refused_at_start() {
    if common::skip() {
        return;
    }
    let s = stack("longlease", Duration::from_secs(5), 5).await;
    let mut w = spawn_worker(&s, "w-long", &["--lease-seconds", "10"]);
    let status = w.exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "refused at start, got {status:?}");
    let (visible, in_flight) = s.depth(&s.res.input_queue_url).await;
    assert_eq!((visible, in_flight), (0, 0), "nothing was received");
}

/// Jobs of several images (`enqueue --images-per-job`), in finish-only mode:
/// one result per job with one entry per image, a bad image failing only
/// itself, a job of bad images failing as a whole, and a re-run of the same
/// run skipped by the batched read (the stored results re-sent, nothing
/// scored again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_several_images_answers_each_and_a_rerun_is_skipped() {
    if common::skip() {
        return;
    }
    use scorefleet_core::job::{Image, JobMessage};
    let s = stack("multi", Duration::from_secs(30), 5).await;
    let pngs = digits(6);
    let labels = common::offline_labels(&pngs).await;
    let b = s.res.bucket.clone();
    for (i, png) in pngs.into_iter().enumerate() {
        s.put(&format!("multi/{i}.png"), png).await;
    }
    s.put("multi/text.png", b"this is not a png".to_vec()).await;
    let attrs = |i: usize| Some(serde_json::Map::from_iter([("i".to_owned(), serde_json::json!(i))]));
    let image = |key: &str, i: usize| Image::new(&format!("s3://{b}/{key}"), attrs(i)).expect("image");
    // Job 1: six digits with a non-image and a missing key among them.
    let mut keys: Vec<String> = (0..6).map(|i| format!("multi/{i}.png")).collect();
    keys.insert(2, "multi/text.png".into());
    keys.insert(5, "multi/missing.png".into());
    let mixed =
        JobMessage::multi(&s.run_id, keys.iter().enumerate().map(|(i, k)| image(k, i)).collect(), None).expect("job");
    // Job 2: nothing to score.
    let broken =
        JobMessage::multi(&s.run_id, vec![image("multi/text.png", 0), image("multi/missing-too.png", 1)], None)
            .expect("job");
    let bodies = vec![mixed.to_json(), broken.to_json()];
    s.enqueue(&bodies).await;
    let w = spawn_worker(&s, "w-multi", &["--lease-seconds", "30", "--dedup", "finish-only", "--retries", "1"]);
    let results = s.results(2, Duration::from_secs(120)).await;
    let by_id: HashMap<&str, _> = results.iter().map(|r| (r.job_id.as_str(), r)).collect();

    let r = by_id[mixed.job_id.as_str()];
    assert_eq!((r.v, r.status), (2, ResultStatus::Ok), "{:?}", r.error);
    assert_eq!(r.model.as_ref().map(|m| m.name.as_str()), Some("digits"));
    assert_eq!(r.images.len(), 8, "one entry per image");
    let mut digit = 0;
    for (i, (entry, key)) in r.images.iter().zip(&keys).enumerate() {
        assert_eq!(entry.url, format!("s3://{b}/{key}"), "image {i} in the job's order");
        assert_eq!(entry.attrs, attrs(i), "image {i}'s attrs passed through");
        match key.as_str() {
            "multi/text.png" => assert_eq!(entry.error.as_ref().map(|e| e.kind), Some(ErrorKind::Decode)),
            "multi/missing.png" => assert_eq!(entry.error.as_ref().map(|e| e.kind), Some(ErrorKind::FetchNotFound)),
            _ => {
                assert_eq!(entry.status, ResultStatus::Ok, "image {i}: {:?}", entry.error);
                assert_eq!(entry.top_k.first().map(|p| &p.label), Some(&labels[digit]), "image {i}");
                digit += 1;
            }
        }
    }
    let r = by_id[broken.job_id.as_str()];
    assert_eq!((r.v, r.status), (2, ResultStatus::Error));
    assert_eq!(r.error.as_ref().map(|e| e.kind), Some(ErrorKind::Decode), "the first image's kind");
    assert_eq!(
        r.images.iter().filter_map(|i| i.error.as_ref().map(|e| e.kind)).collect::<Vec<_>>(),
        [ErrorKind::Decode, ErrorKind::FetchNotFound]
    );
    let outcomes = s.outcomes(&[mixed.job_id.clone(), broken.job_id.clone()]).await;
    assert_eq!(outcomes.get(&mixed.job_id).map(|o| o.status), Some(Status::Completed));
    assert_eq!(outcomes.get(&broken.job_id).map(|o| o.status), Some(Status::Failed));
    assert_eq!(w.metric("scorefleet_inferences_total ").await, 6, "six digits scored");
    assert_eq!(w.metric("scorefleet_images_scored_total ").await, 6);
    assert_eq!(w.metric("scorefleet_images_failed_total ").await, 4);

    // The same run again: both jobs are found by the batched read and
    // answered from the table.
    let lookups = w.metric("scorefleet_dedup_lookups_total ").await;
    s.enqueue(&bodies).await;
    let again = s.results(2, Duration::from_secs(120)).await;
    for r in &again {
        let first = by_id[r.job_id.as_str()];
        assert_eq!((r.images.len(), &r.completed_at), (first.images.len(), &first.completed_at), "the stored result");
    }
    assert!(w.metric("scorefleet_duplicates_skipped_total ").await >= 2);
    assert!(w.metric("scorefleet_dedup_lookups_total ").await >= lookups + 2, "looked up in one batched read");
    assert_eq!(w.metric("scorefleet_inferences_total ").await, 6, "nothing scored again");
}
