//! The adversarial-input suite: every hostile input we know of, each with the
//! typed outcome the worker must give it, in one table.
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
//! A message row's outcome is what the worker does with the parse result
//! (`crates/worker/src/dedup.rs`, whose routing the in-memory pipeline test
//! `broken_messages_get_a_typed_result_…` covers): an error that still names
//! a valid `job_id` is answered with an `invalid_message` result; one that
//! names none gets no result and is left to the queue's redrive policy (DLQ).
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

// ---------------------------------------------------------------- images --

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn rgb8(w: u32, h: u32, px: [u8; 3]) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::ImageBuffer::from_pixel(w, h, image::Rgb(px)))
}

fn png(w: u32, h: u32) -> Vec<u8> {
    encode(&rgb8(w, h, [10, 200, 30]), image::ImageFormat::Png)
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = flate2::Crc::new();
    for p in parts {
        crc.update(p);
    }
    crc.sum()
}

/// A real PNG whose IHDR is rewritten to claim `w`×`h` (CRC fixed up, so only
/// the size is a lie).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut p = png(4, 4);
    // Signature (8), length (4), "IHDR" (4), then width and height.
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&[&p[12..29]]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

fn gif_frames(frames: &[[u8; 4]]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = frames.iter().map(|c| image::Frame::new(image::ImageBuffer::from_pixel(4, 4, image::Rgba(*c))));
        enc.encode_frames(frames).expect("gif");
    }
    out
}

/// A real GIF whose logical screen claims `screen` and whose first frame
/// claims `frame` (width, height).
fn gif_claiming(screen: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
    let mut g = gif_frames(&[[0, 0, 0, 255]]);
    g[6..8].copy_from_slice(&screen.0.to_le_bytes());
    g[8..10].copy_from_slice(&screen.1.to_le_bytes());
    let d = g.iter().position(|b| *b == b',').expect("image descriptor");
    g[d + 5..d + 7].copy_from_slice(&frame.0.to_le_bytes());
    g[d + 7..d + 9].copy_from_slice(&frame.1.to_le_bytes());
    g
}

/// A real baseline JPEG whose SOF0 claims `w`×`h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut j = encode(&rgb8(8, 8, [1, 2, 3]), image::ImageFormat::Jpeg);
    let sof = j.windows(2).position(|m| m == [0xff, 0xc0]).expect("SOF0");
    // Marker (2), length (2), precision (1), height (2), width (2).
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

/// A real BMP whose header claims `w`×`h`.
fn bmp_claiming(w: i32, h: i32) -> Vec<u8> {
    let mut b = encode(&rgb8(4, 4, [9, 9, 9]), image::ImageFormat::Bmp);
    b[18..22].copy_from_slice(&w.to_le_bytes());
    b[22..26].copy_from_slice(&h.to_le_bytes());
    b
}

/// A real lossless WebP whose VP8L header claims `w`×`h` (at most 16384 each).
fn webp_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut p = encode(&rgb8(4, 4, [9, 9, 9]), image::ImageFormat::WebP);
    let at = p.windows(4).position(|c| c == b"VP8L").expect("VP8L") + 9;
    let bits = u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
    // 14 bits width-1, 14 bits height-1, then alpha and version: keep those.
    let bits = (bits & !((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14);
    p[at..at + 4].copy_from_slice(&bits.to_le_bytes());
    p
}

fn sixteen_bit_png() -> Vec<u8> {
    let buf = image::ImageBuffer::from_pixel(8, 8, image::Rgb([65535u16, 0, 32768]));
    encode(&image::DynamicImage::ImageRgb16(buf), image::ImageFormat::Png)
}

fn plane(chw: &[f32], ch: usize) -> &[f32] {
    &chw[ch * 64..(ch + 1) * 64]
}

fn all_near(v: &[f32], want: f32) -> bool {
    v.iter().all(|x| (x - want).abs() < 0.1)
}

// ------------------------------------------------------------ the server --

/// What the test server answers on a path.
enum Reply {
    Raw(Vec<u8>),
    /// A 200 whose body comes one byte every 100 ms, forever.
    Trickle,
}

fn ok_body(body: &[u8]) -> Reply {
    let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    Reply::Raw(r)
}

fn found(location: &str) -> Reply {
    Reply::Raw(format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n").into_bytes())
}

fn raw(head: &str, body: &[u8]) -> Reply {
    let mut r = head.as_bytes().to_vec();
    r.extend_from_slice(body);
    Reply::Raw(r)
}

/// Serves [`routes`] on 127.0.0.1; every other path is a 404. Returns the port.
async fn serve() -> u16 {
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
fn routes(port: u16) -> HashMap<String, Reply> {
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
struct Dns(HashMap<&'static str, Vec<IpAddr>>);

impl Dns {
    fn new() -> Self {
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
struct Buckets;

impl ObjectStore for Buckets {
    async fn get(&self, bucket: &str, key: &str, _max: u64) -> Result<Vec<u8>, JobError> {
        match (bucket, key) {
            ("allowed-bkt", "a.png") => Ok(png(8, 8)),
            _ => Err(JobError::new(ErrorKind::FetchNotFound, format!("s3://{bucket}/{key}"))),
        }
    }
}

fn guard(net: Net) -> Guard {
    let loopback = || vec!["127.0.0.0/8".parse().expect("cidr")];
    match net {
        Net::Default => Guard::default(),
        Net::Loopback => Guard::new(loopback(), None),
        Net::HostList => Guard::new(loopback(), Some(vec!["images.test".into()])),
    }
}

/// Whether a connection to `ip` stays on this machine.
fn on_this_machine(ip: IpAddr) -> bool {
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
async fn assert_no_escape(targets: &[(Net, String)], dns: &Dns) {
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

// -------------------------------------------------------------- the table --

fn cases() -> Vec<Case> {
    use ErrorKind::*;
    let d = Net::Default;
    let l = Net::Loopback;
    let h = Net::HostList;
    let deep = |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    let mut c = vec![
        // ---- messages: shape
        case("valid job", msg(job_with("v", Some("1"))), Scored),
        case("empty body", msg(""), DeadLetter),
        case("whitespace body", msg(" \n\t"), DeadLetter),
        case("JSON null", msg("null"), DeadLetter),
        case("JSON array", msg(r#"[{"v":1,"job_id":"adv-1"}]"#), DeadLetter),
        case("JSON string", msg(r#""{\"v\":1}""#), DeadLetter),
        case("not JSON", msg("GET / HTTP/1.1"), DeadLetter),
        case("byte-order mark before the object", msg(format!("\u{feff}{}", job_with("v", Some("1")))), DeadLetter),
        case("trailing garbage", msg(format!("{} x", job_with("v", Some("1")))), DeadLetter),
        case("two objects", msg(format!("{0}{0}", job_with("v", Some("1")))), DeadLetter),
        case("truncated object", msg(r#"{"v":1,"job_id":"adv-1","url":"s3://allowed-bkt/a.png""#), DeadLetter),
        // ---- messages: depth bombs (serde_json's recursion limit is 128;
        // each bomb stays under the 64 KiB body limit, so that limit is not
        // what refuses it)
        case("array depth bomb, 30k deep", msg(deep("[", "]", 30_000)), DeadLetter),
        case(
            "object depth bomb, 10k deep",
            msg(format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000))),
            DeadLetter,
        ),
        case(
            "depth bomb inside attrs of a named job",
            msg(job_with("attrs", Some(&deep("[", "]", 5_000)))),
            Fails(InvalidMessage),
        ),
        case(
            "attrs 100 deep: allowed, under the limit",
            msg(job_with("attrs", Some(&format!("{{\"a\":{}}}", deep("[", "]", 100))))),
            Scored,
        ),
        case(
            "attrs 127 deep: just past the limit",
            msg(job_with("attrs", Some(&format!("{{\"a\":{}}}", deep("[", "]", 127))))),
            Fails(InvalidMessage),
        ),
        // ---- messages: huge strings and size limits
        case("60 KB job_id", msg(job_with("job_id", Some(&format!("\"{}\"", "i".repeat(60_000))))), DeadLetter),
        case(
            "60 KB url of a named job",
            msg(job_with("url", Some(&format!("\"s3://allowed-bkt/{}\"", "k".repeat(60_000))))),
            Fails(InvalidMessage),
        ),
        case(
            "3 KB url (over 2,048 bytes)",
            msg(job_with("url", Some(&format!("\"https://images.test/{}\"", "p".repeat(3000))))),
            Fails(InvalidMessage),
        ),
        case(
            "60 KB run_id",
            msg(job_with("run_id", Some(&format!("\"{}\"", "r".repeat(60_000))))),
            Fails(InvalidMessage),
        ),
        case(
            "5 KB attrs (over 4 KiB)",
            msg(job_with("attrs", Some(&format!("{{\"x\":\"{}\"}}", "a".repeat(5000))))),
            Fails(InvalidMessage),
        ),
        case(
            "3,000 keys in attrs",
            msg(job_with(
                "attrs",
                Some(&format!("{{{}}}", (0..3_000).map(|i| format!("\"k{i}\":0")).collect::<Vec<_>>().join(","))),
            )),
            Fails(InvalidMessage),
        ),
        case(
            "body one byte over 64 KiB",
            msg({
                let base = job_with("attrs", Some(r#"{"pad":""}"#));
                let pad = MAX_BODY_BYTES + 1 - base.len();
                job_with("attrs", Some(&format!("{{\"pad\":\"{}\"}}", " ".repeat(pad))))
            }),
            DeadLetter,
        ),
        case(
            "10 MB body",
            msg(job_with("attrs", Some(&format!("{{\"x\":\"{}\"}}", "a".repeat(10 << 20))))),
            DeadLetter,
        ),
        case(
            "128-char job_id (the maximum)",
            msg(job_with("job_id", Some(&format!("\"{}\"", "j".repeat(128))))),
            Scored,
        ),
        case("129-char job_id", msg(job_with("job_id", Some(&format!("\"{}\"", "j".repeat(129))))), DeadLetter),
        // ---- messages: invalid UTF-8 and odd characters
        case("lone high surrogate in job_id", msg(job_with("job_id", Some(r#""\ud800""#))), DeadLetter),
        case(
            "lone low surrogate in url of a named job",
            msg(job_with("url", Some(r#""s3://allowed-bkt/\udc00""#))),
            Fails(InvalidMessage),
        ),
        case("replacement character in job_id", msg(job_with("job_id", Some("\"adv-\u{fffd}\""))), DeadLetter),
        case("NUL in job_id", msg(job_with("job_id", Some(r#""adv\u0000""#))), DeadLetter),
        case(
            "NUL in the s3 key of a named job",
            msg(job_with("url", Some(r#""s3://allowed-bkt/a\u0000.png""#))),
            Fails(InvalidMessage),
        ),
        case("newline in run_id", msg(job_with("run_id", Some(r#""r\n2""#))), Fails(InvalidMessage)),
        case("non-ASCII run_id", msg(job_with("run_id", Some("\"nächtlich\""))), Fails(InvalidMessage)),
        case("space in job_id", msg(job_with("job_id", Some(r#""a b""#))), DeadLetter),
        // ---- messages: duplicate keys
        case("duplicate v", msg(format!(r#"{{"v":1,{}"#, &job_with("v", Some("1"))[1..])), DeadLetter),
        case("duplicate job_id", msg(format!(r#"{{"job_id":"adv-2",{}"#, &job_with("v", Some("1"))[1..])), DeadLetter),
        case(
            "duplicate url of a named job",
            msg(format!(r#"{{"url":"s3://other-bkt/x",{}"#, &job_with("v", Some("1"))[1..])),
            Fails(InvalidMessage),
        ),
        case("duplicate attrs of a named job", msg(job_with("attrs", Some(r#"{},"attrs":{}"#))), Fails(InvalidMessage)),
        // ---- messages: wrong types
        case("number job_id", msg(job_with("job_id", Some("7"))), DeadLetter),
        case("null job_id", msg(job_with("job_id", Some("null"))), DeadLetter),
        case("object job_id", msg(job_with("job_id", Some(r#"{"id":"adv-1"}"#))), DeadLetter),
        case("number url", msg(job_with("url", Some("7"))), Fails(InvalidMessage)),
        case("array url", msg(job_with("url", Some(r#"["s3://allowed-bkt/a.png"]"#))), Fails(InvalidMessage)),
        case("number run_id", msg(job_with("run_id", Some("20261126"))), Fails(InvalidMessage)),
        case("huge number run_id", msg(job_with("run_id", Some("1e999"))), Fails(InvalidMessage)),
        case("string attrs", msg(job_with("attrs", Some(r#""label=7""#))), Fails(InvalidMessage)),
        case("null attrs (same as absent)", msg(job_with("attrs", Some("null"))), Scored),
        case("string v", msg(job_with("v", Some(r#""1""#))), Fails(InvalidMessage)),
        case("float v", msg(job_with("v", Some("1.0"))), Fails(InvalidMessage)),
        case("negative v", msg(job_with("v", Some("-1"))), Fails(InvalidMessage)),
        case("v past u64", msg(job_with("v", Some("18446744073709551617"))), Fails(InvalidMessage)),
        case("v 2", msg(job_with("v", Some("2"))), Fails(InvalidMessage)),
        case("missing v", msg(job_with("v", None)), Fails(InvalidMessage)),
        case("missing url", msg(job_with("url", None)), Fails(InvalidMessage)),
        case("missing job_id", msg(job_with("job_id", None)), DeadLetter),
        case("unknown field", msg(job_with("callback", Some(r#""http://169.254.169.254/""#))), Fails(InvalidMessage)),
        // ---- URLs: schemes and credentials (refused by the parser)
        case("file://", url(d, "file:///etc/passwd"), Fails(InvalidMessage)),
        case("ftp://", url(d, "ftp://images.test/a.png"), Fails(InvalidMessage)),
        case("gopher://", url(d, "gopher://127.0.0.1:6379/_FLUSHALL"), Fails(InvalidMessage)),
        case("data:", url(d, "data:image/png;base64,iVBORw0KGgo="), Fails(InvalidMessage)),
        case("javascript:", url(d, "javascript:alert(1)"), Fails(InvalidMessage)),
        case("s3 with one slash", url(d, "s3:/allowed-bkt/a.png"), Fails(InvalidMessage)),
        case("scheme-relative", url(d, "//images.test/a.png"), Fails(InvalidMessage)),
        case("user and password", url(l, "http://user:secret@127.0.0.1:{port}/ok.png"), Fails(InvalidMessage)),
        case("user only", url(l, "http://user@127.0.0.1:{port}/ok.png"), Fails(InvalidMessage)),
        case("password only", url(l, "http://:secret@127.0.0.1:{port}/ok.png"), Fails(InvalidMessage)),
        case(
            "allowed host as userinfo before a loopback host",
            url(h, "http://images.test@127.0.0.1:{port}/ok.png"),
            Fails(InvalidMessage),
        ),
        case("IPv6 zone id", url(d, "http://[fe80::1%25eth0]/a.png"), Fails(InvalidMessage)),
        case("port out of range", url(d, "http://images.test:99999/a.png"), Fails(InvalidMessage)),
        case("s3 bucket with upper case", url(d, "s3://Allowed-Bkt/a.png"), Fails(InvalidMessage)),
        // ---- SSRF: literal addresses, every spelling (refused by the guard)
        case("IPv4 loopback", url(d, "http://127.0.0.1:{port}/ok.png"), Fails(BlockedUrl)),
        case("IPv4 loopback, short form", url(d, "http://127.1:{port}/ok.png"), Fails(BlockedUrl)),
        case("IPv4 loopback, trailing dot", url(d, "http://127.0.0.1.:{port}/ok.png"), Fails(BlockedUrl)),
        case("decimal 2130706433", url(d, "http://2130706433:{port}/ok.png"), Fails(BlockedUrl)),
        case("octal 0177.0.0.1", url(d, "http://0177.0.0.1:{port}/ok.png"), Fails(BlockedUrl)),
        case("hex 0x7f000001", url(d, "http://0x7f000001:{port}/ok.png"), Fails(BlockedUrl)),
        case("dotted hex 0x7f.0x0.0x0.0x1", url(d, "http://0x7f.0x0.0x0.0x1:{port}/ok.png"), Fails(BlockedUrl)),
        case("percent-encoded host", url(d, "http://%31%32%37.0.0.1:{port}/ok.png"), Fails(BlockedUrl)),
        case("full-width digits", url(d, "http://１２７.０.０.１:{port}/ok.png"), Fails(BlockedUrl)),
        case("backslashes", url(d, "http:\\\\127.0.0.1:{port}\\ok.png"), Fails(BlockedUrl)),
        case(
            "fragment hiding an allowed host",
            url(h, "http://127.0.0.1:{port}#@images.test/ok.png"),
            Fails(BlockedUrl),
        ),
        case("0.0.0.0 as http://0", url(d, "http://0:{port}/ok.png"), Fails(BlockedUrl)),
        case("metadata 169.254.169.254", url(d, "http://169.254.169.254/latest/meta-data/"), Fails(BlockedUrl)),
        case("metadata, decimal", url(d, "http://2852039166/latest/meta-data/"), Fails(BlockedUrl)),
        case("metadata, hex", url(d, "http://0xa9fea9fe/latest/meta-data/"), Fails(BlockedUrl)),
        case("metadata, octal", url(d, "http://0251.0376.0251.0376/latest/meta-data/"), Fails(BlockedUrl)),
        case("ECS task metadata 169.254.170.2", url(d, "http://169.254.170.2/v2/credentials/x"), Fails(BlockedUrl)),
        case("private 10.0.0.1", url(d, "http://10.0.0.1/a.png"), Fails(BlockedUrl)),
        case("private 192.168.1.1", url(d, "https://192.168.1.1/a.png"), Fails(BlockedUrl)),
        case("carrier-grade NAT 100.64.0.1", url(d, "http://100.64.0.1/a.png"), Fails(BlockedUrl)),
        case("broadcast", url(d, "http://255.255.255.255/a.png"), Fails(BlockedUrl)),
        case("IPv6 loopback [::1]", url(d, "http://[::1]:{port}/ok.png"), Fails(BlockedUrl)),
        case("IPv6 unspecified [::]", url(d, "http://[::]:{port}/ok.png"), Fails(BlockedUrl)),
        case("IPv4-mapped loopback", url(d, "http://[::ffff:127.0.0.1]:{port}/ok.png"), Fails(BlockedUrl)),
        case("IPv4-mapped loopback, hex", url(d, "http://[::ffff:7f00:1]:{port}/ok.png"), Fails(BlockedUrl)),
        case("IPv4-mapped metadata", url(d, "http://[::ffff:169.254.169.254]/latest/meta-data/"), Fails(BlockedUrl)),
        case("IPv4-compatible loopback", url(d, "http://[::127.0.0.1]:{port}/ok.png"), Fails(BlockedUrl)),
        case("NAT64 of metadata", url(d, "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/"), Fails(BlockedUrl)),
        case("6to4 of metadata", url(d, "http://[2002:a9fe:a9fe::1]/latest/meta-data/"), Fails(BlockedUrl)),
        case("IPv6 link-local", url(d, "http://[fe80::1]/a.png"), Fails(BlockedUrl)),
        case("IPv6 unique local", url(d, "http://[fd00:ec2::254]/latest/meta-data/"), Fails(BlockedUrl)),
        case("IPv6 multicast", url(d, "http://[ff02::1]/a.png"), Fails(BlockedUrl)),
        case("loopback outside an IPv4-only allowlist", url(l, "http://[::1]:{port}/ok.png"), Fails(BlockedUrl)),
        // ---- SSRF: names that resolve inside
        case("localhost (system resolver)", url(d, "http://localhost:{port}/ok.png"), Fails(BlockedUrl)),
        case("LOCALHOST", url(d, "http://LOCALHOST:{port}/ok.png"), Fails(BlockedUrl)),
        case("localhost in circled letters (IDNA)", url(d, "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ:{port}/ok.png"), Fails(BlockedUrl)),
        case("name → 127.0.0.1", url(d, "http://images.test:{port}/ok.png"), Fails(BlockedUrl)),
        case("name → 10.0.0.1", url(d, "http://internal.test/a.png"), Fails(BlockedUrl)),
        case("name → 169.254.169.254", url(d, "http://metadata.test/latest/meta-data/"), Fails(BlockedUrl)),
        case("name → ::1", url(d, "http://v6-loopback.test:{port}/ok.png"), Fails(BlockedUrl)),
        case("name → ::ffff:10.1.2.3", url(d, "http://mapped.test/a.png"), Fails(BlockedUrl)),
        case("name → fd00::1", url(d, "http://ula.test/a.png"), Fails(BlockedUrl)),
        case("name → loopback and metadata (rebinding)", url(l, "http://rebind.test:{port}/ok.png"), Fails(BlockedUrl)),
        case("name that does not resolve", url(d, "http://nowhere.test/a.png"), Fails(FetchFailed)),
        case("host outside the host allowlist", url(h, "http://127.0.0.1:{port}/ok.png"), Fails(BlockedUrl)),
        case("s3 bucket outside the bucket allowlist", url(d, "s3://other-bkt/a.png"), Fails(BlockedUrl)),
        // ---- SSRF: redirects (first hop allowed, every later hop judged anew)
        case("control: allowed loopback fetch", url(l, "http://127.0.0.1:{port}/ok.png"), Scored),
        case("control: allowed host", url(h, "http://images.test:{port}/ok.png"), Scored),
        case("control: relative redirect", url(l, "http://127.0.0.1:{port}/relative"), Scored),
        case("control: s3 in the allowlist", url(d, "s3://allowed-bkt/a.png"), Scored),
        case("redirect to the metadata service", url(l, "http://127.0.0.1:{port}/to-metadata"), Fails(BlockedUrl)),
        case("redirect to 10.0.0.1", url(l, "http://127.0.0.1:{port}/to-private"), Fails(BlockedUrl)),
        case("redirect to [::1]", url(l, "http://127.0.0.1:{port}/to-v6-loopback"), Fails(BlockedUrl)),
        case("redirect to mapped metadata", url(l, "http://127.0.0.1:{port}/to-mapped-metadata"), Fails(BlockedUrl)),
        case("redirect to decimal metadata", url(l, "http://127.0.0.1:{port}/to-decimal-metadata"), Fails(BlockedUrl)),
        case("redirect to a name → 10.0.0.1", url(l, "http://127.0.0.1:{port}/to-internal-name"), Fails(BlockedUrl)),
        case("redirect to a rebinding name", url(l, "http://127.0.0.1:{port}/to-rebinding-name"), Fails(BlockedUrl)),
        case("redirect to file://", url(l, "http://127.0.0.1:{port}/to-file"), Fails(BlockedUrl)),
        case("redirect to ftp://", url(l, "http://127.0.0.1:{port}/to-ftp"), Fails(BlockedUrl)),
        case("redirect to gopher://", url(l, "http://127.0.0.1:{port}/to-gopher"), Fails(BlockedUrl)),
        case("redirect adding credentials", url(l, "http://127.0.0.1:{port}/to-credentials"), Fails(BlockedUrl)),
        case(
            "redirect from an allowed host to a bare IP",
            url(h, "http://images.test:{port}/to-127"),
            Fails(BlockedUrl),
        ),
        case("8 redirects (over 5)", url(l, "http://127.0.0.1:{port}/hop0"), Fails(FetchDenied)),
        case("302 without Location", url(l, "http://127.0.0.1:{port}/no-location"), Fails(FetchDenied)),
        case("302 with an unparsable Location", url(l, "http://127.0.0.1:{port}/bad-location"), Fails(FetchDenied)),
        // ---- hostile servers
        case("Content-Length of 1 TB", url(l, "http://127.0.0.1:{port}/declares-a-terabyte"), Fails(TooLarge)),
        case("endless chunked body", url(l, "http://127.0.0.1:{port}/chunked-forever"), Fails(TooLarge)),
        case("2 MiB response header", url(l, "http://127.0.0.1:{port}/header-bomb"), Fails(FetchFailed)),
        case(
            "body shorter than its Content-Length",
            url(l, "http://127.0.0.1:{port}/truncated-body"),
            Fails(FetchFailed),
        ),
        case("not HTTP at all", url(l, "http://127.0.0.1:{port}/not-http"), Fails(FetchFailed)),
        case("one byte every 100 ms (slowloris)", url(l, "http://127.0.0.1:{port}/slowloris"), Fails(FetchFailed)),
        case("HTTP 500", url(l, "http://127.0.0.1:{port}/status-500"), Fails(FetchFailed)),
        case("HTTP 403", url(l, "http://127.0.0.1:{port}/status-403"), Fails(FetchDenied)),
        case("HTTP 404", url(l, "http://127.0.0.1:{port}/missing"), Fails(FetchNotFound)),
        case(
            "CR LF in the path is not a header",
            url(l, "http://127.0.0.1:{port}/ok.png\r\nX-Injected: 1"),
            Fails(FetchNotFound),
        ),
        case("HTML served as the image", url(l, "http://127.0.0.1:{port}/not-an-image"), Fails(Decode)),
        case("TLS to a plain-HTTP port", url(l, "https://127.0.0.1:{port}/ok.png"), Fails(FetchFailed)),
        // ---- images
        case("zero bytes", img(vec![]), Fails(Decode)),
        case("PNG signature only", img(b"\x89PNG\r\n\x1a\n".to_vec()), Fails(Decode)),
        case(
            "PNG cut in half",
            img({
                let p = png(16, 16);
                p[..p.len() / 2].to_vec()
            }),
            Fails(Decode),
        ),
        case(
            "PNG with a bad CRC",
            img({
                let mut p = png(4, 4);
                p[30] ^= 0xff;
                p
            }),
            Fails(Decode),
        ),
        case(
            "JPEG cut after the header",
            img({
                let j = encode(&rgb8(16, 16, [1, 2, 3]), image::ImageFormat::Jpeg);
                j[..j.len() / 3].to_vec()
            }),
            Fails(Decode),
        ),
        case(
            "GIF cut in half",
            img({
                let g = gif_frames(&[[1, 2, 3, 255]]);
                g[..g.len() / 2].to_vec()
            }),
            Fails(Decode),
        ),
        case("1×1 PNG", img(png(1, 1)), Scored),
        case("0×0 PNG", img(png_claiming(0, 0)), Fails(Decode)),
        case("PNG claiming 100000×100000", img(png_claiming(100_000, 100_000)), Fails(TooLarge)),
        case("PNG claiming 1×40000001 (just over 40 MP)", img(png_claiming(1, 40_000_001)), Fails(TooLarge)),
        case(
            "GIF claiming 65535×65535",
            img(gif_claiming((u16::MAX, u16::MAX), (u16::MAX, u16::MAX))),
            Fails(TooLarge),
        ),
        case("GIF: 4×4 screen, 60000×60000 first frame", img(gif_claiming((4, 4), (60_000, 60_000))), Fails(TooLarge)),
        case("JPEG claiming 65500×65500", img(jpeg_claiming(65_500, 65_500)), Fails(TooLarge)),
        case("BMP claiming 60000×60000", img(bmp_claiming(60_000, 60_000)), Fails(TooLarge)),
        case("BMP claiming 100000×100000 (past BMP's own limit)", img(bmp_claiming(100_000, 100_000)), Fails(Decode)),
        case("BMP claiming negative width", img(bmp_claiming(-4, 4)), Fails(Decode)),
        case("WebP claiming 10000×10000", img(webp_claiming(10_000, 10_000)), Fails(TooLarge)),
        case("21 MB object (over 20 MiB)", img(vec![0u8; (20 << 20) + 1]), Fails(TooLarge)),
        case("non-image bytes", img(b"%PDF-1.7\n1 0 obj <<>> endobj\n".to_vec()), Fails(Decode)),
        case(
            "invalid UTF-8 bytes",
            img(vec![0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xf0, 0x28, 0x8c, 0x28]),
            Fails(Decode),
        ),
        case(
            "SVG (not a raster format)",
            img(br#"<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>"#.to_vec()),
            Fails(Decode),
        ),
        case("TIFF (not built in)", img(b"II*\0\x08\0\0\0\0\0\0\0".to_vec()), Fails(Decode)),
    ];
    c.extend([
        Case {
            name: "animated GIF: the first frame is used",
            input: img(gif_frames(&[[255, 0, 0, 255], [0, 0, 255, 255]])),
            want: Scored,
            check: Some(("red (first frame), no blue (second)", |x| {
                all_near(plane(x, 0), 1.0) && all_near(plane(x, 2), 0.0)
            })),
        },
        Case {
            name: "CMYK JPEG (Adobe, inverted) decodes to its colour",
            input: img(include_bytes!("fixtures/cmyk.jpg").to_vec()),
            want: Scored,
            check: Some(("cyan: no red, full green and blue", |x| {
                all_near(plane(x, 0), 0.0) && all_near(plane(x, 1), 1.0) && all_near(plane(x, 2), 1.0)
            })),
        },
        Case {
            name: "16-bit RGB PNG keeps its scale",
            input: img(sixteen_bit_png()),
            want: Scored,
            check: Some(("65535 → 1, 0 → 0, 32768 → ½", |x| {
                all_near(plane(x, 0), 1.0) && all_near(plane(x, 1), 0.0) && all_near(plane(x, 2), 0.5)
            })),
        },
        Case {
            name: "progressive JPEG",
            input: img(include_bytes!("fixtures/progressive.jpg").to_vec()),
            want: Scored,
            check: Some(("reddish (200, 30, 30)", |x| {
                all_near(plane(x, 0), 200.0 / 255.0) && all_near(plane(x, 1), 30.0 / 255.0)
            })),
        },
    ]);
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

/// The worker's routing of a parse result (see the module docs).
fn parse(body: &str) -> Result<JobMessage, Ran> {
    JobMessage::parse(body).map_err(|e| {
        let outcome = match e.job_id {
            Some(_) => Fails(ErrorKind::InvalidMessage),
            None => DeadLetter,
        };
        (outcome, None, e.message)
    })
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
            match fetchers[net].fetch(&job.url, FETCH_CAP).await {
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
