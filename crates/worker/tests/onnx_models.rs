//! Workers serving ONNX models against the local AWS emulator: a classifier
//! whose manifest and graph are objects in S3, an `embed` model, and models
//! that cannot load (an unsupported operator, a checksum mismatch), which stop
//! the worker before it ever reports ready. Run with `make test`; without an
//! emulator they skip with one line.

mod common;

use common::{Stack, digit_jobs, spawn_worker, stack, unique};
use scorefleet_core::result::ResultStatus;
use std::collections::HashSet;
use std::time::Duration;

fn graph_version() -> String {
    let bytes = std::fs::read(common::root().join("models/digits-onnx/digits.onnx")).expect("graph");
    format!("sha256:{}", scorefleet_model::sha256_hex(&bytes))
}

/// Uploads `models/digits-onnx` (manifest + graph) under `prefix`; the manifest's URL.
async fn upload_model(s: &Stack, prefix: &str, manifest: &str) -> String {
    let dir = common::root().join("models/digits-onnx");
    s.put(&format!("{prefix}/digits.onnx"), std::fs::read(dir.join("digits.onnx")).expect("graph")).await;
    s.put(&format!("{prefix}/manifest.json"), manifest.as_bytes().to_vec()).await;
    format!("s3://{}/{prefix}/manifest.json", s.res.bucket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onnx_classifier_from_s3_scores_every_job_with_its_graph_version() {
    if common::skip() {
        return;
    }
    const N: usize = 60;
    let s = stack("onnx-s3", Duration::from_secs(30), 5).await;
    let manifest = std::fs::read_to_string(common::root().join("models/digits-onnx/manifest.json")).expect("manifest");
    let url = upload_model(&s, "models/digits-onnx", &manifest).await;
    let (_, bodies, want) = digit_jobs(&s, N).await;
    s.enqueue(&bodies).await;
    let cache = std::env::temp_dir().join(unique("onnx-cache"));
    let w = spawn_worker(
        &s,
        "w-onnx",
        &["--lease-seconds", "30", "--model-manifest", &url, "--model-cache", &cache.display().to_string()],
    );
    let results = s.results(N, Duration::from_secs(180)).await;
    let distinct: HashSet<&str> = results.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(distinct.len(), N);
    let version = graph_version();
    for r in &results {
        assert_eq!(r.status, ResultStatus::Ok, "{}: {:?}", r.job_id, r.error);
        let model = r.model.as_ref().expect("model in the result");
        assert_eq!((model.name.as_str(), model.version.as_str()), ("digits-onnx", version.as_str()));
        assert_eq!(
            r.top().map(|p| &p.label),
            want.get(&r.job_id),
            "{}: the ONNX graph and the NHWC path disagree",
            r.job_id
        );
    }
    let metrics = w.get("/metrics").await.map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.contains(&format!("scorefleet_model_info{{name=\"digits-onnx\",version=\"{version}\"}} 1")),
        "model info in /metrics:\n{metrics}"
    );
    // The graph was downloaded once and cached under its sha256.
    assert!(cache.join(format!("{}.safetensors", version.trim_start_matches("sha256:"))).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embed_model_answers_each_job_with_a_unit_vector() {
    if common::skip() {
        return;
    }
    const N: usize = 20;
    let s = stack("onnx-embed", Duration::from_secs(30), 5).await;
    let (_, bodies, _) = digit_jobs(&s, N).await;
    s.enqueue(&bodies).await;
    let _w = spawn_worker(
        &s,
        "w-embed",
        &["--lease-seconds", "30", "--model-manifest", "models/digits-embed/manifest.json"],
    );
    let results = s.results(N, Duration::from_secs(180)).await;
    assert_eq!(results.iter().map(|r| r.job_id.as_str()).collect::<HashSet<_>>().len(), N);
    let version = graph_version();
    for r in &results {
        assert_eq!(r.status, ResultStatus::Ok, "{}: {:?}", r.job_id, r.error);
        assert_eq!(
            r.model.as_ref().map(|m| (m.name.as_str(), m.version.as_str())),
            Some(("digits-embed", version.as_str()))
        );
        let v = r.embedding.as_ref().expect("an embedding");
        assert_eq!((v.len(), r.dims), (128, Some(128)));
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{}: norm {norm}", r.job_id);
        assert!(r.top_k.is_empty());
    }
}

/// A worker whose model cannot load exits non-zero and never answers ready.
async fn refused(s: &Stack, url: &str, id: &str) {
    let mut w = spawn_worker(
        s,
        id,
        &["--model-manifest", url, "--model-cache", &std::env::temp_dir().join(unique("c")).display().to_string()],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = w.child.try_wait().expect("wait") {
            assert!(!status.success(), "{id}: exit {status}");
            return;
        }
        assert!(!matches!(w.get("/readyz").await, Some((200, _))), "{id}: ready with a model that cannot load");
        assert!(std::time::Instant::now() < deadline, "{id}: still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_stops_the_worker_before_it_is_ready() {
    if common::skip() {
        return;
    }
    let s = stack("onnx-bad", Duration::from_secs(30), 5).await;
    // An operator the runner does not execute.
    let graph = std::fs::read(common::root().join("crates/model/tests/fixtures/unsupported_op.onnx")).expect("fixture");
    let manifest = serde_json::json!({
        "name": "hardmax", "format": "onnx", "graph": "model.onnx", "sha256": scorefleet_model::sha256_hex(&graph),
        "input_shape": [1, 28, 28], "channels": "grayscale", "mean": [0.0], "std": [1.0],
    });
    s.put("bad/unsupported/model.onnx", graph).await;
    s.put("bad/unsupported/manifest.json", manifest.to_string().into_bytes()).await;
    refused(&s, &format!("s3://{}/bad/unsupported/manifest.json", s.res.bucket), "w-unsupported").await;
    // The right graph under a manifest whose checksum is another file's.
    let mut tampered: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("models/digits-onnx/manifest.json")).expect("manifest"),
    )
    .expect("json");
    tampered["sha256"] = serde_json::Value::String("0".repeat(64));
    let url = upload_model(&s, "bad/checksum", &tampered.to_string()).await;
    refused(&s, &url, "w-checksum").await;
}
