//! The loopback test server, the DNS table, the bucket stand-in, the guards
//! and the no-escape check.

use super::*;

/// What the test server answers on a path.
pub(super) enum Reply {
    Raw(Vec<u8>),
    /// A 200 whose body comes one byte every 100 ms, forever.
    Trickle,
}

pub(super) fn ok_body(body: &[u8]) -> Reply {
    let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    Reply::Raw(r)
}

pub(super) fn found(location: &str) -> Reply {
    Reply::Raw(format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n").into_bytes())
}

pub(super) fn raw(head: &str, body: &[u8]) -> Reply {
    let mut r = head.as_bytes().to_vec();
    r.extend_from_slice(body);
    Reply::Raw(r)
}

/// Serves [`routes`] on 127.0.0.1; every other path is a 404. Returns the port.
pub(super) async fn serve() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let routes = Arc::new(routes(port));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("/");
                match routes.get(path) {
                    Some(Reply::Raw(bytes)) => {
                        let _ = sock.write_all(bytes).await;
                    }
                    Some(Reply::Trickle) => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n").await;
                        for _ in 0..100 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if sock.write_all(b"x").await.is_err() {
                                return;
                            }
                        }
                    }
                    None => {
                        let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

/// The test server's routes. Redirect targets are hostile on purpose; each is
/// vetted against the guards before any row runs (see [`assert_no_escape`]).
pub(super) fn routes(port: u16) -> HashMap<String, Reply> {
    let mut endless = Vec::new();
    for _ in 0..(2 * FETCH_CAP as usize) >> 14 {
        endless.extend_from_slice(b"4000\r\n");
        endless.extend(std::iter::repeat_n(b'z', 1 << 14));
        endless.extend_from_slice(b"\r\n");
    }
    let r: Vec<(&str, Reply)> = vec![
        ("/ok.png", ok_body(&png(8, 8))),
        ("/relative", found("/ok.png")),
        ("/to-metadata", found("http://169.254.169.254/latest/meta-data/iam/security-credentials/")),
        ("/to-private", found("http://10.0.0.1/a.png")),
        ("/to-v6-loopback", found(&format!("http://[::1]:{port}/ok.png"))),
        ("/to-mapped-metadata", found("http://[::ffff:169.254.169.254]/latest/meta-data/")),
        ("/to-decimal-metadata", found("http://2852039166/latest/meta-data/")),
        ("/to-internal-name", found("http://internal.test/a.png")),
        ("/to-rebinding-name", found("http://rebind.test/a.png")),
        ("/to-file", found("file:///etc/passwd")),
        ("/to-ftp", found("ftp://127.0.0.1/a.png")),
        ("/to-gopher", found(&format!("gopher://127.0.0.1:{port}/_GET%20/"))),
        ("/to-credentials", found(&format!("http://user:secret@127.0.0.1:{port}/ok.png"))),
        ("/to-127", found(&format!("http://127.0.0.1:{port}/ok.png"))),
        ("/no-location", raw("HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n", b"")),
        ("/bad-location", found("http://[zz/")),
        ("/declares-a-terabyte", raw("HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n", b"x")),
        // Twice the cap, and no terminating chunk.
        ("/chunked-forever", raw("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", &endless)),
        ("/header-bomb", raw(&format!("HTTP/1.1 200 OK\r\nx-bomb: {}\r\n\r\n", "a".repeat(2 << 20)), b"")),
        ("/truncated-body", raw("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b"0123456789")),
        ("/not-http", raw("SSH-2.0-OpenSSH_9.6\r\n\r\n", b"")),
        ("/slowloris", Reply::Trickle),
        ("/status-500", raw("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n", b"")),
        ("/status-403", raw("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n", b"")),
        ("/not-an-image", ok_body(b"<html><body>hello</body></html>")),
    ];
    let mut r: HashMap<String, Reply> = r.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    for i in 0..8 {
        r.insert(format!("/hop{i}"), found(&format!("/hop{}", i + 1)));
    }
    r
}

/// DNS for the rows: `*.test` from a table, anything else (only `localhost`
/// is used) from the system resolver.
pub(super) struct Dns(HashMap<&'static str, Vec<IpAddr>>);

impl Dns {
    pub(super) fn new() -> Self {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        Self(HashMap::from([
            ("images.test", vec![ip("127.0.0.1")]),
            ("internal.test", vec![ip("10.0.0.1")]),
            ("metadata.test", vec![ip("169.254.169.254")]),
            ("v6-loopback.test", vec![ip("::1")]),
            ("mapped.test", vec![ip("::ffff:10.1.2.3")]),
            ("ula.test", vec![ip("fd00::1")]),
            // An allowed answer with an internal one: a rebinding attempt (the
            // fetch must not pick the answer it likes).
            ("rebind.test", vec![ip("127.0.0.1"), ip("169.254.169.254")]),
        ]))
    }

    fn table(&self, host: &str) -> Option<Vec<IpAddr>> {
        self.0.get(host).cloned()
    }
}

impl Resolve for Dns {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match self.table(host) {
            Some(ips) => Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            None if host.ends_with(".test") => Err(io::Error::new(io::ErrorKind::NotFound, "no such .test name")),
            None => Ok(tokio::net::lookup_host((host, port)).await?.collect()),
        }
    }
}

/// An S3 stand-in holding one object per bucket.
pub(super) struct Buckets;

impl ObjectStore for Buckets {
    async fn get(&self, bucket: &str, key: &str, _max: u64) -> Result<Vec<u8>, JobError> {
        match (bucket, key) {
            ("allowed-bkt", "a.png") => Ok(png(8, 8)),
            _ => Err(JobError::new(ErrorKind::FetchNotFound, format!("s3://{bucket}/{key}"))),
        }
    }
}

pub(super) fn guard(net: Net) -> Guard {
    let loopback = || vec!["127.0.0.0/8".parse().expect("cidr")];
    match net {
        Net::Default => Guard::default(),
        Net::Loopback => Guard::new(loopback(), None),
        Net::HostList => Guard::new(loopback(), Some(vec!["images.test".into()])),
    }
}

/// Whether a connection to `ip` stays on this machine.
pub(super) fn on_this_machine(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Refuses to run if an address a row could reach is off this machine and
/// admitted by the guard that row uses: such a row would send packets out.
/// Stricter than the guard's own rule (a name with one refused answer is
/// refused whole): every such answer must be refused, so that even a bug in
/// the fetcher could not reach the network.
pub(super) async fn assert_no_escape(targets: &[(Net, String)], dns: &Dns) {
    for (net, raw) in targets {
        let Ok(u) = url::Url::parse(raw) else { continue };
        let ips: Vec<IpAddr> = match u.host() {
            Some(url::Host::Ipv4(v4)) => vec![v4.into()],
            Some(url::Host::Ipv6(v6)) => vec![v6.into()],
            Some(url::Host::Domain(d)) => match dns.table(d) {
                Some(ips) => ips,
                None => dns.resolve(d, 80).await.map(|a| a.iter().map(SocketAddr::ip).collect()).unwrap_or_default(),
            },
            None => vec![],
        };
        for ip in ips.into_iter().filter(|ip| !on_this_machine(*ip)) {
            assert!(guard(*net).check_ip(ip).is_err(), "{raw}: {ip} is admitted by {net:?}; not running");
        }
    }
}
