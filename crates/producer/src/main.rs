//! `scorefleet-producer`: enqueue image-URL jobs from an S3 prefix, a manifest
//! file or stdin.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use scorefleet_aws::{ApiCounters, AwsConfig, S3Store, SqsQueue};
use scorefleet_producer::enqueue::{self, Options};
use scorefleet_producer::progress::Progress;
use scorefleet_producer::source::{self, Entry, Format, Item};
use std::io::BufReader;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Enqueue image-scoring jobs for a scorefleet fleet.
///
/// AWS access uses the standard chain: AWS_REGION, AWS_PROFILE, credentials,
/// and AWS_ENDPOINT_URL for a local emulator.
#[derive(Debug, Parser)]
#[command(name = "scorefleet-producer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax). An invalid filter is refused
    /// at start.
    #[arg(long, global = true, env = "SCOREFLEET_LOG", default_value = "warn")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send one job per image to the input queue.
    Enqueue(EnqueueArgs),
    /// Drain the output queue into JSONL and CSV files, dropping duplicate
    /// job ids; a message is deleted only once its line is on disk.
    Collect(CollectArgs),
    /// Turn collected results into one self-contained HTML report.
    Report(ReportArgs),
    /// Create the queues (input with a dead-letter queue, output), the outcome
    /// table (on demand, TTL) and the bucket, if they do not exist yet.
    Init(InitArgs),
    /// Show where a run stands: total, done, failed, remaining, in flight,
    /// queued, throughput and ETA, counted from the outcome table.
    ///
    /// Counts come from a query on the table's sparse `by_run` index (one
    /// item per finished job id), so duplicate deliveries and crashed workers
    /// never skew them; the total is what `enqueue --table` recorded. In
    /// flight is the input queue's approximate count, when --input-queue-url
    /// is given.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The outcome table ({prefix}-outcomes, as `init` creates it).
    #[arg(long, env = "SCOREFLEET_TABLE")]
    table: String,
    /// The run. Default: run-YYYY-MM-DD (UTC), as `enqueue` uses.
    #[arg(long, env = "SCOREFLEET_RUN_ID")]
    run_id: Option<String>,
    /// The input queue: its in-flight messages (approximate, every run on the
    /// queue) are shown as in flight. Jobs in progress are not in the table's
    /// index; without the queue, in flight is unknown.
    #[arg(long, env = "SCOREFLEET_INPUT_QUEUE_URL")]
    input_queue_url: Option<String>,
    /// Print one JSON object (per refresh with --watch).
    #[arg(long)]
    json: bool,
    /// Print again every SECONDS until the run is complete (needs a total
    /// recorded by `enqueue --table`; without one, until interrupted).
    #[arg(long, value_name = "SECONDS")]
    watch: Option<u64>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Names: {prefix}-in, {prefix}-dlq, {prefix}-out, {prefix}-outcomes and
    /// bucket {prefix} (lower-cased).
    #[arg(long, env = "SCOREFLEET_PREFIX")]
    prefix: String,
    /// Deliveries of one message before it moves to the dead-letter queue.
    #[arg(long, default_value_t = 5)]
    max_receive_count: u32,
    /// The input queue's visibility timeout in seconds (the workers extend it
    /// while they work).
    #[arg(long, default_value_t = 60)]
    visibility_timeout: u64,
    /// Make the output queue a FIFO queue, {prefix}-out.fifo: the workers
    /// send each result with its job id as deduplication id, so a result
    /// re-sent within five minutes (after a worker died between sending it
    /// and deleting its input) is delivered once.
    #[arg(long)]
    fifo_results: bool,
    /// Print `export SCOREFLEET_…=…` lines to source, instead of JSON.
    #[arg(long)]
    env: bool,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Results file written by `collect`.
    #[arg(long = "in", env = "SCOREFLEET_RESULTS", default_value = "results.jsonl")]
    input: std::path::PathBuf,
    /// Where to write the HTML.
    #[arg(long, env = "SCOREFLEET_REPORT", default_value = "report.html")]
    out: std::path::PathBuf,
    /// Title at the top of the page.
    #[arg(long, default_value = "scorefleet run report")]
    title: String,
    /// Print the computed statistics as one JSON object.
    #[arg(long)]
    json: bool,
    /// At most this many images are fetched from S3 for thumbnails, shared
    /// between the least confident, the misclassified and the failed jobs.
    #[arg(long, env = "SCOREFLEET_REPORT_THUMBNAILS", default_value_t = 60, value_name = "N")]
    thumbnails: usize,
    /// Fetch no images: the report shows no thumbnails and needs no AWS access.
    #[arg(long, env = "SCOREFLEET_REPORT_NO_THUMBNAILS")]
    no_thumbnails: bool,
    /// Objects larger than this are not fetched for a thumbnail.
    #[arg(long, env = "SCOREFLEET_REPORT_THUMBNAIL_MAX_BYTES", default_value_t = 32 << 20, value_name = "BYTES")]
    thumbnail_max_bytes: u64,
}

#[derive(Debug, Args)]
struct CollectArgs {
    /// The output (results) queue URL.
    #[arg(long, env = "SCOREFLEET_OUTPUT_QUEUE_URL")]
    queue_url: String,
    /// Results file, one JSON object per line (appended to; ids already in it
    /// are not written again).
    #[arg(long, env = "SCOREFLEET_RESULTS", default_value = "results.jsonl")]
    out: std::path::PathBuf,
    /// The same results as CSV (default: the JSONL path with `.csv`).
    #[arg(long, env = "SCOREFLEET_RESULTS_CSV")]
    csv: Option<std::path::PathBuf>,
    /// Stop after this many empty long polls in a row.
    #[arg(long, env = "SCOREFLEET_IDLE_POLLS", default_value_t = 2)]
    idle_polls: u32,
    /// Long-poll wait in seconds (0–20).
    #[arg(long, env = "SCOREFLEET_WAIT_SECONDS", default_value_t = 5)]
    wait_seconds: u64,
    /// Stop once this many new results are written.
    #[arg(long)]
    max_results: Option<u64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    /// The input queue URL.
    #[arg(long, env = "SCOREFLEET_INPUT_QUEUE_URL")]
    queue_url: String,
    /// The run id; with each URL it derives the job id, so re-running the
    /// same command enqueues the same ids. Default: run-YYYY-MM-DD (UTC).
    #[arg(long, env = "SCOREFLEET_RUN_ID")]
    run_id: Option<String>,
    /// Enqueue every object under this S3 prefix (s3://bucket/prefix).
    #[arg(long, env = "SCOREFLEET_S3_PREFIX", conflicts_with_all = ["manifest", "stdin"])]
    s3_prefix: Option<String>,
    /// With --s3-prefix: only keys ending with this suffix (e.g. `.png`).
    #[arg(long, env = "SCOREFLEET_SUFFIX", requires = "s3_prefix")]
    suffix: Option<String>,
    /// With --s3-prefix: only keys matching this glob (e.g. `**/*.jpg`).
    #[arg(long, env = "SCOREFLEET_GLOB", requires = "s3_prefix")]
    glob: Option<String>,
    /// Read jobs from this manifest file.
    #[arg(long, env = "SCOREFLEET_MANIFEST", conflicts_with = "stdin")]
    manifest: Option<String>,
    /// Read jobs from standard input.
    #[arg(long)]
    stdin: bool,
    /// Manifest layout; `auto` chooses by file extension.
    #[arg(long, value_enum, env = "SCOREFLEET_FORMAT", default_value = "auto")]
    format: Format,
    /// Stop at the first bad line instead of skipping it.
    #[arg(long, env = "SCOREFLEET_STRICT")]
    strict: bool,
    /// Build and count the messages, send nothing.
    #[arg(long)]
    dry_run: bool,
    /// SendMessageBatch calls in flight at once.
    #[arg(long, env = "SCOREFLEET_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// At most this many messages per second.
    #[arg(long, env = "SCOREFLEET_RATE")]
    rate: Option<f64>,
    /// Pack up to this many consecutive images into one job (a `v: 2`
    /// message, one outcome and one result carrying a result per image).
    /// Fewer where the message would pass the 64 KiB body limit. The job id
    /// derives from the run and the job's URLs in order, so a re-run is
    /// skipped only with the same source order and the same value. 1: one
    /// image per job, `v: 1` messages.
    #[arg(long, env = "SCOREFLEET_IMAGES_PER_JOB", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=scorefleet_core::job::MAX_IMAGES_PER_JOB as i64))]
    images_per_job: u16,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// The outcome table: after a run that sent jobs, the number enqueued is
    /// recorded there as the run's total, for `status` (re-runs never raise
    /// it past the largest count). Before sending, the run's first enqueue
    /// is noted there too, and then its messages carry the new-run mark
    /// (finish-only workers skip their outcome lookup on a first delivery).
    /// A failure of either is a warning, not a failed run: the jobs are on
    /// the queue either way.
    #[arg(long, env = "SCOREFLEET_TABLE")]
    table: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match log_filter(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `--log` filter, or why it is refused: an invalid filter must not
/// silently turn logging off (the default `EnvFilter` has no directives).
fn log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| format!("--log: invalid filter `{spec}`: {e}"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Enqueue(args) => enqueue_cmd(args).await,
        Command::Collect(args) => collect_cmd(args).await,
        Command::Report(args) => report_cmd(&args).await,
        Command::Init(args) => init_cmd(&args).await,
        Command::Status(args) => status_cmd(args).await,
    }
}

async fn status_cmd(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use scorefleet_producer::status;
    let aws = AwsConfig::load().await;
    let store =
        scorefleet_aws::DynamoOutcomeStore::new(aws.dynamodb(), args.table.clone(), Arc::new(ApiCounters::new()));
    let run_id =
        args.run_id.clone().unwrap_or_else(|| scorefleet_producer::default_run_id(time::OffsetDateTime::now_utc()));
    let sqs = aws.sqs();
    loop {
        let now = scorefleet_core::traits::now_ms();
        // The queue's count is a bonus: a failure to read it is a warning.
        let in_flight = match &args.input_queue_url {
            Some(url) => match scorefleet_aws::provision::queue_in_flight(&sqs, url, &ApiCounters::new()).await {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("warning: cannot read the in-flight messages of {url}: {e}");
                    None
                }
            },
            None => None,
        };
        let report = match store.run_status(&run_id, now).await {
            Ok(st) => status::report(&st, now, in_flight),
            // Watching: a throttled or dropped request only skips a refresh.
            Err(e) if args.watch.is_some() && e.is_transient() => {
                eprintln!("warning: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(args.watch.unwrap_or(1).max(1))).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read the status of run {run_id}")),
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", status::render(&report));
        }
        match args.watch {
            Some(secs) if !report.complete => tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await,
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn init_cmd(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let aws = AwsConfig::load().await;
    let mut spec = scorefleet_aws::StackSpec::named(&args.prefix);
    spec.max_receive_count = args.max_receive_count;
    spec.visibility_timeout = std::time::Duration::from_secs(args.visibility_timeout);
    if args.fifo_results {
        spec.output_queue.push_str(".fifo");
    }
    let p = scorefleet_aws::provision(&aws, &spec, &ApiCounters::new()).await?;
    if args.env {
        for (k, v) in [
            ("SCOREFLEET_INPUT_QUEUE_URL", &p.input_queue_url),
            ("SCOREFLEET_DLQ_URL", &p.dead_letter_queue_url),
            ("SCOREFLEET_OUTPUT_QUEUE_URL", &p.output_queue_url),
            ("SCOREFLEET_TABLE", &p.table),
            ("SCOREFLEET_BUCKET", &p.bucket),
        ] {
            println!("export {k}='{v}'");
        }
    } else {
        println!(
            "{}",
            serde_json::json!({
                "input_queue_url": p.input_queue_url,
                "dead_letter_queue_url": p.dead_letter_queue_url,
                "output_queue_url": p.output_queue_url,
                "table": p.table,
                "bucket": p.bucket,
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn report_cmd(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    use scorefleet_producer::{report, thumbnail};
    let file = std::fs::File::open(&args.input).with_context(|| format!("cannot open {}", args.input.display()))?;
    let progress = Progress::auto();
    let stats = report::stats_with_progress(BufReader::new(file), &progress)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let urls = if args.no_thumbnails { Vec::new() } else { stats.thumbnail_urls(args.thumbnails) };
    let thumbs = if urls.iter().any(|u| u.starts_with("s3://")) {
        let aws = AwsConfig::load().await;
        let store = S3Store::new(aws.s3(), Arc::new(ApiCounters::new()));
        let total = urls.len();
        thumbnail::fetch_all(&store, &urls, args.thumbnail_max_bytes, |done| {
            progress.show(done as u64, "images", || format!("thumbnails {done} / {total}"));
        })
        .await
    } else {
        report::Thumbnails::new()
    };
    progress.finish();
    std::fs::write(&args.out, report::html(&stats, &args.title, &thumbs))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if args.json {
        let mut v = serde_json::to_value(&stats)?;
        v["accuracy"] = serde_json::json!(stats.accuracy());
        v["report"] = serde_json::json!(args.out.display().to_string());
        v["thumbnails"] = serde_json::json!(thumbs.values().filter(|t| t.is_ok()).count());
        println!("{v}");
    } else {
        println!("wrote {} ({} results)", args.out.display(), stats.jobs);
    }
    Ok(ExitCode::SUCCESS)
}

async fn collect_cmd(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let aws = AwsConfig::load().await;
    let queue = SqsQueue::new(aws.sqs(), args.queue_url.clone(), Arc::new(ApiCounters::new()));
    let csv = args.csv.clone().unwrap_or_else(|| args.out.with_extension("csv"));
    let opts = scorefleet_producer::collect::Options {
        rejects: args.out.with_extension("rejects.txt"),
        jsonl: args.out.clone(),
        csv: Some(csv),
        idle_polls: args.idle_polls.max(1),
        wait: std::time::Duration::from_secs(args.wait_seconds.min(20)),
        max_results: args.max_results,
    };
    let progress = Progress::auto();
    let s = scorefleet_producer::collect::run(&queue, &opts, &progress).await;
    progress.finish();
    let s = s?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "collected {} new results into {} ({} duplicates dropped, {} rejected, {} deleted, {} deletes failed)",
            s.written,
            args.out.display(),
            s.duplicates,
            s.rejected,
            s.deleted,
            s.delete_failed
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn enqueue_cmd(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let aws = AwsConfig::load().await;
    let counters = Arc::new(ApiCounters::new());
    let run_id =
        args.run_id.clone().unwrap_or_else(|| scorefleet_producer::default_run_id(time::OffsetDateTime::now_utc()));
    // Small: the reader waits on the senders, so memory stays flat however
    // long the source is.
    let (tx, rx) = mpsc::channel::<Item>(1024);

    let reader = if let Some(prefix) = &args.s3_prefix {
        let (bucket, prefix) = split_s3(prefix)?;
        let filter = KeyFilter::new(args.suffix.clone(), args.glob.as_deref())?;
        let store = S3Store::new(aws.s3(), counters.clone());
        tokio::spawn(list_s3(store, bucket, prefix, filter, tx))
    } else if let Some(path) = &args.manifest {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open manifest {path}"))?;
        let format = args.format.resolve(Some(path));
        tokio::task::spawn_blocking(move || forward(source::read_manifest(BufReader::new(file), format), tx))
    } else if args.stdin {
        let format = args.format.resolve(None);
        tokio::task::spawn_blocking(move || {
            forward(source::read_manifest(BufReader::new(std::io::stdin()), format), tx)
        })
    } else {
        bail!("say where the jobs come from: --s3-prefix, --manifest or --stdin");
    };

    let sink = Arc::new(SqsQueue::new(aws.sqs(), args.queue_url.clone(), counters.clone()));
    // With the table, the run's first enqueue marks its messages so that
    // finish-only workers skip a lookup that can find nothing.
    let new_run = match &args.table {
        Some(table) if !args.dry_run => {
            let store = scorefleet_aws::DynamoOutcomeStore::new(aws.dynamodb(), table.clone(), counters.clone());
            store.begin_run(&run_id, scorefleet_core::traits::now_ms()).await.unwrap_or_else(|e| {
                eprintln!("warning: could not mark the start of run {run_id} in table {table} (workers will look every job up): {e}");
                false
            })
        }
        _ => false,
    };
    let opts = Options {
        new_run,
        run_id,
        strict: args.strict,
        dry_run: args.dry_run,
        concurrency: args.concurrency,
        rate: args.rate,
        images_per_job: usize::from(args.images_per_job),
    };
    let progress = Progress::auto();
    let summary = enqueue::run(sink, rx, &opts, &progress).await;
    progress.finish();
    if let Some(table) = &args.table
        && !summary.dry_run
        && summary.enqueued > 0
    {
        // Also after a partly failed run: what was enqueued is on the queue
        // and will be scored, and a re-run can only raise the total.
        let store = scorefleet_aws::DynamoOutcomeStore::new(aws.dynamodb(), table.clone(), counters.clone());
        let now = scorefleet_core::traits::now_ms();
        if let Err(e) = store.record_enqueued(&summary.run_id, summary.enqueued, now).await {
            eprintln!(
                "warning: could not record the run's total in table {table} (`status` will show it as unknown): {e}"
            );
        }
    }
    // The reader stops on its own once the receiver is gone (strict abort).
    let source_error = match reader.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(format!("source task failed: {e}")),
    };

    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let images =
            if summary.images == summary.enqueued { String::new() } else { format!(" ({} images)", summary.images) };
        println!(
            "run {}: enqueued {}{images}, skipped {}, failed {}{} in {:.1}s",
            summary.run_id,
            summary.enqueued,
            summary.skipped,
            summary.failed,
            if summary.dry_run { " (dry run)" } else { "" },
            summary.elapsed_s
        );
        if let Some(why) = &summary.aborted {
            println!("stopped at a bad line (--strict): {why}");
        }
    }
    if let Some(e) = &source_error {
        eprintln!("error: {e}");
    }
    Ok(if summary.is_failure() || source_error.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn forward(items: impl Iterator<Item = Item>, tx: mpsc::Sender<Item>) -> anyhow::Result<()> {
    for item in items {
        if tx.blocking_send(item).is_err() {
            break;
        }
    }
    Ok(())
}

fn split_s3(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("s3://").context("--s3-prefix must look like s3://bucket/prefix")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("--s3-prefix has no bucket");
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// Which listed keys become jobs.
struct KeyFilter {
    suffix: Option<String>,
    glob: Option<globset::GlobMatcher>,
}

impl KeyFilter {
    fn new(suffix: Option<String>, glob: Option<&str>) -> anyhow::Result<Self> {
        let glob = glob.map(|g| globset::Glob::new(g).map(|g| g.compile_matcher())).transpose()?;
        Ok(Self { suffix, glob })
    }

    fn admits(&self, key: &str) -> bool {
        !key.ends_with('/')
            && self.suffix.as_ref().is_none_or(|s| key.ends_with(s.as_str()))
            && self.glob.as_ref().is_none_or(|g| g.is_match(key))
    }
}

/// Lists the prefix page by page into the channel. A listing failure ends the
/// run as failed: the jobs after it were never seen, so they cannot be counted
/// as skipped.
async fn list_s3(
    store: S3Store,
    bucket: String,
    prefix: String,
    filter: KeyFilter,
    tx: mpsc::Sender<Item>,
) -> anyhow::Result<()> {
    let mut pages = store.list_pages(&bucket, &prefix);
    let mut n = 0u64;
    while let Some(page) = pages.next_page().await {
        let keys = page.with_context(|| format!("listing s3://{bucket}/{prefix} failed after {n} keys"))?;
        for key in keys.into_iter().filter(|k| filter.admits(k)) {
            n += 1;
            let entry = Entry { line: n, url: format!("s3://{bucket}/{key}"), job_id: None, attrs: None };
            if tx.send(Ok(entry)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_log_filter_is_refused_instead_of_silencing_the_logs() {
        let e = log_filter("warn,scorefleet_producer=bogus-level").expect_err("refused");
        assert!(e.starts_with("--log: invalid filter"), "{e}");
        assert!(log_filter("warn,scorefleet_producer=debug").is_ok());
    }
}
