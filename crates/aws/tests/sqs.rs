//! SQS adapter and provisioning against the local emulator.

mod common;

use common::{config, counters, delete_queue, depth, eventually, receive_n};
use scorefleet_aws::SqsQueue;
use scorefleet_aws::provision::{self, StackSpec};
use scorefleet_core::traits::{JobQueue, MessageSink};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn send_and_receive_more_than_ten_bodies_in_batches_of_ten() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let q = common::queue(&cfg, "roundtrip", Duration::from_secs(60), &c).await;
    let bodies: Vec<String> = (0..25).map(|i| format!(r#"{{"n":{i}}}"#)).collect();

    let failed = q.send(&bodies).await.expect("send");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(c.get("SendMessageBatch"), 3, "25 bodies are 3 batches of at most 10");

    let got = receive_n(&q, 25, WAIT).await;
    let want: BTreeSet<_> = bodies.iter().cloned().collect();
    assert_eq!(got.iter().map(|m| m.body.clone()).collect::<BTreeSet<_>>(), want);
    assert!(got.iter().all(|m| m.receive_count == 1), "first deliveries");

    let before = c.get("DeleteMessageBatch");
    let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    assert_eq!(q.delete(&handles).await.expect("delete"), vec![]);
    assert_eq!(c.get("DeleteMessageBatch") - before, 3);
    eventually("an empty queue", WAIT, || async { (depth(&cfg, q.url()).await == (0, 0)).then_some(()) }).await;
    delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn the_new_run_mark_is_read_back_only_from_the_messages_sent_with_it() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let q = common::queue(&cfg, "newrun", Duration::from_secs(60), &c).await;
    let bodies: Vec<String> = (0..12).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    let marks: Vec<bool> = (0..12).map(|i| i % 3 == 0).collect();
    assert_eq!(q.send_marked(&bodies, &marks).await.expect("send"), vec![]);
    assert_eq!(q.send(&[r#"{"n":"plain"}"#.to_owned()]).await.expect("send"), vec![]);
    let got = receive_n(&q, 13, WAIT).await;
    let mut seen: Vec<(String, bool)> = got.iter().map(|m| (m.body.clone(), m.new_run)).collect();
    seen.sort();
    let mut want: Vec<(String, bool)> = bodies.iter().cloned().zip(marks).collect();
    want.push((r#"{"n":"plain"}"#.to_owned(), false));
    want.sort();
    assert_eq!(seen, want);
    let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    assert_eq!(q.delete(&handles).await.expect("delete"), vec![]);
    delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn delete_reports_exactly_the_invalid_entry_and_deletes_the_rest() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let q = common::queue(&cfg, "delfail", Duration::from_secs(60), &c).await;
    q.send(&["a".into(), "b".into(), "c".into()]).await.expect("send");
    let got = receive_n(&q, 3, WAIT).await;
    let h: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();

    let failed = q.delete(&[h[0].clone(), "not-a-receipt-handle".into(), h[2].clone()]).await.expect("delete");
    assert_eq!(failed.iter().map(|f| f.index).collect::<Vec<_>>(), vec![1], "{failed:?}");
    assert!(!failed[0].code.is_empty());
    // The two valid ones are gone; the one we did not delete is still in flight.
    eventually("one message left, in flight", WAIT, || async { (depth(&cfg, q.url()).await == (0, 1)).then_some(()) })
        .await;

    // The same handle twice in one call: entry ids are positions, so the call
    // is never refused as a whole (BatchEntryIdsNotDistinct).
    let failed = q.delete(&[h[1].clone(), h[1].clone()]).await.expect("duplicate handles are one valid call");
    assert_eq!(failed, vec![], "one handle twice is one delete");
    eventually("an empty queue", WAIT, || async { (depth(&cfg, q.url()).await == (0, 0)).then_some(()) }).await;
    delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn change_visibility_reports_exactly_the_invalid_entry() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let q = common::queue(&cfg, "visfail", Duration::from_secs(60), &c).await;
    q.send(&["a".into(), "b".into(), "c".into()]).await.expect("send");
    let got = receive_n(&q, 3, WAIT).await;

    let entries = vec![
        (got[0].receipt_handle.clone(), Duration::ZERO),
        ("not-a-receipt-handle".to_owned(), Duration::ZERO),
        (got[2].receipt_handle.clone(), Duration::ZERO),
    ];
    let failed = q.change_visibility(&entries).await.expect("change visibility");
    assert_eq!(failed.iter().map(|f| f.index).collect::<Vec<_>>(), vec![1], "{failed:?}");

    // The two valid entries were made visible again.
    let again = receive_n(&q, 2, WAIT).await;
    let ids: BTreeSet<_> = again.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, BTreeSet::from([got[0].message_id.clone(), got[2].message_id.clone()]));
    assert!(again.iter().all(|m| m.receive_count == 2), "{again:?}");
    delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn visibility_zero_returns_a_message_at_once_and_an_extension_keeps_it_hidden() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    // A short default visibility, so only the extension can explain a
    // message staying hidden.
    let q = common::queue(&cfg, "vis", Duration::from_secs(3), &c).await;
    q.send(&["back".into(), "hidden".into()]).await.expect("send");
    let got = receive_n(&q, 2, WAIT).await;
    let back = got.iter().find(|m| m.body == "back").expect("back");
    let hidden = got.iter().find(|m| m.body == "hidden").expect("hidden");

    let failed = q
        .change_visibility(&[
            (back.receipt_handle.clone(), Duration::ZERO),
            (hidden.receipt_handle.clone(), Duration::from_secs(120)),
        ])
        .await
        .expect("change visibility");
    assert!(failed.is_empty(), "{failed:?}");

    let start = Instant::now();
    let again = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(again[0].body, "back");
    assert_eq!(again[0].receive_count, 2);
    assert!(start.elapsed() < Duration::from_secs(3), "visible again before the default visibility could expire");
    // Past the queue's 3 s default the extended one still does not come back.
    let watch = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch {
        let seen = q.receive(10, Duration::from_secs(1)).await.expect("receive");
        assert!(seen.iter().all(|m| m.body != "hidden"), "an extended message was delivered: {seen:?}");
        q.change_visibility(
            &seen.iter().map(|m| (m.receipt_handle.clone(), Duration::from_secs(120))).collect::<Vec<_>>(),
        )
        .await
        .expect("hide the other one");
    }
    delete_queue(&cfg, q.url()).await;
}

#[tokio::test]
async fn a_message_that_keeps_failing_reaches_the_dlq_after_max_receive_count() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let mut spec = StackSpec::named(&common::unique("dlq"));
    spec.max_receive_count = 2;
    let stack = provision::provision(&cfg, &spec, &c).await.expect("provision");
    // Idempotent: a second run converges on the same resources.
    assert_eq!(provision::provision(&cfg, &spec, &c).await.expect("provision again"), stack);
    let policy = provision::redrive_policy(&cfg.sqs(), &stack.input_queue_url, &c)
        .await
        .expect("read policy")
        .expect("input queue has a redrive policy");
    assert_eq!(policy.max_receive_count, 2);
    assert_eq!(policy.dead_letter_target_arn, stack.dead_letter_queue_arn);

    let input = SqsQueue::new(cfg.sqs(), &stack.input_queue_url, c.clone());
    let dlq = SqsQueue::new(cfg.sqs(), &stack.dead_letter_queue_url, c.clone());
    input.send(&["poison".into()]).await.expect("send");

    // Each delivery "fails" (visibility back to 0) until SQS moves it.
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        assert!(Instant::now() < deadline, "not in the DLQ within 30 s; input deliveries: {counts:?}");
        for m in input.receive(10, Duration::from_secs(1)).await.expect("receive") {
            counts.push(m.receive_count);
            let failed = input.change_visibility(&[(m.receipt_handle, Duration::ZERO)]).await.expect("vis 0");
            assert!(failed.is_empty(), "{failed:?}");
        }
        if let Some(m) = dlq.receive(10, Duration::ZERO).await.expect("receive dlq").into_iter().next() {
            break m;
        }
    };
    assert_eq!(dead.body, "poison");
    assert_eq!(counts, vec![1, 2], "delivered exactly maxReceiveCount times before the move");

    for url in [&stack.input_queue_url, &stack.dead_letter_queue_url, &stack.output_queue_url] {
        delete_queue(&cfg, url).await;
    }
    common::delete_table(&cfg, &stack.table).await;
    common::delete_bucket(&cfg, &stack.bucket).await;
}

#[tokio::test]
async fn a_fifo_output_queue_delivers_one_copy_of_a_result_sent_twice_with_its_key() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let name = format!("{}.fifo", common::unique("fifoout"));
    let url = provision::ensure_queue(&cfg.sqs(), &name, provision::output_attributes(&name), &c)
        .await
        .expect("create the FIFO queue");
    // Converging an existing FIFO queue must not try to change its type.
    let again = provision::ensure_queue(&cfg.sqs(), &name, provision::output_attributes(&name), &c)
        .await
        .expect("converge the FIFO queue");
    assert_eq!(again, url);
    let q = SqsQueue::new(cfg.sqs(), url, c.clone());
    assert!(q.is_fifo());

    // 12 results (two batches), then the first 5 again, as a worker re-sends
    // stored results after a crash between send and delete.
    let keys: Vec<String> = (0..12).map(|i| format!("run-1/job:{i:03}")).collect();
    let bodies: Vec<String> = keys.iter().map(|k| format!(r#"{{"job_id":"{k}"}}"#)).collect();
    assert_eq!(q.send_keyed(&keys, &bodies).await.expect("send"), vec![]);
    assert_eq!(q.send_keyed(&keys[..5], &bodies[..5]).await.expect("re-send"), vec![], "a repeat is accepted");

    let got = receive_n(&q, 12, WAIT).await;
    let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    assert_eq!(q.delete(&handles).await.expect("delete"), vec![]);
    // Nothing more arrives: the five re-sends were dropped as duplicates.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let more = q.receive(10, Duration::from_secs(1)).await.expect("receive");
        assert!(more.is_empty(), "a re-sent result was delivered again: {:?}", more[0].body);
    }
    let want: BTreeSet<_> = bodies.iter().cloned().collect();
    assert_eq!(got.into_iter().map(|m| m.body).collect::<BTreeSet<_>>(), want);
    delete_queue(&cfg, q.url()).await;
}
