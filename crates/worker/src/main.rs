//! `scorefleet-worker`: the fleet's unit. See the crate docs for the pipeline.

use anyhow::Context;
use clap::{Parser, ValueEnum};
use scorefleet_aws::{ApiCounters, AwsConfig, DynamoOutcomeStore, S3Store, SqsQueue};
use scorefleet_worker::fetch::UrlFetcher;
use scorefleet_worker::fetch::http::{HttpFetcher, Timeouts};
use scorefleet_worker::fetch::ssrf::Guard;
use scorefleet_worker::http::{self, Health};
use scorefleet_worker::lease::Registry;
use scorefleet_worker::metrics::Metrics;
use scorefleet_worker::pipeline::{self, Ports, Settings};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Score images from an SQS queue with a burn model.
///
/// AWS access uses the standard chain: AWS_REGION, AWS_PROFILE or
/// credentials, and AWS_ENDPOINT_URL for a local emulator.
#[derive(Debug, Parser)]
#[command(name = "scorefleet-worker", version, about)]
struct Cli {
    /// The input (jobs) queue URL.
    #[arg(long, env = "SCOREFLEET_INPUT_QUEUE_URL")]
    input_queue_url: String,
    /// The output (results) queue URL.
    #[arg(long, env = "SCOREFLEET_OUTPUT_QUEUE_URL")]
    output_queue_url: String,
    /// The DynamoDB outcome (dedup) table.
    #[arg(long, env = "SCOREFLEET_TABLE")]
    table: String,
    /// Model name; its manifest is `models/<name>/manifest.json` unless
    /// --model-manifest says otherwise.
    #[arg(long, env = "SCOREFLEET_MODEL", default_value = "digits")]
    model: String,
    /// The model manifest, a path or s3://bucket/key (JSON: format, graph or
    /// weights, sha256, input shape, preprocessing, task, labels); its relative
    /// graph, weights and labels_file are found beside it.
    #[arg(long, env = "SCOREFLEET_MODEL_MANIFEST")]
    model_manifest: Option<String>,
    /// Graph or weights location overriding the manifest's: a path or s3://bucket/key
    /// (downloaded once, cached, verified against the manifest's sha256).
    #[arg(long, env = "SCOREFLEET_MODEL_WEIGHTS")]
    model_weights: Option<String>,
    /// Where downloaded weights are cached.
    #[arg(long, env = "SCOREFLEET_MODEL_CACHE", default_value = "/tmp/scorefleet-models")]
    model_cache: PathBuf,
    /// Concurrent long polls on the input queue.
    #[arg(long, env = "SCOREFLEET_RECEIVERS", default_value_t = 2)]
    receivers: usize,
    /// Long-poll wait in seconds (≤ 20).
    #[arg(long, env = "SCOREFLEET_WAIT_SECONDS", default_value_t = 20)]
    wait_seconds: u64,
    /// Concurrent fetches and decodes.
    #[arg(long, env = "SCOREFLEET_FETCHERS", default_value_t = 16)]
    fetchers: usize,
    /// Largest model batch, gathered across messages.
    #[arg(long, env = "SCOREFLEET_MAX_BATCH", default_value_t = 32)]
    max_batch: usize,
    /// Most jobs held at once, received or claimed until deleted; receiving
    /// pauses there. Below it the worker holds what it finishes in a quarter
    /// of a lease at its measured rate (at least 10). 0: four model batches
    /// (at least 40).
    #[arg(long, env = "SCOREFLEET_MAX_IN_FLIGHT", default_value_t = 0)]
    max_in_flight: usize,
    /// Threads of the inference pool (0: one per core). One thread runs the
    /// model with no hand-offs between threads, which costs the least CPU per
    /// image; more threads cut batch latency (ResNet-sized models) at some CPU
    /// cost per image.
    #[arg(long, env = "SCOREFLEET_INFER_THREADS", default_value_t = 1)]
    infer_threads: usize,
    /// Threads of the async runtime that does the I/O (receives, claims,
    /// fetches, results); 0: one per core. One keeps a worker's AWS calls far
    /// ahead of its model (one measured 20 % less CPU per image than two).
    #[arg(long, env = "SCOREFLEET_RUNTIME_THREADS", default_value_t = 1)]
    runtime_threads: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "SCOREFLEET_MAX_WAIT_MS", default_value_t = 20)]
    max_wait_ms: u64,
    /// Lease length in seconds: the DynamoDB lease and the SQS visibility the
    /// keeper extends while a job is in flight.
    #[arg(long, env = "SCOREFLEET_LEASE_SECONDS", default_value_t = 60)]
    lease_seconds: u64,
    /// Labels per result.
    #[arg(long, env = "SCOREFLEET_TOP_K", default_value_t = 3)]
    top_k: usize,
    /// Largest image object fetched, in bytes.
    #[arg(long, env = "SCOREFLEET_MAX_IMAGE_BYTES", default_value_t = 20 << 20)]
    max_image_bytes: u64,
    /// Largest decoded image, in pixels (decompression-bomb guard).
    #[arg(long, env = "SCOREFLEET_MAX_PIXELS", default_value_t = 40_000_000)]
    max_pixels: u64,
    /// Only these buckets may be read (comma-separated); all when unset.
    #[arg(long, env = "SCOREFLEET_ALLOW_BUCKETS", value_delimiter = ',')]
    allow_buckets: Option<Vec<String>>,
    /// Only these hosts may be fetched over http(s) (comma-separated, exact
    /// names); all public hosts when unset. Address checks still apply.
    #[arg(long, env = "SCOREFLEET_ALLOW_HOSTS", value_delimiter = ',')]
    allow_hosts: Option<Vec<String>>,
    /// Address ranges http(s) fetches may reach although they are private,
    /// loopback or link-local (comma-separated CIDRs, e.g. 10.1.0.0/16 for an
    /// internal image server). Nothing is admitted by default.
    #[arg(long, env = "SCOREFLEET_ALLOW_PRIVATE_CIDRS", value_delimiter = ',')]
    allow_private_cidrs: Vec<ipnet::IpNet>,
    /// http(s) connect (and TLS handshake) timeout, in milliseconds.
    #[arg(long, env = "SCOREFLEET_HTTP_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    http_connect_timeout_ms: u64,
    /// http(s) read timeout: longest silence waiting for headers or the next
    /// body chunk, in milliseconds.
    #[arg(long, env = "SCOREFLEET_HTTP_READ_TIMEOUT_MS", default_value_t = 15_000)]
    http_read_timeout_ms: u64,
    /// Longest whole http(s) fetch, redirects included, in seconds.
    #[arg(long, env = "SCOREFLEET_HTTP_TOTAL_TIMEOUT_SECONDS", default_value_t = 60)]
    http_total_timeout_seconds: u64,
    /// In-process retries of a transient failure before the message is left
    /// to the queue's redrive policy.
    #[arg(long, env = "SCOREFLEET_RETRIES", default_value_t = 3)]
    retries: u32,
    /// Seconds to finish in-flight work after SIGTERM/SIGINT; what is left is
    /// released and returned to the queue.
    #[arg(long, env = "SCOREFLEET_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// Outcome records live this many days (DynamoDB TTL).
    #[arg(long, env = "SCOREFLEET_RECORD_TTL_DAYS", default_value_t = 7)]
    record_ttl_days: u64,
    /// Address of /healthz, /readyz and /metrics (port 0: any free port,
    /// printed at start-up).
    #[arg(long, env = "SCOREFLEET_HTTP_ADDR", default_value = "0.0.0.0:9100")]
    http_addr: String,
    /// This worker's name in leases and results (default: host-pid).
    #[arg(long, env = "SCOREFLEET_WORKER_ID")]
    worker_id: Option<String>,
    /// Log format.
    #[arg(long, env = "SCOREFLEET_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "SCOREFLEET_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// glibc's malloc spent ~15 % of the worker's CPU in the benchmark (arena
// contention and consolidation between the runtime, decode and inference
// threads); mimalloc keeps per-thread pages and holds RSS flat.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_default();
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.runtime_threads > 0 {
        builder.worker_threads(cli.runtime_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let worker_id = cli.worker_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "worker" } else { &host }, std::process::id())
    });
    let stop = CancellationToken::new();
    // Signals count from the start: a pod killed while loading the model
    // exits promptly too.
    tokio::spawn(scorefleet_worker::shutdown::on_signal(stop.clone()));
    let aws = AwsConfig::load().await;
    let counters = Arc::new(ApiCounters::new());
    // Visibility on receive = the lease: the keeper's bookkeeping starts from
    // it, whatever the queue's own default.
    let queue = Arc::new(
        SqsQueue::new(aws.sqs(), cli.input_queue_url.clone(), counters.clone())
            .with_receive_visibility(Duration::from_secs(cli.lease_seconds)),
    );
    let sink = Arc::new(SqsQueue::new(aws.sqs(), cli.output_queue_url.clone(), counters.clone()));
    let store = Arc::new(
        DynamoOutcomeStore::new(aws.dynamodb(), cli.table.clone(), counters.clone())
            .with_ttl(Duration::from_secs(cli.record_ttl_days * 86_400)),
    );
    let s3 = S3Store::new(aws.s3(), counters.clone());

    let manifest = cli.model_manifest.clone().unwrap_or_else(|| format!("models/{}/manifest.json", cli.model));
    let backend = scorefleet_model::BackendKind::default_kind().context("no burn backend compiled in")?;
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

    let metrics = Arc::new(Metrics::default());
    metrics.set_model(&model_ref.name, &model_ref.version);
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(&cli.http_addr)
        .await
        .with_context(|| format!("binding the health/metrics address {}", cli.http_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, worker_id, "serving /healthz /readyz /metrics");
    let server_stop = CancellationToken::new();
    let state = http::State { health: health.clone(), metrics: metrics.clone(), aws: counters.clone() };
    let server = tokio::spawn(http::serve(listener, state, server_stop.clone()));
    // Ready only once both queues answer (GetQueueAttributes): a worker with a
    // wrong URL or no permission must not report ready.
    // A transient failure (network down, throttling, 5xx) is waited out with
    // backoff, not-ready meanwhile; a permanent one (no such queue, access
    // denied) ends the worker with its reason.
    for url in [&cli.input_queue_url, &cli.output_queue_url] {
        let mut attempt = 0;
        loop {
            if stop.is_cancelled() {
                tracing::info!("stopped before the queues were reachable; nothing was received");
                return Ok(());
            }
            match scorefleet_aws::provision::queue_arn(&aws.sqs(), url, &counters).await {
                Ok(_) => break,
                Err(e) if e.is_transient() => {
                    tracing::warn!(queue = %url, error = %e, "queue not reachable yet; retrying");
                    let wait = scorefleet_worker::pipeline::backoff(Duration::from_millis(250), attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => {}
                    }
                    attempt = (attempt + 1).min(5);
                }
                Err(e) => return Err(e).with_context(|| format!("queue {url} is not reachable")),
            }
        }
    }
    health.ready.store(true, Ordering::Relaxed);
    let draining = health.clone();
    let drain_watch = stop.clone();
    tokio::spawn(async move {
        drain_watch.cancelled().await;
        draining.draining.store(true, Ordering::Relaxed);
    });
    let guard = Guard::new(cli.allow_private_cidrs.clone(), cli.allow_hosts.clone());
    let timeouts = Timeouts {
        connect: Duration::from_millis(cli.http_connect_timeout_ms),
        read: Duration::from_millis(cli.http_read_timeout_ms),
        total: Duration::from_secs(cli.http_total_timeout_seconds),
    };

    let ports = Ports {
        queue,
        sink,
        store,
        fetcher: Arc::new(UrlFetcher::new(s3, cli.allow_buckets.clone(), HttpFetcher::new(guard, timeouts))),
        preprocessor: Arc::new(preprocessor),
    };
    let settings = Settings {
        worker_id,
        receivers: cli.receivers,
        wait: Duration::from_secs(cli.wait_seconds.min(20)),
        fetchers: cli.fetchers,
        max_batch: cli.max_batch,
        max_in_flight: cli.max_in_flight,
        infer_threads: cli.infer_threads,
        max_wait: Duration::from_millis(cli.max_wait_ms),
        lease: Duration::from_secs(cli.lease_seconds.max(2)),
        top_k: cli.top_k,
        max_bytes: cli.max_image_bytes,
        retries: cli.retries,
        backoff: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(cli.drain_timeout),
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
    Ok(())
}
