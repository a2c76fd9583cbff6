//! The adversarial-input suite: every hostile input we know of, each with the
//! typed outcome the worker must give it, in tables per input family
//! ([`messages`], [`urls`], [`images`]) run by one runner.
//!
//! Each row runs through the code the worker runs, wired as `main.rs` wires
//! it: the job parser ([`JobMessage::parse`]), the URL fetcher with its bucket
//! allowlist and SSRF guard ([`UrlFetcher`], [`HttpFetcher`], [`Guard`]) over
//! real TCP to a server on 127.0.0.1, and decode + preprocess under the
//! default limits ([`ImagePreprocessor`], [`Limits`]). Two collaborators are
//! stand-ins, because they sit outside the code under test: the S3 object
//! store (a map; the bucket allowlist in front of it is what is tested) and
//! DNS for `*.test` names (a table; `localhost` and its IDN spellings go to
//! the system resolver, which answers from /etc/hosts without a network).
//!
//! A message row's outcome is what the worker's dedup stage routes it to
//! ([`scorefleet_worker::dedup::route`], the function the stage calls): an
//! error that still names a valid `job_id` is answered with an
//! `invalid_message` result; one that names none gets no result and is left
//! to the queue's redrive policy (DLQ).
//! SQS bodies are Rust `String`s (the SDK and SQS itself refuse invalid
//! UTF-8), so for messages "invalid UTF-8" means escapes that decode to no
//! valid character (lone surrogates) and the replacement character a lossy
//! layer would leave; raw invalid UTF-8 bytes are tested where they can
//! occur: as images here, and in manifests (`scorefleet-producer`'s source
//! tests and `fuzz/`).
//!
//! No packet leaves loopback: before anything is fetched, every address a row
//! could reach (its host and every redirect target of the test server) is
//! checked against the guard the row uses; a non-loopback address that guard
//! would admit stops the test before any connection is made.

use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::job::{JobMessage, JobUrl, MAX_BODY_BYTES};
use scorefleet_core::traits::{ObjectStore, Preprocessor};
use scorefleet_model::manifest::{Channels, Manifest};
use scorefleet_model::{ImagePreprocessor, Limits};
use scorefleet_worker::dedup::{Route, route};
use scorefleet_worker::fetch::http::{HttpFetcher, Resolve, Timeouts};
use scorefleet_worker::fetch::ssrf::Guard;
use scorefleet_worker::fetch::{Fetcher, UrlFetcher};
use std::collections::HashMap;
use std::io::{self, Cursor};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the worker does with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Parsed, fetched and decoded: the job goes on to inference.
    Scored,
    /// The job ends with an error result of this kind.
    Fails(ErrorKind),
    /// No result can be addressed (no readable `job_id`): left to the DLQ.
    DeadLetter,
}
use Outcome::*;

/// Which guard a URL row is fetched through.
mod images;
mod messages;
mod server;
mod urls;

use images::png;
use server::{Buckets, Dns, Reply, assert_no_escape, guard, routes, serve};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Net {
    /// The production default: no allowlists.
    Default,
    /// `--allow-private-cidrs 127.0.0.0/8`, so the test server is the allowed
    /// first hop and what it redirects to is judged on its own.
    Loopback,
    /// Loopback allowed, and `--allow-hosts images.test`.
    HostList,
}

enum Input {
    /// A raw SQS message body.
    Message(String),
    /// A job for this URL (`{port}` is the test server's port), parsed, then
    /// fetched through the guard and, if that succeeds, decoded.
    Url(Net, String),
    /// Object bytes, handed to decode + preprocess.
    Image(Vec<u8>),
}

struct Case {
    name: &'static str,
    input: Input,
    want: Outcome,
    /// For rows that must be scored: a property of the model input, with
    /// what it means.
    check: Option<Check>,
}

/// What a property means, and the property of the model input (`[3, 8, 8]`,
/// RGB in `[0, 1]`).
type Check = (&'static str, fn(&[f32]) -> bool);

fn case(name: &'static str, input: Input, want: Outcome) -> Case {
    Case { name, input, want, check: None }
}

fn msg(body: impl Into<String>) -> Input {
    Input::Message(body.into())
}

fn url(net: Net, u: &str) -> Input {
    Input::Url(net, u.to_owned())
}

fn img(bytes: Vec<u8>) -> Input {
    Input::Image(bytes)
}

/// A valid body with one field replaced by raw JSON text (`None`: removed).
fn job_with(field: &str, raw: Option<&str>) -> String {
    let fields = [("v", "1"), ("job_id", r#""adv-1""#), ("url", r#""s3://allowed-bkt/a.png""#), ("run_id", r#""r""#)];
    let mut parts: Vec<String> = Vec::new();
    let mut replaced = false;
    for (k, v) in fields {
        if k == field {
            replaced = true;
            if let Some(r) = raw {
                parts.push(format!(r#""{k}":{r}"#));
            }
        } else {
            parts.push(format!(r#""{k}":{v}"#));
        }
    }
    if !replaced && let Some(r) = raw {
        parts.push(format!(r#""{field}":{r}"#));
    }
    format!("{{{}}}", parts.join(","))
}

// -------------------------------------------------------------- the table --

fn cases() -> Vec<Case> {
    let mut c = messages::cases();
    c.extend(urls::cases());
    c.extend(images::cases());
    c
}

// ------------------------------------------------------------ the runner --

fn preprocessor() -> ImagePreprocessor {
    let manifest = Manifest {
        name: "adversarial".into(),
        architecture: "digits".into(),
        input_shape: [3, 8, 8],
        channels: Channels::Rgb,
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
        invert: false,
        labels: vec!["x".into()],
        labels_file: None,
        weights: "unused.safetensors".into(),
        sha256: "0".repeat(64),
        notes: None,
        ..Manifest::default()
    };
    // The worker's defaults (`--max-image-bytes`, `--max-pixels`).
    ImagePreprocessor::from_manifest(&manifest, Limits::default())
}

type Fetchers = HashMap<Net, UrlFetcher<Buckets, Dns>>;

/// `--max-image-bytes` for the URL rows: 1 MiB instead of the default 20 MiB
/// keeps the over-the-cap rows fast; the cap logic is the same.
const FETCH_CAP: u64 = 1 << 20;

fn fetchers() -> Fetchers {
    // Short limits so the hostile-server rows take milliseconds, not minutes.
    let t = Timeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_millis(400),
        total: Duration::from_millis(1500),
    };
    [Net::Default, Net::Loopback, Net::HostList]
        .into_iter()
        .map(|net| {
            let http = HttpFetcher::with_resolver(guard(net), t, Dns::new());
            (net, UrlFetcher::new(Buckets, Some(vec!["allowed-bkt".into()]), http))
        })
        .collect()
}

/// The dedup stage's routing of a message body (see the module docs).
fn parse(body: &str) -> Result<JobMessage, Ran> {
    match route(body) {
        Route::Job(job) => Ok(job),
        Route::Invalid { error, .. } => Err((Fails(ErrorKind::InvalidMessage), None, error)),
        Route::DeadLetter { error } => Err((DeadLetter, None, error)),
    }
}

/// What a row ended as: the outcome, the model input when scored, and the
/// error message (for the report when a row differs).
type Ran = (Outcome, Option<Vec<f32>>, String);

fn decode(pre: &ImagePreprocessor, bytes: &[u8]) -> Ran {
    match pre.preprocess(bytes) {
        Ok(chw) => {
            assert_eq!(chw.shape, [3, 8, 8]);
            (Scored, Some(chw.data), String::new())
        }
        Err(e) => (Fails(e.kind), None, e.message),
    }
}

async fn run(case: &Case, port: u16, fetchers: &Fetchers, pre: &ImagePreprocessor) -> Ran {
    match &case.input {
        Input::Message(body) => match parse(body) {
            Ok(_) => (Scored, None, String::new()),
            Err(ran) => ran,
        },
        Input::Image(bytes) => decode(pre, bytes),
        Input::Url(net, u) => {
            let u = u.replace("{port}", &port.to_string());
            let body = serde_json::json!({"v": 1, "job_id": "adv-url", "url": u, "run_id": "r"}).to_string();
            let job = match parse(&body) {
                Ok(job) => job,
                Err(ran) => return ran,
            };
            match fetchers[net].fetch(&job.images[0].url, FETCH_CAP).await {
                Ok(bytes) => decode(pre, &bytes),
                Err(e) => (Fails(e.kind), None, e.message),
            }
        }
    }
}

#[tokio::test]
async fn every_hostile_input_gets_its_typed_outcome() {
    let port = serve().await;
    let cases = cases();
    let dns = Dns::new();
    let mut reachable: Vec<(Net, String)> = cases
        .iter()
        .filter_map(|c| match &c.input {
            Input::Url(net, u) => Some((*net, u.replace("{port}", &port.to_string()))),
            _ => None,
        })
        .collect();
    for net in [Net::Default, Net::Loopback, Net::HostList] {
        reachable.extend(redirect_targets(port).into_iter().map(|u| (net, u)));
    }
    assert_no_escape(&reachable, &dns).await;

    let fetchers = fetchers();
    let pre = preprocessor();
    let mut names = std::collections::HashSet::new();
    let mut wrong = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name), "two rows named {:?}", case.name);
        let t = Instant::now();
        let (got, chw, message) = run(case, port, &fetchers, &pre).await;
        let took = t.elapsed();
        if got != case.want {
            wrong.push(format!("{}: want {:?}, got {got:?} ({message})", case.name, case.want));
        } else if let (Some((what, holds)), Some(chw)) = (case.check, chw.as_deref())
            && !holds(chw)
        {
            wrong.push(format!("{}: scored, but not {what}", case.name));
        }
        // Each row is bounded by the fetch timeouts (1.5 s in all) or by the
        // decode limits; the margin is for a loaded CI machine.
        assert!(took < Duration::from_secs(5), "{}: took {took:?}, past every timeout", case.name);
        if let Input::Message(body) = &case.input
            && case.name.contains("depth bomb")
        {
            assert!(body.len() < MAX_BODY_BYTES, "{}: over the size limit, so not a depth test", case.name);
        }
    }
    assert!(wrong.is_empty(), "{} of {} rows differ:\n  {}", wrong.len(), cases.len(), wrong.join("\n  "));
}

/// Every absolute redirect target the test server hands out.
fn redirect_targets(port: u16) -> Vec<String> {
    routes(port)
        .into_values()
        .filter_map(|r| match r {
            Reply::Raw(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                text.lines().find_map(|l| l.strip_prefix("location: ").map(str::to_owned))
            }
            Reply::Trickle => None,
        })
        .collect()
}

#[tokio::test]
async fn job_url_spellings_the_guard_sees_are_the_normalised_ones() {
    // The guard judges the parsed host, never the raw text: spellings a
    // naive string check would miss all reach it as the same address.
    for raw in ["http://2130706433/", "http://0177.0.0.1/", "http://0x7f.1/", "http://%31%32%37.0.0.1/"] {
        let JobUrl::Http(u) = JobUrl::parse(raw).expect(raw) else { panic!("{raw}: not http") };
        assert_eq!(u.host_str(), Some("127.0.0.1"), "{raw}");
    }
}
