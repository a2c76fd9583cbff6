//! A fault-injecting HTTP/1.1 reverse proxy between `scorefleet-worker`
//! processes and the local AWS emulator.
//!
//! The worker is started with `AWS_ENDPOINT_URL` set to [`Proxy::url`]; the
//! test itself keeps talking to the emulator directly. Every request is
//! named by its AWS API ([`Api`]): the `X-Amz-Target` header of the JSON
//! protocol (`DynamoDB_20120810.UpdateItem`, `AmazonSQS.ReceiveMessage`), the
//! `Action=` field of a query-protocol form, or, for S3 (path style), the
//! method and path (`GET /bucket/key` is `GetObject`). [`Rule`]s pick requests
//! by API (and optionally a substring of the body) and inject a [`Fault`] on
//! the first N of them, every k-th, or during a time window. [`Net`] cuts the
//! whole network: connections refused, or accepted and never answered.
//!
//! DynamoDB requests are forwarded one at a time. DynamoDB applies the
//! conditional writes to one item one after the other; moto (a threaded
//! server without locks) can interleave two of them, so two claims of one job
//! both succeed, or a read sees an item half written. Serialising them here
//! gives every emulator DynamoDB's guarantee, which is what the worker's
//! dedup relies on.
//!
//! Faults are deterministic (counts and windows, no randomness), and every
//! request is logged with the fault it got, so a test can bound how often the
//! worker called an API while a fault lasted (no hot loop).
//!
//! Error answers have the shape the SDK parses for each protocol, so the SDK
//! sees the same error code as from AWS: DynamoDB and SQS (JSON protocol)
//! `{"__type": "<namespace>#<Code>", "message": …}` with SQS's
//! `x-amzn-query-error: <Code>;<Sender|Receiver>` header (which aws-sdk-sqs
//! reads first), SQS query protocol `<ErrorResponse>` XML, S3 `<Error>` XML.

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The AWS service a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    DynamoDb,
    Sqs,
    S3,
}

/// A request's service and operation (`UpdateItem`, `GetObject`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    pub service: Service,
    pub op: String,
    /// Query protocol (form body, XML errors) rather than JSON.
    query: bool,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Default)]
pub struct Match {
    service: Option<Service>,
    /// Any of these operations; empty: every operation.
    ops: Vec<&'static str>,
    /// The body must contain this (tells a claim from a finish: both are
    /// `UpdateItem`).
    body: Option<&'static str>,
}

impl Match {
    /// Every request.
    pub fn any() -> Self {
        Self::default()
    }

    /// Every request to one service.
    pub fn service(service: Service) -> Self {
        Self { service: Some(service), ..Self::default() }
    }

    /// Requests to any of these operations (names are unique across the
    /// three services the worker uses).
    pub fn ops(ops: &[&'static str]) -> Self {
        Self { ops: ops.to_vec(), ..Self::default() }
    }

    /// Only requests whose body contains `needle`.
    pub fn body_contains(mut self, needle: &'static str) -> Self {
        self.body = Some(needle);
        self
    }

    fn matches(&self, api: &Api, body: &[u8]) -> bool {
        self.service.is_none_or(|s| s == api.service)
            && (self.ops.is_empty() || self.ops.contains(&api.op.as_str()))
            && self.body.is_none_or(|n| body.windows(n.len()).any(|w| w == n.as_bytes()))
    }
}

/// What happens to a request a rule picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded after this delay.
    Delay(Duration),
    /// The connection is reset before anything reaches the emulator.
    Reset,
    /// Forwarded and answered by the emulator, then the connection is reset:
    /// the write happened, the client never hears of it.
    DropResponse,
    /// Forwarded twice, one after the other; the client gets the second
    /// answer (a retried request whose first copy had landed).
    Duplicate,
    /// The service's server error for this status: 500 `InternalServerError`
    /// (DynamoDB) / `InternalError` (SQS, S3), 503 `ServiceUnavailable`.
    Status(u16),
    /// The service's throttling error: DynamoDB 400
    /// `ProvisionedThroughputExceededException`, SQS 400 `RequestThrottled`,
    /// S3 503 `SlowDown`.
    Throttle,
    /// Any error code, in the service's error format.
    Error { status: u16, code: &'static str },
}

impl Fault {
    /// The (status, code) an error fault answers for `service`; `None` for
    /// the faults that are not an error answer.
    fn error(self, service: Service) -> Option<(u16, &'static str)> {
        Some(match (self, service) {
            (Fault::Throttle, Service::DynamoDb) => (400, "ProvisionedThroughputExceededException"),
            (Fault::Throttle, Service::Sqs) => (400, "RequestThrottled"),
            (Fault::Throttle, Service::S3) => (503, "SlowDown"),
            (Fault::Status(503), _) => (503, "ServiceUnavailable"),
            (Fault::Status(500), Service::DynamoDb) => (500, "InternalServerError"),
            (Fault::Status(500), _) => (500, "InternalError"),
            (Fault::Status(s), _) => (s, "InjectedError"),
            (Fault::Error { status, code }, _) => (status, code),
            _ => return None,
        })
    }
}

/// A fault, the requests it applies to, and for how long.
#[derive(Debug, Clone)]
pub struct Rule {
    matcher: Match,
    fault: Fault,
    /// Inject on every `every`-th matching request (1: all).
    every: u64,
    /// Stop after injecting this many times.
    times: Option<u64>,
    /// Stop this long after the rule is added.
    window: Option<Duration>,
}

impl Rule {
    /// `fault` on every request `matcher` picks, until removed.
    pub fn new(matcher: Match, fault: Fault) -> Self {
        Self { matcher, fault, every: 1, times: None, window: None }
    }

    /// Only the first `n` injections.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Only during `d` from when the rule is added.
    pub fn during(mut self, d: Duration) -> Self {
        self.window = Some(d);
        self
    }

    /// Only every `k`-th matching request (the 1st, the k+1-th, …).
    pub fn every(mut self, k: u64) -> Self {
        self.every = k.max(1);
        self
    }
}

/// The network between the workers and the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Up,
    /// Open connections are reset; new ones are reset as soon as accepted
    /// (what a client sees of a refused connection).
    Refuse,
    /// Open connections stop being served and new ones are accepted but never
    /// read from (packets dropped); all of them are reset when the network
    /// comes back, so a client without a read timeout is not stuck forever.
    Blackhole,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    api: Api,
}

struct Active {
    id: u64,
    rule: Rule,
    until: Option<Instant>,
    matched: u64,
    injected: u64,
}

struct Inner {
    upstream: SocketAddr,
    rules: Mutex<Vec<Active>>,
    next_rule: Mutex<u64>,
    log: Mutex<Vec<Seen>>,
    /// Connections accepted while the network was cut (refused or held).
    cut_connections: Mutex<Vec<Instant>>,
    net: watch::Sender<Net>,
    /// Held while a DynamoDB request is at the emulator (see the module docs).
    dynamodb: tokio::sync::Mutex<()>,
}

/// A handle on a running proxy; it stops with the test's runtime.
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 in front of `upstream`
    /// (`http://127.0.0.1:PORT`, as in `AWS_ENDPOINT_URL`).
    pub async fn start(upstream: &str) -> Proxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream = tokio::net::lookup_host(hostport)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("the proxy needs an http://host:port upstream, got {upstream}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            upstream,
            rules: Mutex::new(Vec::new()),
            next_rule: Mutex::new(0),
            log: Mutex::new(Vec::new()),
            cut_connections: Mutex::new(Vec::new()),
            net: watch::Sender::new(Net::Up),
            dynamodb: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(accept(listener, inner.clone()));
        Proxy { addr, inner }
    }

    /// The endpoint to give the worker as `AWS_ENDPOINT_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule after the existing ones (the first rule that injects wins);
    /// returns its id for [`Proxy::remove`] and [`Proxy::injected_by`].
    pub fn add(&self, rule: Rule) -> u64 {
        let id = {
            let mut n = lock(&self.inner.next_rule);
            *n += 1;
            *n
        };
        let until = rule.window.map(|w| Instant::now() + w);
        lock(&self.inner.rules).push(Active { id, rule, until, matched: 0, injected: 0 });
        id
    }

    /// Removes a rule (what it injected stays in the log).
    pub fn remove(&self, id: u64) {
        lock(&self.inner.rules).retain(|a| a.id != id);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.inner.rules).clear();
    }

    /// How often rule `id` has injected its fault (0 once removed).
    pub fn injected_by(&self, id: u64) -> u64 {
        lock(&self.inner.rules).iter().find(|a| a.id == id).map_or(0, |a| a.injected)
    }

    /// Cuts or restores the network.
    pub fn set_net(&self, net: Net) {
        self.inner.net.send_replace(net);
    }

    /// Requests to operation `op` seen in `[from, to)`.
    pub fn requests(&self, op: &str, from: Instant, to: Instant) -> usize {
        lock(&self.inner.log).iter().filter(|s| s.api.op == op && s.at >= from && s.at < to).count()
    }

    /// Requests of any operation seen in `[from, to)`.
    pub fn all_requests(&self, from: Instant, to: Instant) -> usize {
        lock(&self.inner.log).iter().filter(|s| s.at >= from && s.at < to).count()
    }

    /// Connections accepted (and refused or held) while the network was cut.
    pub fn cut_connections(&self) -> usize {
        lock(&self.inner.cut_connections).len()
    }
}

impl Inner {
    /// Logs a request and picks the fault it gets.
    fn decide(&self, api: &Api, body: &[u8]) -> Option<Fault> {
        let now = Instant::now();
        let mut fault = None;
        for a in lock(&self.rules).iter_mut() {
            let live = a.until.is_none_or(|u| now < u) && a.rule.times.is_none_or(|t| a.injected < t);
            if !live || !a.rule.matcher.matches(api, body) {
                continue;
            }
            a.matched += 1;
            if (a.matched - 1) % a.rule.every == 0 {
                a.injected += 1;
                fault = Some(a.rule.fault);
                break;
            }
        }
        lock(&self.log).push(Seen { at: now, api: api.clone() });
        fault
    }
}

async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of descriptors, most likely: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Every close by the proxy is a reset (RST, not FIN): an injected
        // reset is then exactly what a client sees of a dropped connection.
        let _ = sock.set_zero_linger();
        let _ = sock.set_nodelay(true);
        let net = *inner.net.borrow();
        match net {
            Net::Up => {
                tokio::spawn(serve(sock, inner.clone()));
            }
            Net::Refuse => {
                lock(&inner.cut_connections).push(Instant::now());
                drop(sock);
            }
            Net::Blackhole => {
                lock(&inner.cut_connections).push(Instant::now());
                let mut watch = inner.net.subscribe();
                tokio::spawn(async move {
                    let _ = watch.wait_for(|n| *n != Net::Blackhole).await;
                    drop(sock);
                });
            }
        }
    }
}

type Body = Either<Incoming, Full<Bytes>>;
type Upstream = Arc<tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>>;

/// Serves one client connection until it closes, a fault resets it, or the
/// network is cut.
async fn serve(sock: TcpStream, inner: Arc<Inner>) {
    let kill = Arc::new(Notify::new());
    // One upstream connection per client connection: HTTP/1.1 requests on a
    // connection are sequential, so it is never shared.
    let upstream: Upstream = Arc::new(tokio::sync::Mutex::new(None));
    let (svc_inner, svc_kill) = (inner.clone(), kill.clone());
    let svc = hyper::service::service_fn(move |req| handle(svc_inner.clone(), svc_kill.clone(), upstream.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), svc);
    tokio::pin!(conn);
    let mut net = inner.net.subscribe();
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = kill.notified() => return,
            changed = net.changed() => {
                let now = match changed {
                    Ok(()) => *net.borrow_and_update(),
                    Err(_) => return,
                };
                match now {
                    Net::Up => {}
                    Net::Refuse => return,
                    Net::Blackhole => {
                        // Hold the connection without serving it; reset it
                        // when the network comes back.
                        let _ = net.wait_for(|n| *n != Net::Blackhole).await;
                        return;
                    }
                }
            }
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    kill: Arc<Notify>,
    upstream: Upstream,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return reset(&kill).await;
    };
    let api = classify(&parts, &body);
    let fault = inner.decide(&api, &body);
    let answer = match fault {
        None => forward(&inner, &upstream, &api, &parts, body).await,
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            forward(&inner, &upstream, &api, &parts, body).await
        }
        Some(Fault::Reset) => return reset(&kill).await,
        Some(Fault::DropResponse) => {
            // Read the whole answer, so the emulator has certainly acted.
            if let Ok(r) = forward(&inner, &upstream, &api, &parts, body).await
                && let Either::Left(b) = r.into_body()
            {
                let _ = b.collect().await;
            }
            return reset(&kill).await;
        }
        Some(Fault::Duplicate) => {
            if let Ok(r) = forward(&inner, &upstream, &api, &parts, body.clone()).await
                && let Either::Left(b) = r.into_body()
            {
                let _ = b.collect().await;
            }
            forward(&inner, &upstream, &api, &parts, body).await
        }
        Some(f) => {
            let (status, code) = f.error(api.service).unwrap_or((500, "InjectedError"));
            Ok(error_response(&api, status, code))
        }
    };
    Ok(answer.unwrap_or_else(|e| plain(StatusCode::BAD_GATEWAY, format!("fault proxy: upstream failed: {e}"))))
}

/// Closes the client connection without an answer.
async fn reset(kill: &Notify) -> Result<Response<Body>, Infallible> {
    kill.notify_one();
    std::future::pending().await
}

/// Sends the request to the emulator on this connection's upstream
/// connection (opened on first use, re-opened when the emulator closed it).
async fn forward(
    inner: &Inner,
    upstream: &Upstream,
    api: &Api,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<Body>, String> {
    // DynamoDB answers are small and read whole, so that the next request
    // waits until the emulator has finished with this one.
    if api.service == Service::DynamoDb {
        let _one_at_a_time = inner.dynamodb.lock().await;
        let resp = send(inner, upstream, parts, body).await?;
        let (parts, body) = resp.into_parts();
        let body = match body {
            Either::Left(b) => b.collect().await.map_err(|e| e.to_string())?.to_bytes(),
            Either::Right(b) => b.collect().await.map_or_else(|e| match e {}, |b| b.to_bytes()),
        };
        return Ok(Response::from_parts(parts, Either::Right(Full::new(body))));
    }
    send(inner, upstream, parts, body).await
}

/// One request on this client connection's upstream connection.
async fn send(inner: &Inner, upstream: &Upstream, parts: &Parts, body: Bytes) -> Result<Response<Body>, String> {
    let mut slot = upstream.lock().await;
    let reusable = match slot.take() {
        Some(mut s) => s.ready().await.is_ok().then_some(s),
        None => None,
    };
    let mut sender = match reusable {
        Some(s) => s,
        None => {
            let sock = TcpStream::connect(inner.upstream).await.map_err(|e| e.to_string())?;
            let _ = sock.set_nodelay(true);
            let (s, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            s
        }
    };
    let mut req = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) {
            req = req.header(name, value);
        }
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    *slot = Some(sender);
    let (mut parts, body) = resp.into_parts();
    // The emulator may close after each answer; the client keeps its
    // connection to the proxy regardless.
    parts.headers.remove(header::CONNECTION);
    parts.headers.remove("keep-alive");
    Ok(Response::from_parts(parts, Either::Left(body)))
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    // The body is re-sent whole, so its framing is hyper's to choose.
    [header::CONNECTION, header::TRANSFER_ENCODING, header::TE, header::UPGRADE, header::PROXY_AUTHORIZATION]
        .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    r
}

/// An error answer in the format the SDK parses for `api`'s protocol.
fn error_response(api: &Api, status: u16, code: &str) -> Response<Body> {
    const MESSAGE: &str = "injected by the scorefleet fault proxy";
    let fault_side = if status >= 500 { "Receiver" } else { "Sender" };
    let (content_type, body) = match api.service {
        Service::DynamoDb => (
            "application/x-amz-json-1.0",
            format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"{MESSAGE}"}}"#),
        ),
        Service::Sqs if api.query => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>{fault_side}</Type><Code>{code}</Code><Message>{MESSAGE}</Message>\
                 </Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
            ),
        ),
        Service::Sqs => {
            ("application/x-amz-json-1.0", format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"{MESSAGE}"}}"#))
        }
        Service::S3 => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{MESSAGE}</Message>\
                 <RequestId>fault-proxy</RequestId></Error>"
            ),
        ),
    };
    let mut r = plain(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    h.insert("x-amzn-requestid", header::HeaderValue::from_static("fault-proxy"));
    if api.service == Service::Sqs
        && let Ok(v) = header::HeaderValue::from_str(&format!("{code};{fault_side}"))
    {
        // aws-sdk-sqs (awsQueryCompatible) takes the error code from here.
        h.insert("x-amzn-query-error", v);
    }
    r
}

/// Names a request's AWS API.
fn classify(parts: &Parts, body: &[u8]) -> Api {
    if let Some(target) = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()) {
        let (prefix, op) = target.split_once('.').unwrap_or(("", target));
        let service = if prefix.starts_with("DynamoDB") { Service::DynamoDb } else { Service::Sqs };
        return Api { service, op: op.to_owned(), query: false };
    }
    let form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form
        && let Some(action) = std::str::from_utf8(body)
            .ok()
            .and_then(|b| b.split('&').find_map(|kv| kv.strip_prefix("Action=")).map(str::to_owned))
    {
        return Api { service: Service::Sqs, op: action, query: true };
    }
    Api { service: Service::S3, op: s3_op(parts).to_owned(), query: false }
}

/// The S3 operation of a path-style request.
fn s3_op(parts: &Parts) -> &'static str {
    let path = parts.uri.path().trim_start_matches('/');
    let has_key = path.split_once('/').is_some_and(|(_, k)| !k.is_empty());
    let query = parts.uri.query().unwrap_or("");
    let m = &parts.method;
    match (m.as_str(), has_key) {
        ("GET", true) => "GetObject",
        ("HEAD", true) => "HeadObject",
        ("PUT", true) if parts.headers.contains_key("x-amz-copy-source") => "CopyObject",
        ("PUT", true) => "PutObject",
        ("DELETE", true) => "DeleteObject",
        ("GET", false) if query.contains("list-type=2") => "ListObjectsV2",
        ("GET", false) => "ListObjects",
        ("HEAD", false) => "HeadBucket",
        ("PUT", false) => "CreateBucket",
        ("POST", false) if query.contains("delete") => "DeleteObjects",
        _ => "S3Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn requests_are_named_by_their_api() {
        let dynamo = parts("POST", "/", &[("x-amz-target", "DynamoDB_20120810.UpdateItem")]);
        assert_eq!(classify(&dynamo, b"{}").op, "UpdateItem");
        assert_eq!(classify(&dynamo, b"{}").service, Service::DynamoDb);
        let sqs = parts("POST", "/", &[("x-amz-target", "AmazonSQS.ReceiveMessage")]);
        assert_eq!(classify(&sqs, b"{}").service, Service::Sqs);
        let query = parts("POST", "/", &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")]);
        let api = classify(&query, b"Action=DeleteMessageBatch&Version=2012-11-05");
        assert_eq!((api.service, api.op.as_str(), api.query), (Service::Sqs, "DeleteMessageBatch", true));
        assert_eq!(classify(&parts("GET", "/bucket/digits/00001.png", &[]), b"").op, "GetObject");
        assert_eq!(classify(&parts("GET", "/bucket?list-type=2&prefix=a", &[]), b"").op, "ListObjectsV2");
        assert_eq!(classify(&parts("PUT", "/bucket", &[]), b"").op, "CreateBucket");
    }
}
