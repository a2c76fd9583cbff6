//! `http://` and `https://` fetching behind the SSRF guard.
//!
//! The client is built from hyper's connection primitives rather than a
//! pooled client so that the worker itself chooses every address it connects
//! to: the host is resolved once, every answer must pass the [`Guard`], and
//! the TCP connection goes to one of those vetted addresses (the peer address
//! is checked again after connecting). Redirects are followed by hand, at
//! most [`MAX_REDIRECTS`] hops, each hop re-checked from scratch. Bodies are
//! streamed and cut off at the byte cap (`too_large`) without reading the
//! rest; a declared `Content-Length` over the cap is refused before reading.
//!
//! Status mapping: 404/410 → `fetch_not_found`; 401/403 and other 4xx →
//! `fetch_denied`; 408/429/5xx, timeouts, resets and refused connections →
//! `fetch_failed` (retryable).

use super::ssrf::Guard;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use scorefleet_core::error::{ErrorKind, JobError};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use url::Url;

/// Most redirects followed before the fetch is refused (`fetch_denied`).
pub const MAX_REDIRECTS: usize = 5;

/// Resolves host names; a trait so tests can make any name point anywhere.
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` resolves to, with `port`.
    fn resolve(&self, host: &str, port: u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// The system resolver (getaddrinfo on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Time limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Per TCP connect attempt (and TLS handshake).
    pub connect: Duration,
    /// Longest silence while waiting for headers or the next body chunk.
    pub read: Duration,
    /// The whole fetch, redirects included (a trickling server cannot hold a
    /// fetcher slot forever).
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), read: Duration::from_secs(15), total: Duration::from_secs(60) }
    }
}

/// Fetches `http(s)://` URLs through the SSRF guard.
pub struct HttpFetcher<R = SystemResolver> {
    guard: Guard,
    resolver: R,
    timeouts: Timeouts,
    /// `None` when no TLS configuration could be built: https jobs then fail
    /// (`fetch_failed`) instead of the worker refusing to start.
    tls: Option<TlsConnector>,
}

impl<R> std::fmt::Debug for HttpFetcher<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher").field("guard", &self.guard).field("timeouts", &self.timeouts).finish()
    }
}

fn tls_connector() -> Option<TlsConnector> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Explicit provider: more than one may be compiled into the workspace, and
    // then rustls cannot pick a process default by itself.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(TlsConnector::from(Arc::new(config)))
}

impl HttpFetcher<SystemResolver> {
    /// A fetcher using the system resolver.
    pub fn new(guard: Guard, timeouts: Timeouts) -> Self {
        Self::with_resolver(guard, timeouts, SystemResolver)
    }
}

fn failed(msg: impl Into<String>) -> JobError {
    JobError::new(ErrorKind::FetchFailed, msg)
}

impl<R: Resolve> HttpFetcher<R> {
    /// A fetcher with a custom resolver (tests).
    pub fn with_resolver(guard: Guard, timeouts: Timeouts, resolver: R) -> Self {
        Self { guard, resolver, timeouts, tls: tls_connector() }
    }

    /// The body behind `url`, at most `max_bytes` long.
    /// Error messages name the URLs involved without their query strings.
    pub async fn fetch(&self, url: &Url, max_bytes: u64) -> Result<Vec<u8>, JobError> {
        let r = match tokio::time::timeout(self.timeouts.total, self.follow(url.clone(), max_bytes)).await {
            Ok(r) => r,
            Err(_) => Err(failed(format!("{url}: no complete response within {:?}", self.timeouts.total))),
        };
        r.map_err(|e| JobError::new(e.kind, redact_queries(&e.message)))
    }

    async fn follow(&self, mut url: Url, max_bytes: u64) -> Result<Vec<u8>, JobError> {
        for _hop in 0..=MAX_REDIRECTS {
            match self.once(&url, max_bytes).await? {
                Hop::Body(b) => return Ok(b),
                Hop::Redirect(location) => {
                    url = url.join(&location).map_err(|e| {
                        JobError::new(ErrorKind::FetchDenied, format!("{url}: bad redirect location: {e}"))
                    })?;
                }
            }
        }
        Err(JobError::new(ErrorKind::FetchDenied, format!("{url}: more than {MAX_REDIRECTS} redirects")))
    }

    /// The addresses `url` may be fetched from, every one vetted.
    async fn addresses(&self, url: &Url) -> Result<Vec<SocketAddr>, JobError> {
        let port = url.port_or_known_default().ok_or_else(|| failed(format!("{url}: no port")))?;
        let host = url.host_str().ok_or_else(|| JobError::new(ErrorKind::BlockedUrl, format!("{url}: no host")))?;
        self.guard.check_host(host)?;
        let addrs = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => self
                .resolver
                .resolve(name, port)
                .await
                .map_err(|e| failed(format!("{url}: cannot resolve {name}: {e}")))?,
            None => return Err(JobError::new(ErrorKind::BlockedUrl, format!("{url}: no host"))),
        };
        if addrs.is_empty() {
            return Err(failed(format!("{url}: {host} resolves to no address")));
        }
        // One bad answer refuses the host: a name mixing public and internal
        // addresses is a rebinding attempt, not a mirror.
        for a in &addrs {
            self.guard.check_ip(a.ip()).map_err(|e| JobError::new(e.kind, format!("{url}: {}", e.message)))?;
        }
        Ok(addrs)
    }

    async fn connect(&self, url: &Url, addrs: &[SocketAddr]) -> Result<TcpStream, JobError> {
        let mut last = String::from("no address");
        for addr in addrs {
            match tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Check what we are actually connected to, not only what
                    // we asked for.
                    let peer = stream.peer_addr().map_err(|e| failed(format!("{url}: {e}")))?;
                    self.guard.check_ip(peer.ip())?;
                    return Ok(stream);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: connect timed out after {:?}", self.timeouts.connect),
            }
        }
        Err(failed(format!("{url}: cannot connect ({last})")))
    }

    async fn once(&self, url: &Url, max_bytes: u64) -> Result<Hop, JobError> {
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(JobError::new(ErrorKind::BlockedUrl, format!("{url}: scheme {other} is not fetched")));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(JobError::new(ErrorKind::BlockedUrl, format!("{url}: credentials in urls are refused")));
        }
        let addrs = self.addresses(url).await?;
        let tcp = self.connect(url, &addrs).await?;
        if https {
            let tls = self.tls.as_ref().ok_or_else(|| failed("no TLS configuration available"))?;
            let name = match url.host() {
                Some(url::Host::Ipv4(ip)) => ServerName::IpAddress(IpAddr::V4(ip).into()),
                Some(url::Host::Ipv6(ip)) => ServerName::IpAddress(IpAddr::V6(ip).into()),
                _ => ServerName::try_from(url.host_str().unwrap_or_default().to_owned())
                    .map_err(|e| JobError::new(ErrorKind::BlockedUrl, format!("{url}: bad TLS name: {e}")))?,
            };
            let stream = tokio::time::timeout(self.timeouts.connect, tls.connect(name, tcp))
                .await
                .map_err(|_| failed(format!("{url}: TLS handshake timed out")))?
                .map_err(|e| failed(format!("{url}: TLS handshake failed: {e}")))?;
            self.exchange(url, stream, max_bytes).await
        } else {
            self.exchange(url, tcp, max_bytes).await
        }
    }

    async fn exchange<T>(&self, url: &Url, io: T, max_bytes: u64) -> Result<Hop, JobError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let read = self.timeouts.read;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| failed(format!("{url}: {e}")))?;
        // The connection task ends when the response body is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let req = Request::get(path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, concat!("scorefleet-worker/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "image/*")
            .body(Empty::<Bytes>::new())
            .map_err(|e| JobError::new(ErrorKind::BlockedUrl, format!("{url}: cannot build a request: {e}")))?;
        let resp = tokio::time::timeout(read, sender.send_request(req))
            .await
            .map_err(|_| failed(format!("{url}: no response headers within {read:?}")))?
            .map_err(|e| failed(format!("{url}: {e}")))?;
        let status = resp.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let location =
                resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                    JobError::new(ErrorKind::FetchDenied, format!("{url}: {status} without Location"))
                })?;
            return Ok(Hop::Redirect(location.to_owned()));
        }
        if let Some(e) = status_error(url, status) {
            return Err(e);
        }
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared
            && n > max_bytes
        {
            return Err(too_large(url, max_bytes));
        }
        let mut body = resp.into_body();
        let mut out = Vec::with_capacity(declared.unwrap_or(0).min(max_bytes) as usize);
        loop {
            let frame = tokio::time::timeout(read, body.frame())
                .await
                .map_err(|_| failed(format!("{url}: body stalled for {read:?}")))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| failed(format!("{url}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if out.len() as u64 + data.len() as u64 > max_bytes {
                    return Err(too_large(url, max_bytes));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Hop::Body(out))
    }
}

enum Hop {
    Body(Vec<u8>),
    Redirect(String),
}

/// `msg` with the query string and fragment of every http(s) URL in it
/// replaced by `?…`: a presigned URL's signature, or a token in a query, is
/// a credential, and error messages are logged and stored with results.
pub(crate) fn redact_queries(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(start) = ["http://", "https://"].iter().filter_map(|p| rest.find(p)).min() {
        out.push_str(&rest[..start]);
        // A URL as `Url` prints it has no whitespace; a colon right before
        // the whitespace is the message's own (`{url}: …`).
        let end = rest[start..].find(char::is_whitespace).map_or(rest.len(), |e| start + e);
        let token = &rest[start..end];
        let (token, colon) = token.strip_suffix(':').map_or((token, ""), |t| (t, ":"));
        match token.find(['?', '#']) {
            Some(cut) => {
                out.push_str(&token[..cut]);
                out.push_str("?…");
            }
            None => out.push_str(token),
        }
        out.push_str(colon);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn too_large(url: &Url, max_bytes: u64) -> JobError {
    JobError::new(ErrorKind::TooLarge, format!("{url}: body is over the {max_bytes}-byte limit"))
}

/// The typed error for a non-success, non-redirect status.
fn status_error(url: &Url, status: StatusCode) -> Option<JobError> {
    let kind = match status.as_u16() {
        200..=299 => return None,
        404 | 410 => ErrorKind::FetchNotFound,
        408 | 429 | 500..=599 => ErrorKind::FetchFailed,
        _ => ErrorKind::FetchDenied,
    };
    Some(JobError::new(kind, format!("{url}: HTTP {status}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Answers names from a table; anything else fails to resolve.
    struct FakeDns(HashMap<&'static str, Vec<IpAddr>>);

    impl Resolve for FakeDns {
        async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            self.0
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
        }
    }

    /// A one-route-per-path HTTP/1.1 server on 127.0.0.1: each path maps to a
    /// raw response. Returns its port.
    async fn server(routes: Vec<(&'static str, Vec<u8>)>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let routes: Arc<HashMap<&'static str, Vec<u8>>> = Arc::new(routes.into_iter().collect());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                    }
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let resp = routes.get(path.as_str()).cloned().unwrap_or_else(|| {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                    });
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        port
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn status(code: &str) -> Vec<u8> {
        format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes()
    }

    fn redirect(to: &str) -> Vec<u8> {
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes()
    }

    fn loopback_ok() -> Guard {
        Guard::new(vec!["127.0.0.0/8".parse().expect("cidr")], None)
    }

    fn fetcher(guard: Guard) -> HttpFetcher<FakeDns> {
        let dns = FakeDns(HashMap::from([
            ("images.test", vec![IpAddr::from([127, 0, 0, 1])]),
            ("metadata.test", vec![IpAddr::from([169, 254, 169, 254])]),
            ("mixed.test", vec![IpAddr::from([8, 8, 8, 8]), IpAddr::from([10, 0, 0, 1])]),
        ]));
        let t =
            Timeouts { connect: Duration::from_secs(2), read: Duration::from_secs(2), total: Duration::from_secs(5) };
        HttpFetcher::with_resolver(guard, t, dns)
    }

    async fn get(f: &HttpFetcher<FakeDns>, url: &str, max: u64) -> Result<Vec<u8>, ErrorKind> {
        f.fetch(&Url::parse(url).expect(url), max).await.map_err(|e| e.kind)
    }

    #[test]
    fn query_strings_are_redacted_from_error_messages() {
        let cases = [
            (
                "https://b.s3.amazonaws.com/k.png?X-Amz-Signature=abc&X-Amz-Credential=AKIA: 403 Forbidden",
                "https://b.s3.amazonaws.com/k.png?…: 403 Forbidden",
            ),
            (
                "http://a/x?t=1: redirect to https://c/y?token=s3cr3t#frag refused",
                "http://a/x?…: redirect to https://c/y?… refused",
            ),
            ("https://a/plain: 404 Not Found", "https://a/plain: 404 Not Found"),
            ("no url here", "no url here"),
            ("https://a/p#only-fragment", "https://a/p?…"),
        ];
        for (msg, want) in cases {
            assert_eq!(redact_queries(msg), want);
        }
    }

    #[tokio::test]
    async fn a_failed_fetch_names_its_url_without_the_query() {
        let port = server(vec![("/gone", status("404 Not Found"))]).await;
        let f = fetcher(loopback_ok());
        let url = Url::parse(&format!("http://127.0.0.1:{port}/gone?X-Amz-Signature=s3cr3t")).expect("url");
        let e = f.fetch(&url, 1_000).await.expect_err("404");
        assert_eq!(e.kind, ErrorKind::FetchNotFound);
        assert!(!e.message.contains("s3cr3t"), "{}", e.message);
        assert!(e.message.contains("/gone?…"), "{}", e.message);
    }

    #[tokio::test]
    async fn fetches_follows_redirects_and_maps_statuses() {
        let big = vec![7u8; 5000];
        let port = server(vec![
            ("/a.png", ok(b"PNGDATA")),
            ("/hop", redirect("/a.png")),
            ("/gone", status("410 Gone")),
            ("/denied", status("403 Forbidden")),
            ("/auth", status("401 Unauthorized")),
            ("/teapot", status("418 I'm a teapot")),
            ("/boom", status("503 Service Unavailable")),
            ("/slow-down", status("429 Too Many Requests")),
            ("/big", ok(&big)),
            ("/loop", redirect("/loop")),
            ("/to-metadata", redirect("http://169.254.169.254/latest/meta-data/")),
            ("/to-metadata-name", redirect("http://metadata.test/")),
            ("/to-file", redirect("file:///etc/passwd")),
            (
                "/chunked-big",
                [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec(), {
                    let mut c = Vec::new();
                    for _ in 0..10 {
                        c.extend_from_slice(b"3e8\r\n");
                        c.extend_from_slice(&[1u8; 1000]);
                        c.extend_from_slice(b"\r\n");
                    }
                    c.extend_from_slice(b"0\r\n\r\n");
                    c
                }]
                .concat(),
            ),
        ])
        .await;
        let f = fetcher(loopback_ok());
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(get(&f, &format!("{base}/a.png"), 100).await, Ok(b"PNGDATA".to_vec()));
        assert_eq!(get(&f, &format!("http://images.test:{port}/a.png"), 100).await, Ok(b"PNGDATA".to_vec()));
        assert_eq!(get(&f, &format!("{base}/hop"), 100).await, Ok(b"PNGDATA".to_vec()));
        assert_eq!(get(&f, &format!("{base}/missing"), 100).await, Err(ErrorKind::FetchNotFound));
        assert_eq!(get(&f, &format!("{base}/gone"), 100).await, Err(ErrorKind::FetchNotFound));
        assert_eq!(get(&f, &format!("{base}/denied"), 100).await, Err(ErrorKind::FetchDenied));
        assert_eq!(get(&f, &format!("{base}/auth"), 100).await, Err(ErrorKind::FetchDenied));
        assert_eq!(get(&f, &format!("{base}/teapot"), 100).await, Err(ErrorKind::FetchDenied));
        assert_eq!(get(&f, &format!("{base}/boom"), 100).await, Err(ErrorKind::FetchFailed));
        assert_eq!(get(&f, &format!("{base}/slow-down"), 100).await, Err(ErrorKind::FetchFailed));
        assert_eq!(get(&f, &format!("{base}/big"), 4999).await, Err(ErrorKind::TooLarge));
        assert_eq!(get(&f, &format!("{base}/big"), 5000).await.map(|b| b.len()), Ok(5000));
        assert_eq!(get(&f, &format!("{base}/chunked-big"), 9999).await, Err(ErrorKind::TooLarge));
        assert_eq!(get(&f, &format!("{base}/chunked-big"), 10_000).await.map(|b| b.len()), Ok(10_000));
        assert_eq!(get(&f, &format!("{base}/loop"), 100).await, Err(ErrorKind::FetchDenied));
        // Every hop is re-checked: a public page cannot bounce the worker into
        // the metadata service, by address or by name.
        assert_eq!(get(&f, &format!("{base}/to-metadata"), 100).await, Err(ErrorKind::BlockedUrl));
        assert_eq!(get(&f, &format!("{base}/to-metadata-name"), 100).await, Err(ErrorKind::BlockedUrl));
        assert_eq!(get(&f, &format!("{base}/to-file"), 100).await, Err(ErrorKind::BlockedUrl));
    }

    #[tokio::test]
    async fn loopback_is_refused_without_the_allowlist_in_every_spelling() {
        let port = server(vec![("/a.png", ok(b"x"))]).await;
        let f = fetcher(Guard::default());
        for host in [
            "127.0.0.1".to_owned(),
            "images.test".to_owned(),
            "0x7f000001".to_owned(),
            "2130706433".to_owned(),
            "0177.0.0.1".to_owned(),
            "[::1]".to_owned(),
            "[::ffff:127.0.0.1]".to_owned(),
            "169.254.169.254".to_owned(),
            "metadata.test".to_owned(),
            "10.1.2.3".to_owned(),
            "192.168.0.10".to_owned(),
            "mixed.test".to_owned(),
        ] {
            let url = format!("http://{host}:{port}/a.png");
            assert_eq!(get(&f, &url, 100).await, Err(ErrorKind::BlockedUrl), "{url}");
        }
        // The same server is reachable once loopback is allowlisted: the
        // refusals above are the guard's, not the network's.
        assert_eq!(
            get(&fetcher(loopback_ok()), &format!("http://0x7f000001:{port}/a.png"), 100).await,
            Ok(b"x".to_vec())
        );
    }

    #[tokio::test]
    async fn host_allowlist_refuses_other_hosts() {
        let port = server(vec![("/a.png", ok(b"x"))]).await;
        let g = Guard::new(vec!["127.0.0.0/8".parse().expect("cidr")], Some(vec!["images.test".into()]));
        let f = fetcher(g);
        assert_eq!(get(&f, &format!("http://images.test:{port}/a.png"), 10).await, Ok(b"x".to_vec()));
        assert_eq!(get(&f, &format!("http://127.0.0.1:{port}/a.png"), 10).await, Err(ErrorKind::BlockedUrl));
    }

    #[tokio::test]
    async fn refused_connections_and_stalls_are_retryable() {
        // Bind then drop: nothing listens on this port any more.
        let port = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
        let f = fetcher(loopback_ok());
        assert_eq!(get(&f, &format!("http://127.0.0.1:{port}/a.png"), 10).await, Err(ErrorKind::FetchFailed));
        // A server that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let t = Timeouts { read: Duration::from_millis(200), ..f.timeouts };
        let impatient = HttpFetcher::with_resolver(loopback_ok(), t, FakeDns(HashMap::new()));
        assert_eq!(get(&impatient, &format!("http://127.0.0.1:{port}/a.png"), 10).await, Err(ErrorKind::FetchFailed));
    }
}
