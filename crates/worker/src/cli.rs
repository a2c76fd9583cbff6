//! The worker's command line: every flag, each also read from a
//! `SCOREFLEET_*` variable ([`Cli`]), and the one step that turns those raw
//! values into validated settings ([`Cli::validate`]). An out-of-range or
//! contradictory value is refused at start with the flag's name and the
//! rule; nothing is clamped silently.

use crate::fetch::http::Timeouts;
use crate::mode::{Mode, Policy, Prices};
use crate::settings::Settings;
use clap::{Parser, ValueEnum};
use scorefleet_aws::Backoff;
use std::path::PathBuf;
use std::time::Duration;

/// Score images from an SQS queue with a burn model.
///
/// AWS access uses the standard chain: AWS_REGION, AWS_PROFILE or
/// credentials, and AWS_ENDPOINT_URL for a local emulator.
#[derive(Debug, Parser)]
#[command(name = "scorefleet-worker", version, about)]
pub struct Cli {
    /// The input (jobs) queue URL.
    #[arg(long, env = "SCOREFLEET_INPUT_QUEUE_URL")]
    pub input_queue_url: String,
    /// The output (results) queue URL.
    #[arg(long, env = "SCOREFLEET_OUTPUT_QUEUE_URL")]
    pub output_queue_url: String,
    /// The DynamoDB outcome (dedup) table.
    #[arg(long, env = "SCOREFLEET_TABLE")]
    pub table: String,
    /// Model name; its manifest is `models/<name>/manifest.json` unless
    /// --model-manifest says otherwise.
    #[arg(long, env = "SCOREFLEET_MODEL", default_value = "digits")]
    pub model: String,
    /// The model manifest, a path or s3://bucket/key (JSON: format, graph or
    /// weights, sha256, input shape, preprocessing, task, labels); its relative
    /// graph, weights and labels_file are found beside it.
    #[arg(long, env = "SCOREFLEET_MODEL_MANIFEST")]
    pub model_manifest: Option<String>,
    /// Graph or weights location overriding the manifest's: a path or s3://bucket/key
    /// (downloaded once, cached, verified against the manifest's sha256).
    #[arg(long, env = "SCOREFLEET_MODEL_WEIGHTS")]
    pub model_weights: Option<String>,
    /// burn backend that runs the model, one compiled in: `flex` (default),
    /// `ndarray`, `wgpu` (built with `--features wgpu`; a GPU, or lavapipe).
    /// On CPU backends ONNX graphs get the runner's CPU kernels.
    #[arg(long, env = "SCOREFLEET_BACKEND")]
    pub backend: Option<scorefleet_model::BackendKind>,
    /// Where downloaded weights are cached.
    #[arg(long, env = "SCOREFLEET_MODEL_CACHE", default_value = "/tmp/scorefleet-models")]
    pub model_cache: PathBuf,
    /// Concurrent long polls on the input queue.
    #[arg(long, env = "SCOREFLEET_RECEIVERS", default_value_t = 2)]
    pub receivers: usize,
    /// Long-poll wait in seconds (≤ 20).
    #[arg(long, env = "SCOREFLEET_WAIT_SECONDS", default_value_t = 20)]
    pub wait_seconds: u64,
    /// Concurrent fetches and decodes.
    #[arg(long, env = "SCOREFLEET_FETCHERS", default_value_t = 16)]
    pub fetchers: usize,
    /// Largest model batch, gathered across messages.
    #[arg(long, env = "SCOREFLEET_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,
    /// Most jobs held at once, received or claimed until deleted; receiving
    /// pauses there. Below it the worker holds what it finishes in a quarter
    /// of a lease at its measured rate (at least 10). 0: four model batches
    /// (at least 40).
    #[arg(long, env = "SCOREFLEET_MAX_IN_FLIGHT", default_value_t = 0)]
    pub max_in_flight: usize,
    /// Threads of the inference pool (0: one per core). One thread runs the
    /// model with no hand-offs between threads, which costs the least CPU per
    /// image; more threads cut batch latency (ResNet-sized models) at some CPU
    /// cost per image.
    #[arg(long, env = "SCOREFLEET_INFER_THREADS", default_value_t = 1)]
    pub infer_threads: usize,
    /// Threads of the async runtime that does the I/O (receives, claims,
    /// fetches, results); 0: one per core. One keeps a worker's AWS calls far
    /// ahead of its model (one measured 20 % less CPU per image than two).
    #[arg(long, env = "SCOREFLEET_RUNTIME_THREADS", default_value_t = 1)]
    pub runtime_threads: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "SCOREFLEET_MAX_WAIT_MS", default_value_t = 20)]
    pub max_wait_ms: u64,
    /// Lease length in seconds: the DynamoDB lease and the SQS visibility the
    /// keeper extends while a job is in flight.
    #[arg(long, env = "SCOREFLEET_LEASE_SECONDS", default_value_t = 60)]
    pub lease_seconds: u64,
    /// Labels per result.
    #[arg(long, env = "SCOREFLEET_TOP_K", default_value_t = 3)]
    pub top_k: usize,
    /// Largest image object fetched, in bytes.
    #[arg(long, env = "SCOREFLEET_MAX_IMAGE_BYTES", default_value_t = 20 << 20)]
    pub max_image_bytes: u64,
    /// Largest decoded image, in pixels (decompression-bomb guard).
    #[arg(long, env = "SCOREFLEET_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Only these buckets may be read (comma-separated); all when unset.
    #[arg(long, env = "SCOREFLEET_ALLOW_BUCKETS", value_delimiter = ',')]
    pub allow_buckets: Option<Vec<String>>,
    /// Only these hosts may be fetched over http(s) (comma-separated, exact
    /// names); all public hosts when unset. Address checks still apply.
    #[arg(long, env = "SCOREFLEET_ALLOW_HOSTS", value_delimiter = ',')]
    pub allow_hosts: Option<Vec<String>>,
    /// Address ranges http(s) fetches may reach although they are private,
    /// loopback or link-local (comma-separated CIDRs, e.g. 10.1.0.0/16 for an
    /// internal image server). Nothing is admitted by default.
    #[arg(long, env = "SCOREFLEET_ALLOW_PRIVATE_CIDRS", value_delimiter = ',')]
    pub allow_private_cidrs: Vec<ipnet::IpNet>,
    /// http(s) connect (and TLS handshake) timeout, in milliseconds.
    #[arg(long, env = "SCOREFLEET_HTTP_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub http_connect_timeout_ms: u64,
    /// http(s) read timeout: longest silence waiting for headers or the next
    /// body chunk, in milliseconds.
    #[arg(long, env = "SCOREFLEET_HTTP_READ_TIMEOUT_MS", default_value_t = 15_000)]
    pub http_read_timeout_ms: u64,
    /// Longest whole http(s) fetch, redirects included, in seconds.
    #[arg(long, env = "SCOREFLEET_HTTP_TOTAL_TIMEOUT_SECONDS", default_value_t = 60)]
    pub http_total_timeout_seconds: u64,
    /// In-process retries of a transient failure before the message is left
    /// to the queue's redrive policy.
    #[arg(long, env = "SCOREFLEET_RETRIES", default_value_t = 3)]
    pub retries: u32,
    /// Seconds to finish in-flight work after SIGTERM/SIGINT (or a fault);
    /// what is left is released and returned to the queue. [default: 30]
    #[arg(long, env = "SCOREFLEET_DRAIN_TIMEOUT_SECONDS")]
    pub drain_timeout_seconds: Option<u64>,
    /// Deprecated spelling of --drain-timeout-seconds (and of
    /// SCOREFLEET_DRAIN_TIMEOUT_SECONDS): still read, with a warning.
    #[arg(long = "drain-timeout", env = "SCOREFLEET_DRAIN_TIMEOUT", hide = true)]
    pub drain_timeout_deprecated: Option<u64>,
    /// Outcome records live this many days (DynamoDB TTL).
    #[arg(long, env = "SCOREFLEET_RECORD_TTL_DAYS", default_value_t = 7)]
    pub record_ttl_days: u64,
    /// Address of /healthz, /readyz and /metrics (port 0: any free port,
    /// printed at start-up).
    #[arg(long, env = "SCOREFLEET_HTTP_ADDR", default_value = "0.0.0.0:9100")]
    pub http_addr: String,
    /// This worker's name in leases and results (default: host-pid).
    #[arg(long, env = "SCOREFLEET_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Log format.
    #[arg(long, env = "SCOREFLEET_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,scorefleet_worker=debug`).
    /// An invalid filter is refused at start.
    #[arg(long, env = "SCOREFLEET_LOG", default_value = "info")]
    pub log: String,
    /// Dedup mode: `claim` (claim each job before computing it: computed once,
    /// two table writes a job), `finish-only` (a batched read skips finished
    /// jobs; the conditional finish is the only write: one stored outcome, a
    /// duplicate in flight may be computed twice) or `auto` (finish-only when
    /// computing an image twice costs less than the write it saves, at the
    /// --dedup-*-usd prices and the process CPU per image measured over the
    /// first 64 images, finish-only until then; docs/protocol.md).
    #[arg(long, env = "SCOREFLEET_DEDUP", value_enum, default_value = "auto")]
    pub dedup: DedupFlag,
    /// `--dedup auto`: the price of one vCPU-hour, in dollars (default: an
    /// on-demand c7i.large in us-east-1, $0.08925/h for 2 vCPUs).
    #[arg(long, env = "SCOREFLEET_DEDUP_VCPU_HOUR_USD", default_value_t = 0.044625)]
    pub dedup_vcpu_hour_usd: f64,
    /// `--dedup auto`: the price of a million DynamoDB write units, in dollars
    /// (on-demand, us-east-1).
    #[arg(long, env = "SCOREFLEET_DEDUP_WRITE_USD_PER_MILLION", default_value_t = 0.625)]
    pub dedup_write_usd_per_million: f64,
    /// `--dedup auto`: the price of a million DynamoDB read units, in dollars
    /// (on-demand, us-east-1; an eventually consistent read is half a unit).
    #[arg(long, env = "SCOREFLEET_DEDUP_READ_USD_PER_MILLION", default_value_t = 0.125)]
    pub dedup_read_usd_per_million: f64,
    /// Test-only fault: the predictor panics on this batch (1-based), to
    /// check that the worker stops, drains and exits non-zero.
    #[arg(long, env = "SCOREFLEET_FAULT_PANIC_ON_BATCH", hide = true)]
    pub fault_panic_on_batch: Option<u64>,
}

/// `--dedup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DedupFlag {
    /// Claim before computing.
    Claim,
    /// The conditional finish is the only write.
    FinishOnly,
    /// Chosen per model from its measured CPU per image.
    Auto,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting refused at start: the flag and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {rule}")]
pub struct ConfigError {
    /// The flag, without its dashes.
    pub flag: &'static str,
    /// The rule, and the value that broke it.
    pub rule: String,
}

fn refuse(flag: &'static str, rule: impl Into<String>) -> ConfigError {
    ConfigError { flag, rule: rule.into() }
}

/// Longest SQS long poll.
pub const MAX_WAIT_SECONDS: u64 = 20;
/// Shortest lease: the DynamoDB lease ends a margin (at least 250 ms) before
/// the message's visibility, and the keeper renews every eighth of a lease;
/// below 2 s the visibility asked for on receive (whole seconds) can end
/// before the lease does.
pub const MIN_LEASE_SECONDS: u64 = 2;
/// Longest SQS visibility timeout (12 h).
pub const MAX_LEASE_SECONDS: u64 = 43_200;
/// The drain limit when neither spelling of the flag is given.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: u64 = 30;

/// The validated configuration: what `main` wires.
#[derive(Debug)]
pub struct Config {
    /// The pipeline's settings.
    pub settings: Settings,
    /// The http(s) fetch time limits.
    pub timeouts: Timeouts,
    /// How long outcome records live.
    pub record_ttl: Duration,
    /// The log filter, parsed.
    pub log: tracing_subscriber::EnvFilter,
    /// Deprecated spellings that were used: logged once logging is up.
    pub warnings: Vec<String>,
    /// The raw values that need no validation (URLs, names, paths, lists).
    pub cli: Cli,
}

/// A log filter, or the reason it is refused (an invalid filter must not
/// turn logging off).
pub fn log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| refuse("log", format!("invalid filter `{spec}`: {e}")))
}

fn at_least(flag: &'static str, value: u64, min: u64, why: &str) -> Result<(), ConfigError> {
    if value < min { Err(refuse(flag, format!("must be at least {min} ({why}); got {value}"))) } else { Ok(()) }
}

impl Cli {
    /// Checks every rule and builds the settings, or names the first broken
    /// rule. `worker_id` is used when `--worker-id` is not given.
    pub fn validate(self, default_worker_id: impl FnOnce() -> String) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        at_least("receivers", self.receivers as u64, 1, "nothing would be received")?;
        at_least("fetchers", self.fetchers as u64, 1, "nothing would be fetched")?;
        at_least("max-batch", self.max_batch as u64, 1, "no batch could be scored")?;
        at_least("top-k", self.top_k as u64, 1, "results would carry no label")?;
        at_least("max-image-bytes", self.max_image_bytes, 1, "every image would be too large")?;
        at_least("max-pixels", self.max_pixels, 1, "every image would be too large")?;
        at_least(
            "record-ttl-days",
            self.record_ttl_days,
            1,
            "outcome records would expire at once and dedup with them",
        )?;
        at_least("http-connect-timeout-ms", self.http_connect_timeout_ms, 1, "no connection could be made")?;
        at_least("http-read-timeout-ms", self.http_read_timeout_ms, 1, "no response could be read")?;
        at_least("http-total-timeout-seconds", self.http_total_timeout_seconds, 1, "no fetch could finish")?;
        if self.wait_seconds > MAX_WAIT_SECONDS {
            return Err(refuse(
                "wait-seconds",
                format!("must be at most {MAX_WAIT_SECONDS} (the longest SQS long poll); got {}", self.wait_seconds),
            ));
        }
        at_least(
            "lease-seconds",
            self.lease_seconds,
            MIN_LEASE_SECONDS,
            "shorter, the receive visibility can end before the lease",
        )?;
        if self.lease_seconds > MAX_LEASE_SECONDS {
            return Err(refuse(
                "lease-seconds",
                format!(
                    "must be at most {MAX_LEASE_SECONDS} (the longest SQS visibility timeout); got {}",
                    self.lease_seconds
                ),
            ));
        }
        let drain_timeout_seconds = match (self.drain_timeout_seconds, self.drain_timeout_deprecated) {
            (Some(new), Some(old)) if new != old => {
                return Err(refuse(
                    "drain-timeout-seconds",
                    format!("{new} contradicts the deprecated --drain-timeout / SCOREFLEET_DRAIN_TIMEOUT ({old})"),
                ));
            }
            (Some(new), _) => new,
            (None, Some(old)) => {
                warnings.push(
                    "--drain-timeout / SCOREFLEET_DRAIN_TIMEOUT is deprecated: use --drain-timeout-seconds / \
                     SCOREFLEET_DRAIN_TIMEOUT_SECONDS"
                        .to_owned(),
                );
                old
            }
            (None, None) => DEFAULT_DRAIN_TIMEOUT_SECONDS,
        };
        let log = log_filter(&self.log)?;
        for (flag, v) in [
            ("dedup-vcpu-hour-usd", self.dedup_vcpu_hour_usd),
            ("dedup-write-usd-per-million", self.dedup_write_usd_per_million),
            ("dedup-read-usd-per-million", self.dedup_read_usd_per_million),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(refuse(flag, format!("must be a positive price in dollars; got {v}")));
            }
        }
        let dedup = match self.dedup {
            DedupFlag::Claim => Policy::Fixed(Mode::Claim),
            DedupFlag::FinishOnly => Policy::Fixed(Mode::FinishOnly),
            DedupFlag::Auto => Policy::Auto(Prices {
                vcpu_hour_usd: self.dedup_vcpu_hour_usd,
                write_unit_usd: self.dedup_write_usd_per_million / 1e6,
                read_unit_usd: self.dedup_read_usd_per_million / 1e6,
            }),
        };
        let settings = Settings {
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            receivers: self.receivers,
            wait: Duration::from_secs(self.wait_seconds),
            fetchers: self.fetchers,
            max_batch: self.max_batch,
            max_in_flight: self.max_in_flight,
            infer_threads: self.infer_threads,
            max_wait: Duration::from_millis(self.max_wait_ms),
            lease: Duration::from_secs(self.lease_seconds),
            top_k: self.top_k,
            max_bytes: self.max_image_bytes,
            retries: self.retries,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(20)),
            drain_timeout: Duration::from_secs(drain_timeout_seconds),
            dedup,
        };
        let timeouts = Timeouts {
            connect: Duration::from_millis(self.http_connect_timeout_ms),
            read: Duration::from_millis(self.http_read_timeout_ms),
            total: Duration::from_secs(self.http_total_timeout_seconds),
        };
        let record_ttl = Duration::from_secs(self.record_ttl_days.saturating_mul(86_400));
        Ok(Config { settings, timeouts, record_ttl, log, warnings, cli: self })
    }
}

/// The lease against the input queue's own visibility timeout, when it
/// could be read: a lease longer than it is refused (the deployment's
/// invariant: the lease is the queue's visibility timeout, or less).
pub fn check_lease_against_queue(lease: Duration, queue_visibility: Option<Duration>) -> Result<(), ConfigError> {
    match queue_visibility {
        Some(vis) if lease > vis => Err(refuse(
            "lease-seconds",
            format!("{} s is longer than the input queue's visibility timeout ({} s)", lease.as_secs(), vis.as_secs()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 7] =
        ["scorefleet-worker", "--input-queue-url", "in", "--output-queue-url", "out", "--table", "t"];

    fn parse(extra: &[&str]) -> Cli {
        let args: Vec<&str> = REQUIRED.iter().chain(extra).copied().collect();
        Cli::try_parse_from(args).expect("parses")
    }

    fn refused(extra: &[&str]) -> ConfigError {
        parse(extra).validate(|| "w".into()).expect_err("refused")
    }

    fn accepted(extra: &[&str]) -> Config {
        parse(extra).validate(|| "w".into()).expect("accepted")
    }

    #[test]
    fn the_defaults_are_valid() {
        let c = accepted(&[]);
        assert_eq!(c.settings.lease, Duration::from_secs(60));
        assert_eq!(c.settings.wait, Duration::from_secs(20));
        assert_eq!(c.settings.drain_timeout, Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECONDS));
        assert_eq!(c.settings.worker_id, "w");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn a_lease_below_two_seconds_is_refused_not_raised() {
        for v in ["0", "1"] {
            let e = refused(&["--lease-seconds", v]);
            assert_eq!(e.flag, "lease-seconds");
            assert!(e.to_string().starts_with("--lease-seconds: must be at least 2"), "{e}");
        }
        assert_eq!(accepted(&["--lease-seconds", "2"]).settings.lease, Duration::from_secs(2));
    }

    #[test]
    fn a_lease_longer_than_sqs_allows_is_refused() {
        assert_eq!(refused(&["--lease-seconds", "43201"]).flag, "lease-seconds");
    }

    #[test]
    fn a_wait_above_twenty_seconds_is_refused_not_lowered() {
        let e = refused(&["--wait-seconds", "21"]);
        assert_eq!(e.flag, "wait-seconds");
        assert!(e.rule.contains("at most 20"), "{e}");
        assert_eq!(accepted(&["--wait-seconds", "0"]).settings.wait, Duration::ZERO);
    }

    #[test]
    fn zero_receivers_fetchers_batch_or_labels_are_refused_not_raised_to_one() {
        for flag in ["receivers", "fetchers", "max-batch", "top-k"] {
            let arg = format!("--{flag}");
            assert_eq!(refused(&[&arg, "0"]).flag, flag);
        }
    }

    #[test]
    fn zero_limits_and_timeouts_are_refused() {
        for flag in [
            "max-image-bytes",
            "max-pixels",
            "record-ttl-days",
            "http-connect-timeout-ms",
            "http-read-timeout-ms",
            "http-total-timeout-seconds",
        ] {
            let arg = format!("--{flag}");
            assert_eq!(refused(&[&arg, "0"]).flag, flag);
        }
    }

    #[test]
    fn an_invalid_log_filter_is_refused_instead_of_silencing_the_logs() {
        let e = refused(&["--log", "info,scorefleet_worker=bogus-level"]);
        assert_eq!(e.flag, "log");
        assert!(log_filter("info,scorefleet_worker=debug").is_ok());
    }

    #[test]
    fn the_deprecated_drain_timeout_still_works_with_a_warning() {
        let c = accepted(&["--drain-timeout", "7"]);
        assert_eq!(c.settings.drain_timeout, Duration::from_secs(7));
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("deprecated"));
        let c = accepted(&["--drain-timeout-seconds", "9"]);
        assert_eq!((c.settings.drain_timeout, c.warnings.len()), (Duration::from_secs(9), 0));
        assert_eq!(accepted(&["--drain-timeout-seconds", "5", "--drain-timeout", "5"]).warnings.len(), 0);
        assert_eq!(refused(&["--drain-timeout-seconds", "5", "--drain-timeout", "6"]).flag, "drain-timeout-seconds");
    }

    #[test]
    fn a_lease_longer_than_the_queue_visibility_is_refused_when_it_is_known() {
        let (lease, vis) = (Duration::from_secs(60), Duration::from_secs(30));
        let e = check_lease_against_queue(lease, Some(vis)).expect_err("refused");
        assert_eq!(e.flag, "lease-seconds");
        assert!(check_lease_against_queue(vis, Some(vis)).is_ok());
        assert!(check_lease_against_queue(lease, None).is_ok(), "unknown visibility: nothing to check");
    }
}
