//! The S3 store against the local emulator: capped get, put, paginated list.

mod common;

use common::{config, counters};
use futures::{StreamExt, TryStreamExt};
use scorefleet_aws::S3Store;
use scorefleet_core::error::ErrorKind;
use scorefleet_core::traits::ObjectStore;

#[tokio::test]
async fn list_walks_every_page_past_one_thousand_keys() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let c = counters();
    let bucket = common::bucket(&cfg, "list").await;
    let store = S3Store::new(cfg.s3(), c.clone());
    let mut want: Vec<String> = (0..1050).map(|i| format!("many/{i:05}.png")).collect();
    // Bounded concurrency: fast, without opening 1,050 connections.
    futures::stream::iter(want.iter().cloned().chain(["other/a".into(), "other/b".into()]))
        .map(|k| {
            let store = &store;
            let bucket = &bucket;
            async move { store.put(bucket, &k, k.as_bytes().to_vec()).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("upload");

    let before = c.get("ListObjectsV2");
    let mut got = store.list(&bucket, "many/").await.expect("list");
    assert!(c.get("ListObjectsV2") - before >= 2, "more than one page");
    got.sort();
    want.sort();
    assert_eq!(got, want);

    let mut pages = store.list_pages(&bucket, "many/").page_size(400);
    let mut sizes = Vec::new();
    while let Some(page) = pages.next_page().await {
        sizes.push(page.expect("page").len());
    }
    assert_eq!(sizes, vec![400, 400, 250]);
    assert!(pages.next_page().await.is_none(), "stays exhausted");
    common::delete_bucket(&cfg, &bucket).await;
}

#[tokio::test]
async fn get_enforces_the_byte_cap_and_types_its_failures() {
    if common::skip() {
        return;
    }
    let cfg = config().await;
    let bucket = common::bucket(&cfg, "cap").await;
    let store = S3Store::new(cfg.s3(), counters());
    let bytes: Vec<u8> = (0..100u8).collect();
    store.put(&bucket, "img/x.png", bytes.clone()).await.expect("put");
    store.put(&bucket, "img/empty", Vec::new()).await.expect("put");

    assert_eq!(store.get(&bucket, "img/x.png", 100).await, Ok(bytes));
    assert_eq!(store.get(&bucket, "img/x.png", 99).await.map_err(|e| e.kind), Err(ErrorKind::TooLarge));
    assert_eq!(store.get(&bucket, "img/empty", 0).await, Ok(Vec::new()));
    let missing = store.get(&bucket, "img/missing", 100).await.expect_err("a missing key fails");
    assert_eq!(missing.kind, ErrorKind::FetchNotFound);
    // The message travels in every error result: the code and the status, not
    // the raw response (headers, body, request ids) the SDK's Debug form adds.
    assert!(missing.message.contains("NoSuchKey") && missing.message.contains("404"), "{}", missing.message);
    assert!(missing.message.len() < 300 && !missing.message.contains("headers"), "{}", missing.message);
    let no_bucket = common::unique("nobucket");
    assert_eq!(store.get(&no_bucket, "k", 100).await.map_err(|e| e.kind), Err(ErrorKind::FetchDenied));
    common::delete_bucket(&cfg, &bucket).await;
}
