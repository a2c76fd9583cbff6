//! The producer binary against the local AWS emulator: S3 prefixes past one
//! ListObjectsV2 page, manifests with bad lines, stdin, idempotent re-runs,
//! collect/report over a real output queue, and report thumbnails from a real
//! bucket.

#[path = "../../aws/tests/common/mod.rs"]
mod common;

use scorefleet_aws::{ApiCounters, S3Store, SqsQueue};
use scorefleet_core::job::JobMessage;
use scorefleet_core::traits::MessageSink;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn producer(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scorefleet-producer"));
    cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn producer");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("producer runs")
}

fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("summary is not JSON ({e}): stdout {stdout}, stderr {}", String::from_utf8_lossy(&out.stderr))
    })
}

async fn job_ids(q: &SqsQueue, n: usize) -> BTreeSet<String> {
    let got = common::receive_n(q, n, Duration::from_secs(60)).await;
    got.iter().map(|m| JobMessage::parse(&m.body).expect("a valid job").job_id.to_string()).collect()
}

#[tokio::test]
async fn s3_prefix_source_lists_past_one_page_and_filters() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let bucket = common::bucket(&cfg, "prodlist").await;
    let store = Arc::new(S3Store::new(cfg.s3(), Arc::new(ApiCounters::new())));
    // 1,030 images and 20 other files under the prefix, 5 images outside it.
    let keys: Vec<String> = (0..1030)
        .map(|i| format!("imgs/{i:05}.png"))
        .chain((0..20).map(|i| format!("imgs/notes-{i}.txt")))
        .chain((0..5).map(|i| format!("other/{i}.png")))
        .collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let (store, bucket, sem) = (store.clone(), bucket.clone(), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire().await.expect("semaphore");
            store.put(&bucket, &key, b"x".to_vec()).await.expect("put");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("upload task");
    }
    let prefix = format!("s3://{bucket}/imgs/");
    // A dry run counts without sending: 1,030 messages would slow moto's SQS
    // to a crawl, and the listing is what is under test here.
    let out = producer(
        &[
            "enqueue",
            "--queue-url",
            "http://unused.invalid/q",
            "--s3-prefix",
            &prefix,
            "--suffix",
            ".png",
            "--dry-run",
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!((s["enqueued"].as_u64(), s["skipped"].as_u64()), (Some(1030), Some(0)), "{s}");
    let out = producer(
        &[
            "enqueue",
            "--queue-url",
            "http://unused.invalid/q",
            "--s3-prefix",
            &prefix,
            "--glob",
            "imgs/000*.png",
            "--dry-run",
            "--json",
        ],
        None,
    );
    assert_eq!(summary(&out)["enqueued"].as_u64(), Some(100));
    common::delete_bucket(&cfg, &bucket).await;
}

#[tokio::test]
async fn manifest_with_bad_lines_enqueues_the_good_ones_and_reruns_are_idempotent() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let counters = common::counters();
    let q = common::queue(&cfg, "prodcsv", Duration::from_secs(30), &counters).await;
    let dir = std::env::temp_dir().join(common::unique("manifest"));
    std::fs::create_dir_all(&dir).expect("dir");
    let csv = dir.join("m.csv");
    let mut text = String::from("url,job_id,label\n");
    for i in 0..23 {
        text.push_str(&format!("s3://bkt-a/{i}.png,,{}\n", i % 10));
    }
    text.push_str("ftp://nope/x.png,,1\n"); // line 25: bad scheme
    text.push_str("s3://bkt-a/explicit.png,my-id-1,4\n");
    text.push_str(",x,1\n"); // line 27: no url
    std::fs::write(&csv, &text).expect("write manifest");
    let args =
        ["enqueue", "--queue-url", q.url(), "--manifest", csv.to_str().expect("utf8"), "--run-id", "r-test", "--json"];
    let out = producer(&args, None);
    assert!(out.status.success(), "bad lines are skipped, not fatal: {}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!((s["enqueued"].as_u64(), s["skipped"].as_u64(), s["failed"].as_u64()), (Some(24), Some(2), Some(0)));
    let errors = s["errors"].to_string();
    assert!(errors.contains("line 25") && errors.contains("line 27"), "{errors}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 25"), "each bad line is reported as it is skipped: {stderr}");

    let first = job_ids(&q, 24).await;
    assert!(first.contains("my-id-1"));
    let expected = JobMessage::new("s3://bkt-a/0.png", "r-test", None).expect("valid").job_id.to_string();
    assert!(first.contains(&expected), "derived ids are (run_id, url) hashes");

    // The same command again enqueues exactly the same ids. (The first 24
    // are still in flight, so these are the 24 new messages.)
    let out = producer(&args, None);
    assert!(out.status.success());
    let second = job_ids(&q, 24).await;
    assert_eq!(first, second);

    // --strict stops at the first bad line and fails the run.
    let strict: Vec<&str> = args.iter().copied().chain(["--strict", "--dry-run"]).collect();
    let out = producer(&strict, None);
    assert!(!out.status.success());
    assert!(summary(&out)["aborted"].as_str().is_some_and(|a| a.contains("line 25")));
    common::delete_queue(&cfg, q.url()).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn stdin_jsonl_passes_job_ids_and_attrs_through() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let counters = common::counters();
    let q = common::queue(&cfg, "prodstdin", Duration::from_secs(30), &counters).await;
    let input = "{\"url\":\"https://example.com/a.png\",\"job_id\":\"j-a\",\"attrs\":{\"label\":\"3\"}}\n\
                 {\"url\":\"s3://bkt-b/b.png\"}\n\
                 {\"oops\":1}\n";
    let out = producer(
        &["enqueue", "--queue-url", q.url(), "--stdin", "--format", "jsonl", "--run-id", "r2", "--json"],
        Some(input),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!((s["enqueued"].as_u64(), s["skipped"].as_u64()), (Some(2), Some(1)));
    let got = common::receive_n(&q, 2, Duration::from_secs(30)).await;
    let jobs: Vec<JobMessage> = got.iter().map(|m| JobMessage::parse(&m.body).expect("valid")).collect();
    let a = jobs.iter().find(|j| j.job_id.as_str() == "j-a").expect("explicit id kept");
    assert_eq!(a.images[0].attrs.as_ref().and_then(|m| m.get("label")), Some(&serde_json::json!("3")));
    assert!(jobs.iter().all(|j| j.run_id == "r2"));
    common::delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn enqueue_packs_images_per_job_with_their_attrs_in_order() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let counters = common::counters();
    let q = common::queue(&cfg, "prodmulti", Duration::from_secs(30), &counters).await;
    let input: String =
        (0..7).map(|i| format!("{{\"url\":\"s3://bkt-b/{i}.png\",\"attrs\":{{\"label\":\"{i}\"}}}}\n")).collect();
    let args = [
        "enqueue",
        "--queue-url",
        q.url(),
        "--stdin",
        "--format",
        "jsonl",
        "--run-id",
        "r3",
        "--images-per-job",
        "3",
        "--json",
    ];
    let out = producer(&args, Some(&input));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!((s["enqueued"].as_u64(), s["images"].as_u64(), s["skipped"].as_u64()), (Some(3), Some(7), Some(0)));
    let got = common::receive_n(&q, 3, Duration::from_secs(30)).await;
    let mut jobs: Vec<JobMessage> = got.iter().map(|m| JobMessage::parse(&m.body).expect("valid")).collect();
    jobs.sort_by_key(|j| j.images[0].url_raw.clone());
    assert_eq!(jobs.iter().map(|j| j.images.len()).collect::<Vec<_>>(), [3, 3, 1]);
    assert!(jobs.iter().all(|j| j.multi && j.run_id == "r3"));
    let labels: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.images.iter())
        .map(|i| i.attrs.as_ref().and_then(|a| a.get("label")).and_then(|l| l.as_str()).unwrap_or("").to_owned())
        .collect();
    assert_eq!(labels, (0..7).map(|i| i.to_string()).collect::<Vec<_>>());
    common::delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn collect_drops_duplicates_loses_nothing_and_report_counts_them() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let counters = common::counters();
    let q = common::queue(&cfg, "prodcollect", Duration::from_secs(30), &counters).await;
    let result = |id: usize, label: usize| {
        format!(
            r#"{{"v":1,"job_id":"j{id}","run_id":"r","url":"s3://b/{id}.png","status":"ok","top_k":[{{"label":"{label}","score":0.9}}],"attempts":1,"worker":"w","completed_at":"2026-11-26T10:00:0{}Z","attrs":{{"label":"{label}"}}}}"#,
            id % 10
        )
    };
    // 30 distinct results, 12 of them sent twice, plus one error result.
    let mut bodies: Vec<String> = (0..30).map(|i| result(i, i % 3)).collect();
    bodies.extend((0..12).map(|i| result(i, i % 3)));
    bodies.push(r#"{"v":1,"job_id":"bad","run_id":"r","url":"s3://b/x","status":"error","error":{"kind":"decode","message":"not an image"},"attempts":1,"worker":"w","completed_at":"2026-11-26T10:00:09Z"}"#.into());
    let refused = q.send(&bodies).await.expect("send");
    assert!(refused.is_empty());
    let dir = std::env::temp_dir().join(common::unique("collect"));
    std::fs::create_dir_all(&dir).expect("dir");
    let jsonl = dir.join("results.jsonl");
    let out = producer(
        &["collect", "--queue-url", q.url(), "--out", jsonl.to_str().expect("utf8"), "--wait-seconds", "1", "--json"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!(
        (s["written"].as_u64(), s["duplicates"].as_u64(), s["deleted"].as_u64()),
        (Some(31), Some(12), Some(43))
    );
    assert_eq!(std::fs::read_to_string(&jsonl).expect("jsonl").lines().count(), 31);
    assert_eq!(std::fs::read_to_string(dir.join("results.csv")).expect("csv").lines().count(), 32);
    assert_eq!(common::depth(&cfg, q.url()).await, (0, 0), "everything written was deleted");

    let html = dir.join("report.html");
    let out = producer(
        &["report", "--in", jsonl.to_str().expect("utf8"), "--out", html.to_str().expect("utf8"), "--json"],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!((s["jobs"].as_u64(), s["succeeded"].as_u64(), s["failed"].as_u64()), (Some(31), Some(30), Some(1)));
    assert_eq!(s["accuracy"].as_f64(), Some(1.0));
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.contains("<div class=value id=jobs>31</div>"));
    assert!(page.contains("<td>decode</td><td class=num>1</td>"));
    common::delete_queue(&cfg, q.url()).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn report_inlines_thumbnails_fetched_from_s3() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let bucket = common::bucket(&cfg, "prodthumbs").await;
    let store = S3Store::new(cfg.s3(), common::counters());
    let png = |w: u32, h: u32| {
        let mut out = Vec::new();
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) % 256) as u8])))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    store.put(&bucket, "digit.png", png(28, 28)).await.expect("put");
    store.put(&bucket, "photo.png", png(640, 480)).await.expect("put");
    store.put(&bucket, "notes.txt", b"not an image".to_vec()).await.expect("put");
    let line = |id: &str, key: &str, body: &str| {
        format!(
            r#"{{"v":1,"job_id":"{id}","run_id":"r","url":"s3://{bucket}/{key}",{body},"attempts":1,"worker":"w","completed_at":"2026-11-26T10:00:00Z","latency_ms":5}}"#
        )
    };
    let ok = |label: &str, score: f32, truth: &str| {
        format!(r#""status":"ok","top_k":[{{"label":"{label}","score":{score}}}],"attrs":{{"label":"{truth}"}}"#)
    };
    let err = |kind: &str| format!(r#""status":"error","error":{{"kind":"{kind}","message":"m"}}"#);
    let results = [
        line("right", "digit.png", &ok("3", 0.97, "3")),
        line("wrong", "photo.png", &ok("8", 0.51, "3")),
        line("capped", "photo.png", &err("too_large")),
        line("broken", "notes.txt", &err("decode")),
        line("gone", "missing.png", &err("fetch_not_found")),
    ]
    .join("\n");
    let dir = std::env::temp_dir().join(common::unique("thumbs"));
    std::fs::create_dir_all(&dir).expect("dir");
    let jsonl = dir.join("results.jsonl");
    std::fs::write(&jsonl, results).expect("write results");
    let html = dir.join("report.html");
    let (jsonl, html_s) = (jsonl.to_str().expect("utf8"), html.to_str().expect("utf8"));

    let out = producer(&["report", "--in", jsonl, "--out", html_s, "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // digit.png and photo.png decode; notes.txt does not; missing.png is never fetched.
    assert_eq!(summary(&out)["thumbnails"].as_u64(), Some(2));
    let page = std::fs::read_to_string(&html).expect("html");
    let thumb = "<img class=thumb src=\"data:image/png;base64,";
    let after = |id: &str| page.split_once(&format!("id={id}")).map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    assert!(after("least-confident").split("</table>").next().is_some_and(|t| t.matches(thumb).count() == 2));
    assert!(after("thumbs-misclassified").contains("true 3 → predicted 8 (1)"));
    assert!(after("thumbs-failed").split("</div>").next().is_some_and(|t| t.contains("alt=\"capped\"")));
    assert!(!page.contains("alt=\"broken\""), "a file that does not decode has no thumbnail");

    let out = producer(&["report", "--in", jsonl, "--out", html_s, "--json", "--no-thumbnails"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&out)["thumbnails"].as_u64(), Some(0));
    assert!(!std::fs::read_to_string(&html).expect("html").contains(thumb));
    let out = producer(&["report", "--in", jsonl, "--out", html_s, "--json", "--thumbnails", "1"], None);
    assert_eq!(summary(&out)["thumbnails"].as_u64(), Some(1), "the limit holds");

    common::delete_bucket(&cfg, &bucket).await;
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[tokio::test]
async fn init_provisions_idempotently_with_a_dead_letter_queue() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let prefix = common::unique("init");
    let run = || {
        let out = producer(&["init", "--prefix", &prefix, "--max-receive-count", "3"], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        summary(&out)
    };
    let first = run();
    let second = run();
    assert_eq!(first, second, "a second init finds the same resources");
    let input = first["input_queue_url"].as_str().expect("input url");
    let policy = scorefleet_aws::provision::redrive_policy(&cfg.sqs(), input, &ApiCounters::new())
        .await
        .expect("read redrive policy")
        .expect("input queue has a redrive policy");
    assert_eq!(policy.max_receive_count, 3);
    let out = producer(&["init", "--prefix", &prefix, "--env"], None);
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains(&format!("export SCOREFLEET_INPUT_QUEUE_URL='{input}'")), "{env}");
    for key in ["input_queue_url", "dead_letter_queue_url", "output_queue_url"] {
        common::delete_queue(&cfg, first[key].as_str().expect("url")).await;
    }
    common::delete_table(&cfg, first["table"].as_str().expect("table")).await;
    common::delete_bucket(&cfg, first["bucket"].as_str().expect("bucket")).await;
}

#[tokio::test]
async fn the_first_enqueue_of_a_run_marks_its_derived_jobs_and_a_second_marks_none() {
    if common::skip() {
        return;
    }
    let cfg = common::config().await;
    let counters = common::counters();
    let q = common::queue(&cfg, "prodnewrun", Duration::from_secs(30), &counters).await;
    let table = common::table(&cfg, "prodnewrun").await;
    let run = common::unique("run");
    let lines = [
        r#"{"url":"s3://bkt-n/0.png"}"#,
        r#"{"url":"s3://bkt-n/1.png"}"#,
        r#"{"url":"s3://bkt-n/2.png","job_id":"given-id"}"#,
    ]
    .join("\n");
    let enqueue = [
        "enqueue",
        "--queue-url",
        q.url(),
        "--stdin",
        "--format",
        "jsonl",
        "--run-id",
        &run,
        "--table",
        &table,
        "--json",
    ];
    use scorefleet_core::traits::JobQueue;
    let take = |n: usize| {
        let q = &q;
        async move {
            let got = common::receive_n(q, n, Duration::from_secs(60)).await;
            let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
            assert_eq!(q.delete(&handles).await.expect("delete"), vec![]);
            got
        }
    };
    let marked = |msgs: &[scorefleet_core::traits::Received]| -> BTreeSet<String> {
        msgs.iter()
            .filter(|m| m.new_run)
            .map(|m| JobMessage::parse(&m.body).expect("a valid job").job_id.to_string())
            .collect()
    };
    let out = producer(&enqueue, Some(&lines));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = take(3).await;
    let derived: BTreeSet<String> = ["s3://bkt-n/0.png", "s3://bkt-n/1.png"]
        .iter()
        .map(|u| JobMessage::new(u, &run, None).expect("valid").job_id.to_string())
        .collect();
    assert_eq!(marked(&first), derived, "the derived ids are marked, the given one is not");
    let out = producer(&enqueue, Some(&lines));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = take(3).await;
    assert_eq!(second.len(), 3);
    assert!(marked(&second).is_empty(), "a second enqueue of the run marks nothing");
    // Without the table nothing says the run is new.
    let other = common::unique("run");
    let plain = ["enqueue", "--queue-url", q.url(), "--stdin", "--format", "jsonl", "--run-id", &other, "--json"];
    let out = producer(&plain, Some(&lines));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(marked(&take(3).await).is_empty());
    common::delete_queue(&cfg, q.url()).await;
    common::delete_table(&cfg, &table).await;
}

#[tokio::test]
async fn status_counts_a_run_from_the_table_as_json_and_text() {
    if common::skip() {
        return;
    }
    use scorefleet_core::lease::{ClaimOutcome, Terminal};
    use scorefleet_core::traits::{JobQueue, OutcomeStore, now_ms};
    let cfg = common::config().await;
    let counters = common::counters();
    let q = common::queue(&cfg, "prodstatus", Duration::from_secs(30), &counters).await;
    let table = common::table(&cfg, "prodstatus").await;
    let run = common::unique("run");
    let urls: Vec<String> = (0..5).map(|i| format!("s3://bkt-s/{i}.png")).collect();
    let enqueue = ["enqueue", "--queue-url", q.url(), "--stdin", "--run-id", &run, "--table", &table, "--json"];
    let out = producer(&enqueue, Some(&urls.join("\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same command again sends the same 5 ids: the total stays 5.
    let out = producer(&enqueue, Some(&urls.join("\n")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Workers: 2 completed, 1 failed, 1 in progress, 1 still queued, and
    // one more job below.
    let store = scorefleet_aws::DynamoOutcomeStore::new(cfg.dynamodb(), &table, counters.clone());
    let now = now_ms();
    for (i, url) in urls.iter().take(4).enumerate() {
        let id = JobMessage::new(url, &run, None).expect("valid").job_id;
        let fence = match store.claim(&id, &run, "w", now, 60_000).await.expect("claim") {
            ClaimOutcome::Claimed(f) => f,
            other => panic!("{other:?}"),
        };
        let terminal = match i {
            0 | 1 => Terminal::Completed,
            2 => Terminal::Failed,
            _ => continue,
        };
        store.finish(&id, &fence, terminal, "{}", now).await.expect("finish").expect("ours");
        // A duplicate delivery of a finished job changes nothing.
        assert!(matches!(store.claim(&id, &run, "w2", now, 60_000).await.expect("claim"), ClaimOutcome::Done(_)));
    }

    // A finish-only worker's job: one write, no claim; counted as done.
    let solo_url = "s3://bkt-s/solo.png";
    let solo = JobMessage::new(solo_url, &run, None).expect("valid").job_id;
    let unclaimed = scorefleet_core::lease::UnclaimedFinish {
        owner: "u",
        run_id: &run,
        terminal: Terminal::Completed,
        result_json: "{}",
        now_ms: now,
    };
    assert_eq!(store.finish_unclaimed(&solo, &unclaimed).await.expect("finish"), Ok(()));
    assert!(store.record_enqueued(&run, 6, now).await.expect("total"));

    // Claims are not in the sparse index: in progress (indexed) is 0, and
    // remaining = total − done is exact.
    let out = producer(&["status", "--table", &table, "--run-id", &run, "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    let counts = ["total", "completed", "failed", "remaining", "in_progress", "queued"].map(|k| s[k].as_u64());
    assert_eq!(counts, [Some(6), Some(3), Some(1), Some(2), Some(0), Some(2)], "{s}");
    assert!(s["in_flight_messages"].is_null(), "{s}");
    // With the input queue: its in-flight messages (one received here, held).
    let held = q.receive(1, Duration::from_secs(1)).await.expect("receive");
    assert_eq!(held.len(), 1);
    let out = producer(&["status", "--table", &table, "--run-id", &run, "--input-queue-url", q.url(), "--json"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    let counts = ["remaining", "in_flight_messages", "queued"].map(|k| s[k].as_u64());
    assert_eq!(counts, [Some(2), Some(1), Some(1)], "{s}");
    assert!(s["images_per_s"].as_f64().is_some_and(|r| r > 0.0), "{s}");
    assert!(s["eta_s"].as_f64().is_some_and(|e| e > 0.0), "{s}");
    assert_eq!(s["complete"].as_bool(), Some(false));

    let out = producer(&["status", "--table", &table, "--run-id", &run], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("done        4  (3 completed, 1 failed)") && text.contains("remaining   2"), "{text}");

    // The rest finish (the in-progress one by a taker-over); then --watch
    // stops by itself at its first, complete, print.
    for url in urls.iter().skip(3) {
        let id = JobMessage::new(url, &run, None).expect("valid").job_id;
        let fence = match store.claim(&id, &run, "w", now + 120_000, 60_000).await.expect("claim") {
            ClaimOutcome::Claimed(f) | ClaimOutcome::TakenOver { fence: f, .. } => f,
            other => panic!("{other:?}"),
        };
        store.finish(&id, &fence, Terminal::Completed, "{}", now).await.expect("finish").expect("ours");
    }
    let out = producer(&["status", "--table", &table, "--run-id", &run, "--json", "--watch", "1"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!(
        (s["completed"].as_u64(), s["remaining"].as_u64(), s["complete"].as_bool()),
        (Some(5), Some(0), Some(true))
    );
    assert_eq!(s["eta_s"].as_f64(), Some(0.0));
    common::delete_queue(&cfg, q.url()).await;
    common::delete_table(&cfg, &table).await;
}
