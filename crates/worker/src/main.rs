//! `scorefleet-worker`: the fleet's unit. See the crate docs for the pipeline.

use anyhow::Context;
use clap::Parser;
use scorefleet_aws::{ApiCounters, AwsConfig, Backoff, DynamoOutcomeStore, S3Store, SqsQueue, provision, retry};
use scorefleet_worker::cli::{Cli, Config, LogFormat, check_lease_against_queue};
use scorefleet_worker::ctx::Ports;
use scorefleet_worker::fault::PanicOnBatch;
use scorefleet_worker::fetch::UrlFetcher;
use scorefleet_worker::fetch::http::HttpFetcher;
use scorefleet_worker::fetch::ssrf::Guard;
use scorefleet_worker::lease::Registry;
use scorefleet_worker::metrics::Metrics;
use scorefleet_worker::pipeline;
use scorefleet_worker::probe::{self, Health};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// glibc's malloc spent ~15 % of the worker's CPU in the benchmark (arena
// contention and consolidation between the runtime, decode and inference
// threads); mimalloc keeps per-thread pages and holds RSS flat.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = match Cli::parse().validate(default_worker_id) {
        Ok(c) => c,
        Err(e) => {
            // Before logging is set up (the filter is one of the settings):
            // one line, exit status 2 as for any other usage error.
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = config.log.clone();
    match config.cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.cli.runtime_threads > 0 {
        builder.worker_threads(config.cli.runtime_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: logging is up, and it writes to stderr.
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `host-pid`: unique per process on a host, readable in leases and results.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let Config { settings, timeouts, record_ttl, cli, .. } = config;
    let stop = CancellationToken::new();
    // Signals count from the start: a pod killed while loading the model
    // exits promptly too.
    tokio::spawn(scorefleet_worker::shutdown::on_signal(stop.clone()));
    let aws = AwsConfig::load().await;
    let counters = Arc::new(ApiCounters::new());
    // Visibility on receive = the lease: the keeper's bookkeeping starts from
    // it, whatever the queue's own default.
    let queue = Arc::new(
        SqsQueue::new(aws.sqs(), cli.input_queue_url.clone(), counters.clone()).with_receive_visibility(settings.lease),
    );
    let sink = Arc::new(SqsQueue::new(aws.sqs(), cli.output_queue_url.clone(), counters.clone()));
    let store =
        Arc::new(DynamoOutcomeStore::new(aws.dynamodb(), cli.table.clone(), counters.clone()).with_ttl(record_ttl));
    let s3 = S3Store::new(aws.s3(), counters.clone());

    let manifest = cli.model_manifest.clone().unwrap_or_else(|| format!("models/{}/manifest.json", cli.model));
    let backend = match cli.backend {
        Some(b) => b,
        None => scorefleet_model::BackendKind::default_kind().context("no burn backend compiled in")?,
    };
    // A model that cannot load (unsupported operator, checksum mismatch, an
    // input that is not an image) stops the worker here: it never turns ready.
    let loaded =
        scorefleet_model::load_model_at(&manifest, cli.model_weights.as_deref(), &cli.model_cache, &s3, backend)
            .await
            .with_context(|| format!("loading the model manifest {manifest}"))?;
    tracing::info!(model = %loaded.model_ref.name, version = %loaded.model_ref.version, backend = backend.as_str(), task = ?loaded.manifest.task, "model loaded");
    let limits =
        scorefleet_model::Limits { max_encoded_bytes: cli.max_image_bytes as usize, max_pixels: cli.max_pixels };
    let model_ref = loaded.model_ref.clone();
    let (preprocessor, predictor) = loaded.into_parts(limits);
    let predictor = PanicOnBatch::new(predictor, cli.fault_panic_on_batch);

    let metrics = Arc::new(Metrics::default());
    metrics.set_model(&model_ref.name, &model_ref.version);
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(&cli.http_addr)
        .await
        .with_context(|| format!("binding the health/metrics address {}", cli.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, worker_id = %settings.worker_id, "serving /healthz /readyz /metrics");
    let server_stop = CancellationToken::new();
    let state = probe::State { health: health.clone(), metrics: metrics.clone(), aws: counters.clone() };
    let server = tokio::spawn(probe::serve(listener, state, server_stop.clone()));
    // Ready only once both queues answer (GetQueueAttributes): a worker with a
    // wrong URL or no permission must not report ready. A transient failure
    // (network down, throttling, 5xx) is waited out with backoff, not-ready
    // meanwhile; a permanent one (no such queue, access denied) ends the
    // worker with its reason. The input queue's own visibility timeout is
    // read on the way: a lease longer than it is refused.
    let reach = Backoff::new(Duration::from_millis(250), Duration::from_secs(8));
    let sqs = aws.sqs();
    let transient = |e: &scorefleet_core::traits::ServiceError, _| {
        if e.is_transient() {
            tracing::warn!(error = %e, "queue not reachable yet; retrying");
        }
        e.is_transient()
    };
    let reachable = async {
        let visibility = retry(reach, transient, || provision::queue_visibility(&sqs, &cli.input_queue_url, &counters))
            .await
            .with_context(|| format!("queue {} is not reachable", cli.input_queue_url))?;
        retry(reach, transient, || provision::queue_arn(&sqs, &cli.output_queue_url, &counters))
            .await
            .with_context(|| format!("queue {} is not reachable", cli.output_queue_url))?;
        anyhow::Ok(visibility)
    };
    let visibility = tokio::select! {
        v = reachable => v?,
        _ = stop.cancelled() => {
            tracing::info!("stopped before the queues were reachable; nothing was received");
            return Ok(());
        }
    };
    check_lease_against_queue(settings.lease, visibility)?;
    health.ready.store(true, Ordering::Relaxed);
    // Not ready from the moment the root token is cancelled: by a signal, or
    // by the supervisor on a fault.
    let draining = health.clone();
    let drain_watch = stop.clone();
    tokio::spawn(async move {
        drain_watch.cancelled().await;
        draining.draining.store(true, Ordering::Relaxed);
    });
    let guard = Guard::new(cli.allow_private_cidrs.clone(), cli.allow_hosts.clone());
    let ports = Ports {
        queue,
        sink,
        store,
        fetcher: Arc::new(UrlFetcher::new(s3, cli.allow_buckets.clone(), HttpFetcher::new(guard, timeouts))),
        preprocessor: Arc::new(preprocessor),
    };
    let report =
        pipeline::run(ports, predictor, settings, metrics.clone(), Arc::new(Registry::default()), stop.clone()).await;
    server_stop.cancel();
    let _ = server.await;
    tracing::info!(
        drained = report.drained,
        released = report.released,
        succeeded = metrics.succeeded.load(Ordering::Relaxed),
        failed = metrics.failed_total(),
        "stopped"
    );
    match report.fault {
        // Non-zero, so that the orchestrator restarts the worker.
        Some(fault) => Err(anyhow::anyhow!("the pipeline failed: {fault}")),
        None => Ok(()),
    }
}
