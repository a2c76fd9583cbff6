//! The job message on the input queue, and its strict parser.
//!
//! One image per job (`v: 1`):
//!
//! ```json
//! {"v":1,"job_id":"…","url":"s3://bucket/key","run_id":"nightly-2026-11-26","attrs":{…}}
//! ```
//!
//! or several (`v: 2`, `enqueue --images-per-job N`), each with its own
//! `attrs`, answered by one result that carries one entry per image:
//!
//! ```json
//! {"v":2,"job_id":"…","run_id":"…","images":[{"url":"s3://bucket/a","attrs":{…}},{"url":"s3://bucket/b"}]}
//! ```
//!
//! Parsing never panics and never guesses: an unknown `v`, a missing or
//! unknown field, a bad `job_id`, a scheme other than `s3`/`https`/`http`,
//! credentials in a URL or oversized `attrs` are each a [`ParseError`]. When
//! the body is broken but a valid `job_id` can still be read from it,
//! [`ParseError::job_id`] carries it, so the worker can answer with a typed
//! `invalid_message` result instead of leaving the message to the DLQ.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The message version of a one-image job.
pub const JOB_VERSION: u32 = 1;
/// The message version of a job of several images.
pub const JOB_VERSION_MULTI: u32 = 2;
/// Most images in one job.
pub const MAX_IMAGES_PER_JOB: usize = 100;
/// Longest accepted `job_id` and `run_id`, in characters.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Largest accepted `attrs`, serialised as compact JSON, in bytes.
pub const MAX_ATTRS_BYTES: usize = 4096;
/// Largest accepted message body, in bytes: a quarter of SQS's 256 KiB
/// SendMessageBatch payload, so a batch of ten typical jobs always fits
/// (the producer packs batches by size as well as count).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A validated job identifier: 1 to 128 printable ASCII characters, no spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// Validates `s` as a job id.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        validate_id("job_id", s)?;
        Ok(Self(s.to_owned()))
    }

    /// The default job id: a stable hash of `(run_id, url)`, so re-enqueueing
    /// the same run produces the same ids and the fleet skips finished jobs.
    ///
    /// SHA-256 over `run_id`, a NUL separator (which neither may contain, so
    /// distinct pairs never collide by concatenation) and `url`, truncated to
    /// 128 bits and written as 32 hex characters.
    pub fn derive(run_id: &str, url: &str) -> Self {
        let mut h = Sha256::new();
        h.update(run_id.as_bytes());
        h.update([0u8]);
        h.update(url.as_bytes());
        let digest = h.finalize();
        Self(hex::encode(&digest[..16]))
    }

    /// The default id of a job of several images: SHA-256 over `run_id`, a
    /// NUL, and each URL after its length (8 bytes, little-endian), so
    /// distinct lists never collide by concatenation, truncated to 128 bits
    /// as 32 hex characters. The id depends on the grouping: a rerun is
    /// skipped only when it packs the same URLs in the same order.
    pub fn derive_multi<'a>(run_id: &str, urls: impl IntoIterator<Item = &'a str>) -> Self {
        let mut h = Sha256::new();
        h.update(run_id.as_bytes());
        h.update([0u8]);
        for url in urls {
            h.update((url.len() as u64).to_le_bytes());
            h.update(url.as_bytes());
        }
        let digest = h.finalize();
        Self(hex::encode(&digest[..16]))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        JobId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a job's image lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JobUrl {
    /// `s3://bucket/key`, fetched through the S3 API.
    S3 {
        /// Bucket name (validated against S3's naming rules).
        bucket: String,
        /// Object key (non-empty, as written after the first `/`).
        key: String,
    },
    /// `https://…` or `http://…`, fetched through the HTTP client (which
    /// applies the SSRF guard at connect time).
    Http(url::Url),
}

impl JobUrl {
    /// Parses and validates a job URL.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.len() > MAX_URL_LEN {
            return Err(ParseError::new(ParseErrorKind::BadUrl, format!("url is longer than {MAX_URL_LEN} bytes")));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, key) =
                rest.split_once('/').ok_or_else(|| ParseError::new(ParseErrorKind::BadUrl, "s3 url has no key"))?;
            validate_bucket(bucket)?;
            if key.is_empty() {
                return Err(ParseError::new(ParseErrorKind::BadUrl, "s3 url has an empty key"));
            }
            if key.len() > 1024 || key.chars().any(char::is_control) {
                return Err(ParseError::new(ParseErrorKind::BadUrl, "s3 key is too long or has control characters"));
            }
            return Ok(JobUrl::S3 { bucket: bucket.to_owned(), key: key.to_owned() });
        }
        let url =
            url::Url::parse(s).map_err(|e| ParseError::new(ParseErrorKind::BadUrl, format!("invalid url: {e}")))?;
        match url.scheme() {
            "https" | "http" => {}
            other => {
                return Err(ParseError::new(
                    ParseErrorKind::UnsupportedScheme,
                    format!("scheme `{other}` is not supported (use s3, https or http)"),
                ));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ParseError::new(ParseErrorKind::BadUrl, "credentials in urls are refused"));
        }
        if url.host().is_none() {
            return Err(ParseError::new(ParseErrorKind::BadUrl, "url has no host"));
        }
        Ok(JobUrl::Http(url))
    }
}

impl fmt::Display for JobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobUrl::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            JobUrl::Http(u) => f.write_str(u.as_str()),
        }
    }
}

/// One image of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Where the image is.
    pub url: JobUrl,
    /// The URL exactly as the producer wrote it (echoed in results).
    pub url_raw: String,
    /// Caller bookkeeping, passed through to the image's result untouched.
    pub attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Image {
    /// Validates a URL and its attributes.
    pub fn new(url: &str, attrs: Option<serde_json::Map<String, serde_json::Value>>) -> Result<Self, ParseError> {
        let parsed = JobUrl::parse(url)?;
        if let Some(a) = &attrs {
            check_attrs(a)?;
        }
        Ok(Self { url: parsed, url_raw: url.to_owned(), attrs })
    }
}

/// A parsed, validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMessage {
    /// Unique per job; the dedup key.
    pub job_id: JobId,
    /// The run this job belongs to (nightly-2026-11-26, …).
    pub run_id: String,
    /// Its images: exactly one in a `v: 1` job, 1 to
    /// [`MAX_IMAGES_PER_JOB`] in a `v: 2` job.
    pub images: Vec<Image>,
    /// Whether it is a `v: 2` job, answered with one entry per image.
    pub multi: bool,
}

#[derive(Serialize)]
struct WireOut<'a> {
    v: u32,
    job_id: &'a JobId,
    url: &'a str,
    run_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attrs: &'a Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize)]
struct WireOutMulti<'a> {
    v: u32,
    job_id: &'a JobId,
    run_id: &'a str,
    images: Vec<ImageOut<'a>>,
}

#[derive(Serialize)]
struct ImageOut<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attrs: &'a Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireV1 {
    #[serde(rename = "v")]
    _v: u32,
    job_id: String,
    url: String,
    run_id: String,
    #[serde(default)]
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireV2 {
    #[serde(rename = "v")]
    _v: u32,
    job_id: String,
    run_id: String,
    images: Vec<WireImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireImage {
    url: String,
    #[serde(default)]
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Reads just `v` and `job_id`, ignoring everything else, to classify a body
/// and to recover a job id from a message that fails full validation.
#[derive(Deserialize)]
struct Probe {
    v: Option<serde_json::Value>,
    job_id: Option<serde_json::Value>,
}

impl JobMessage {
    /// Builds a one-image job, deriving the id from `(run_id, url)` when none
    /// is given.
    pub fn new(url: &str, run_id: &str, job_id: Option<JobId>) -> Result<Self, ParseError> {
        validate_id("run_id", run_id)?;
        let image = Image::new(url, None)?;
        Ok(Self {
            job_id: job_id.unwrap_or_else(|| JobId::derive(run_id, url)),
            run_id: run_id.to_owned(),
            images: vec![image],
            multi: false,
        })
    }

    /// Builds a job of several images (`v: 2`), deriving the id from the run
    /// and the URLs in order ([`JobId::derive_multi`]) when none is given.
    pub fn multi(run_id: &str, images: Vec<Image>, job_id: Option<JobId>) -> Result<Self, ParseError> {
        validate_id("run_id", run_id)?;
        if images.is_empty() {
            return Err(ParseError::new(ParseErrorKind::Malformed, "`images` is empty"));
        }
        if images.len() > MAX_IMAGES_PER_JOB {
            return Err(ParseError::new(
                ParseErrorKind::TooLarge,
                format!("{} images, limit {MAX_IMAGES_PER_JOB} per job", images.len()),
            ));
        }
        let job_id = job_id.unwrap_or_else(|| JobId::derive_multi(run_id, images.iter().map(|i| i.url_raw.as_str())));
        Ok(Self { job_id, run_id: run_id.to_owned(), images, multi: true })
    }

    /// Attaches caller attributes to a one-image job's image, checking their
    /// size.
    pub fn with_attrs(mut self, attrs: serde_json::Map<String, serde_json::Value>) -> Result<Self, ParseError> {
        check_attrs(&attrs)?;
        if let Some(image) = self.images.first_mut() {
            image.attrs = Some(attrs);
        }
        Ok(self)
    }

    /// The message version this job is written as.
    pub fn version(&self) -> u32 {
        if self.multi { JOB_VERSION_MULTI } else { JOB_VERSION }
    }

    /// The wire form (compact JSON).
    pub fn to_json(&self) -> String {
        // Serialising plain strings and JSON maps cannot fail.
        match (self.multi, self.images.first()) {
            (false, Some(image)) => serde_json::to_string(&WireOut {
                v: JOB_VERSION,
                job_id: &self.job_id,
                url: &image.url_raw,
                run_id: &self.run_id,
                attrs: &image.attrs,
            }),
            _ => serde_json::to_string(&WireOutMulti {
                v: JOB_VERSION_MULTI,
                job_id: &self.job_id,
                run_id: &self.run_id,
                images: self.images.iter().map(|i| ImageOut { url: &i.url_raw, attrs: &i.attrs }).collect(),
            }),
        }
        .unwrap_or_default()
    }

    /// Parses a message body strictly. Never panics, whatever the input.
    pub fn parse(body: &str) -> Result<Self, ParseError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(ParseError::new(
                ParseErrorKind::TooLarge,
                format!("body is {} bytes, limit {MAX_BODY_BYTES}", body.len()),
            ));
        }
        let probe: Probe = serde_json::from_str(body)
            .map_err(|e| ParseError::new(ParseErrorKind::Malformed, format!("not a JSON object: {e}")))?;
        // Recover the id early so every later error can carry it.
        let recovered = match &probe.job_id {
            Some(serde_json::Value::String(s)) if validate_id("job_id", s).is_ok() => Some(JobId(s.clone())),
            _ => None,
        };
        let with_id = |e: ParseError| e.with_job_id(recovered.clone());
        let multi = match &probe.v {
            None => return Err(with_id(ParseError::new(ParseErrorKind::MissingField, "missing field `v`"))),
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(JOB_VERSION)) => false,
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(JOB_VERSION_MULTI)) => true,
            Some(other) => {
                return Err(with_id(ParseError::new(
                    ParseErrorKind::UnsupportedVersion,
                    format!(
                        "unsupported message version {other}; this worker reads v{JOB_VERSION} and v{JOB_VERSION_MULTI}"
                    ),
                )));
            }
        };
        let wire_error = |e: serde_json::Error| {
            let msg = e.to_string();
            let kind =
                if msg.starts_with("missing field") { ParseErrorKind::MissingField } else { ParseErrorKind::Malformed };
            with_id(ParseError::new(kind, msg))
        };
        if multi {
            let wire: WireV2 = serde_json::from_str(body).map_err(wire_error)?;
            let job_id = JobId::parse(&wire.job_id)?;
            let build = || -> Result<Self, ParseError> {
                if wire.images.len() > MAX_IMAGES_PER_JOB {
                    return Err(ParseError::new(
                        ParseErrorKind::TooLarge,
                        format!("{} images, limit {MAX_IMAGES_PER_JOB} per job", wire.images.len()),
                    ));
                }
                let images = wire
                    .images
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        Image::new(&w.url, w.attrs.clone())
                            .map_err(|e| ParseError { message: format!("images[{i}]: {}", e.message), ..e })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                JobMessage::multi(&wire.run_id, images, Some(job_id.clone()))
            };
            return build().map_err(|e| e.with_job_id(Some(job_id.clone())));
        }
        let wire: WireV1 = serde_json::from_str(body).map_err(wire_error)?;
        let job_id = JobId::parse(&wire.job_id)?;
        let build = || -> Result<Self, ParseError> {
            let mut job = JobMessage::new(&wire.url, &wire.run_id, Some(job_id.clone()))?;
            if let Some(attrs) = wire.attrs.clone() {
                job = job.with_attrs(attrs)?;
            }
            Ok(job)
        };
        build().map_err(|e| e.with_job_id(Some(job_id.clone())))
    }
}

/// What class of parse failure this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Not JSON, not an object, wrong types, unknown or duplicate fields.
    Malformed,
    /// A required field is absent.
    MissingField,
    /// `v` is not a version this build reads.
    UnsupportedVersion,
    /// `job_id` or `run_id` is empty, too long or not printable.
    BadId,
    /// The URL is malformed, has credentials, or has no host/key.
    BadUrl,
    /// The URL scheme is not `s3`, `https` or `http`.
    UnsupportedScheme,
    /// `attrs` or the whole body is over its size limit.
    TooLarge,
}

/// Why a message is not a valid job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job message ({kind:?}): {message}")]
pub struct ParseError {
    /// What class of failure.
    pub kind: ParseErrorKind,
    /// Details for people.
    pub message: String,
    /// The job id, when one could be recovered from the broken body.
    pub job_id: Option<JobId>,
}

impl ParseError {
    fn new(kind: ParseErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), job_id: None }
    }

    fn with_job_id(mut self, id: Option<JobId>) -> Self {
        if self.job_id.is_none() {
            self.job_id = id;
        }
        self
    }
}

fn validate_id(field: &str, s: &str) -> Result<(), ParseError> {
    if s.is_empty() {
        return Err(ParseError::new(ParseErrorKind::BadId, format!("`{field}` is empty")));
    }
    if s.len() > MAX_ID_LEN {
        return Err(ParseError::new(
            ParseErrorKind::BadId,
            format!("`{field}` is longer than {MAX_ID_LEN} characters"),
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::new(
            ParseErrorKind::BadId,
            format!("`{field}` must be printable ASCII without spaces"),
        ));
    }
    Ok(())
}

fn validate_bucket(b: &str) -> Result<(), ParseError> {
    let ok_len = (3..=63).contains(&b.len());
    let ok_chars = b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    let ok_ends = b.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(ParseError::new(ParseErrorKind::BadUrl, format!("`{}` is not a valid S3 bucket name", b.escape_debug())))
    }
}

fn check_attrs(attrs: &serde_json::Map<String, serde_json::Value>) -> Result<(), ParseError> {
    let size = serde_json::to_vec(attrs).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_ATTRS_BYTES {
        return Err(ParseError::new(
            ParseErrorKind::TooLarge,
            format!("attrs is {size} bytes, limit {MAX_ATTRS_BYTES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"v":1,"job_id":"j-1","url":"s3://my-bucket/a/b.png","run_id":"r1","attrs":{"label":7}}"#;

    #[test]
    fn parses_a_valid_job_and_round_trips() {
        let job = JobMessage::parse(GOOD).expect("valid");
        assert_eq!(job.job_id.as_str(), "j-1");
        assert_eq!(job.images[0].url, JobUrl::S3 { bucket: "my-bucket".into(), key: "a/b.png".into() });
        assert_eq!(job.run_id, "r1");
        assert_eq!(job.images[0].attrs.as_ref().and_then(|a| a.get("label")), Some(&serde_json::json!(7)));
        assert_eq!((job.images.len(), job.multi, job.version()), (1, false, 1));
        assert_eq!(job.to_json(), GOOD, "a one-image job keeps the v1 wire form");
        assert_eq!(JobMessage::parse(&job.to_json()).expect("round trip"), job);
    }

    #[test]
    fn http_and_https_are_accepted() {
        for u in ["https://example.com/x.png", "http://example.com:8080/x.jpg?sig=1"] {
            let job = JobMessage::new(u, "r", None).expect(u);
            assert!(matches!(job.images[0].url, JobUrl::Http(_)));
            assert_eq!(job.images[0].url_raw, u);
        }
    }

    fn kind_of(body: &str) -> ParseErrorKind {
        JobMessage::parse(body).expect_err(body).kind
    }

    #[test]
    fn each_bad_message_gets_its_typed_error() {
        use ParseErrorKind::*;
        let long_id = "x".repeat(MAX_ID_LEN + 1);
        let big_attrs = format!(
            r#"{{"v":1,"job_id":"a","url":"s3://bkt/k","run_id":"r","attrs":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_ATTRS_BYTES)
        );
        let cases: Vec<(String, ParseErrorKind)> = vec![
            ("".into(), Malformed),
            ("not json".into(), Malformed),
            ("[1,2]".into(), Malformed),
            (r#"{"job_id":"a","url":"s3://bkt/k","run_id":"r"}"#.into(), MissingField),
            (r#"{"v":3,"job_id":"a","url":"s3://bkt/k","run_id":"r"}"#.into(), UnsupportedVersion),
            (r#"{"v":2,"job_id":"a","url":"s3://bkt/k","run_id":"r"}"#.into(), Malformed),
            (r#"{"v":2,"job_id":"a","run_id":"r"}"#.into(), MissingField),
            (r#"{"v":2,"job_id":"a","run_id":"r","images":[]}"#.into(), Malformed),
            (r#"{"v":2,"job_id":"a","run_id":"r","images":["s3://bkt/k"]}"#.into(), Malformed),
            (r#"{"v":2,"job_id":"a","run_id":"r","images":[{"url":"s3://bkt/k","x":1}]}"#.into(), Malformed),
            (
                r#"{"v":2,"job_id":"a","run_id":"r","images":[{"url":"s3://bkt/k"},{"url":"ftp://h/k"}]}"#.into(),
                UnsupportedScheme,
            ),
            (r#"{"v":2,"job_id":"a","run_id":"","images":[{"url":"s3://bkt/k"}]}"#.into(), BadId),
            (
                format!(
                    r#"{{"v":2,"job_id":"a","run_id":"r","images":[{}]}}"#,
                    vec![r#"{"url":"s3://bkt/k"}"#; MAX_IMAGES_PER_JOB + 1].join(",")
                ),
                TooLarge,
            ),
            (r#"{"v":"1","job_id":"a","url":"s3://bkt/k","run_id":"r"}"#.into(), UnsupportedVersion),
            (r#"{"v":1.5,"job_id":"a","url":"s3://bkt/k","run_id":"r"}"#.into(), UnsupportedVersion),
            (r#"{"v":1,"url":"s3://bkt/k","run_id":"r"}"#.into(), MissingField),
            (r#"{"v":1,"job_id":"a","run_id":"r"}"#.into(), MissingField),
            (r#"{"v":1,"job_id":"a","url":"s3://bkt/k"}"#.into(), MissingField),
            (r#"{"v":1,"job_id":"","url":"s3://bkt/k","run_id":"r"}"#.into(), BadId),
            (format!(r#"{{"v":1,"job_id":"{long_id}","url":"s3://bkt/k","run_id":"r"}}"#), BadId),
            (r#"{"v":1,"job_id":"a b","url":"s3://bkt/k","run_id":"r"}"#.into(), BadId),
            (r#"{"v":1,"job_id":"a\u0007","url":"s3://bkt/k","run_id":"r"}"#.into(), BadId),
            (r#"{"v":1,"job_id":7,"url":"s3://bkt/k","run_id":"r"}"#.into(), Malformed),
            (r#"{"v":1,"job_id":"a","url":"ftp://h/k","run_id":"r"}"#.into(), UnsupportedScheme),
            (r#"{"v":1,"job_id":"a","url":"file:///etc/passwd","run_id":"r"}"#.into(), UnsupportedScheme),
            (r#"{"v":1,"job_id":"a","url":"https://u:p@h/k","run_id":"r"}"#.into(), BadUrl),
            (r#"{"v":1,"job_id":"a","url":"s3://bkt","run_id":"r"}"#.into(), BadUrl),
            (r#"{"v":1,"job_id":"a","url":"s3://bkt/","run_id":"r"}"#.into(), BadUrl),
            (r#"{"v":1,"job_id":"a","url":"s3://Bad_Bucket/k","run_id":"r"}"#.into(), BadUrl),
            (r#"{"v":1,"job_id":"a","url":"not a url","run_id":"r"}"#.into(), BadUrl),
            (r#"{"v":1,"job_id":"a","url":"s3://bkt/k","run_id":"r","extra":1}"#.into(), Malformed),
            (r#"{"v":1,"job_id":"a","job_id":"b","url":"s3://bkt/k","run_id":"r"}"#.into(), Malformed),
            (r#"{"v":1,"job_id":"a","url":"s3://bkt/k","run_id":"r","attrs":[1]}"#.into(), Malformed),
            (big_attrs, TooLarge),
            (
                format!(
                    r#"{{"v":1,"job_id":"a","url":"s3://bkt/k","run_id":"r","attrs":{{"x":"{}"}}}}"#,
                    "z".repeat(MAX_BODY_BYTES)
                ),
                TooLarge,
            ),
            (format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)), Malformed),
        ];
        for (body, want) in cases {
            assert_eq!(kind_of(&body), want, "body: {}", &body[..body.len().min(120)]);
        }
    }

    #[test]
    fn a_recoverable_job_id_travels_with_the_error() {
        let err =
            JobMessage::parse(r#"{"v":1,"job_id":"keep-me","url":"ftp://x/y","run_id":"r"}"#).expect_err("bad scheme");
        assert_eq!(err.job_id.as_ref().map(JobId::as_str), Some("keep-me"));
        let err = JobMessage::parse(r#"{"v":9,"job_id":"keep-me"}"#).expect_err("bad version");
        assert_eq!(err.job_id.as_ref().map(JobId::as_str), Some("keep-me"));
        let err = JobMessage::parse(r#"{"v":1,"job_id":"","url":"s3://bkt/k","run_id":"r"}"#).expect_err("empty id");
        assert_eq!(err.job_id, None);
    }

    #[test]
    fn a_job_of_several_images_round_trips_and_names_its_bad_image() {
        let body = r#"{"v":2,"job_id":"j-2","run_id":"r","images":[{"url":"s3://bkt/a.png","attrs":{"label":"1"}},{"url":"https://example.com/b.jpg"}]}"#;
        let job = JobMessage::parse(body).expect("valid");
        assert_eq!((job.images.len(), job.multi, job.version()), (2, true, JOB_VERSION_MULTI));
        assert_eq!(job.images[0].attrs.as_ref().and_then(|a| a.get("label")), Some(&serde_json::json!("1")));
        assert_eq!(job.images[1].attrs, None);
        assert_eq!(job.to_json(), body);
        assert_eq!(JobMessage::parse(&job.to_json()).expect("round trip"), job);
        let err = JobMessage::parse(
            r#"{"v":2,"job_id":"keep","run_id":"r","images":[{"url":"s3://bkt/a"},{"url":"s3://bkt/"}]}"#,
        )
        .expect_err("second image has no key");
        assert!(err.message.starts_with("images[1]: "), "{}", err.message);
        assert_eq!(err.job_id.as_ref().map(JobId::as_str), Some("keep"));
        // A one-image list is still a v2 job: its result has the v2 shape.
        let one = JobMessage::multi("r", vec![Image::new("s3://bkt/a", None).expect("image")], None).expect("job");
        assert!(one.to_json().starts_with(r#"{"v":2,"#));
    }

    #[test]
    fn multi_image_ids_depend_on_the_urls_and_their_order() {
        let a = JobId::derive_multi("run", ["s3://b/1", "s3://b/2"]);
        assert_eq!(a, JobId::derive_multi("run", ["s3://b/1", "s3://b/2"]));
        // Pinned: changing the derivation would re-run every finished job.
        // The value is SHA-256(b"run\0" + u64le(8) + b"s3://b/1" + u64le(8) + b"s3://b/2")[..16].
        assert_eq!(a.as_str(), "f3fba0a00bf7bd9a9867b6a7066d11a4");
        assert_ne!(a, JobId::derive_multi("run", ["s3://b/2", "s3://b/1"]));
        assert_ne!(a, JobId::derive_multi("run2", ["s3://b/1", "s3://b/2"]));
        assert_ne!(JobId::derive_multi("r", ["ab", "c"]), JobId::derive_multi("r", ["a", "bc"]));
        assert_ne!(JobId::derive_multi("r", ["s3://b/1"]), JobId::derive("r", "s3://b/1"));
        JobId::parse(a.as_str()).expect("derived ids are valid ids");
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = JobId::derive("run", "s3://b/k");
        assert_eq!(a, JobId::derive("run", "s3://b/k"));
        // Pinned: changing the derivation would re-run every finished job.
        assert_eq!(a.as_str(), "aa2ac06c3d4167338e97b6467694e058");
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, JobId::derive("run2", "s3://b/k"));
        assert_ne!(a, JobId::derive("run", "s3://b/k2"));
        // No ambiguity from concatenation.
        assert_ne!(JobId::derive("ab", "c"), JobId::derive("a", "bc"));
        JobId::parse(a.as_str()).expect("derived ids are valid ids");
    }

    #[test]
    fn attrs_numbers_come_back_exactly() {
        // Found by fuzz/job_message: serde_json's default float parsing can be
        // one unit in the last place off, so the integer below (past u64)
        // came back from the job's own wire form as a different f64 and the
        // result's attrs were not the job's.
        let body = r#"{"v":1,"job_id":"a","url":"s3://bkt/k","run_id":"r",
            "attrs":{"big":118446744073709551616,"f":0.1,"max":1.7976931348623157e308,"tiny":5e-324}}"#;
        let job = JobMessage::parse(body).expect("valid");
        assert_eq!(JobMessage::parse(&job.to_json()).expect("round trip"), job);
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in ".{0,300}") {
            let _ = JobMessage::parse(&body);
        }

        #[test]
        fn attrs_floats_round_trip(
            x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL,
            text in "[1-9][0-9]{0,24}",
        ) {
            // Both a value serde_json writes itself and a decimal as a person
            // writes it must come back from the job's wire form unchanged.
            let attrs = format!(r#"{{"x":{x:e},"t":{text}}}"#);
            let body = format!(r#"{{"v":1,"job_id":"a","url":"s3://bkt/k","run_id":"r","attrs":{attrs}}}"#);
            let job = JobMessage::parse(&body).expect("valid");
            prop_assert_eq!(JobMessage::parse(&job.to_json()).expect("round trip"), job);
        }

        #[test]
        fn valid_jobs_round_trip(id in "[!-~]{1,128}", run in "[a-z0-9-]{1,40}", key in "[a-zA-Z0-9/._-]{1,60}") {
            let url = format!("s3://bucket-1/{key}");
            let job = JobMessage::new(&url, &run, Some(JobId::parse(&id).expect("graphic ascii"))).expect("valid");
            prop_assert_eq!(JobMessage::parse(&job.to_json()).expect("round trip"), job);
        }

        #[test]
        fn valid_multi_image_jobs_round_trip(run in "[a-z0-9-]{1,40}", keys in proptest::collection::vec("[a-zA-Z0-9/._-]{1,60}", 1..12)) {
            let images: Vec<Image> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let attrs = (i % 2 == 0).then(|| serde_json::Map::from_iter([("i".to_owned(), serde_json::json!(i))]));
                    Image::new(&format!("s3://bucket-1/{k}"), attrs).expect("valid")
                })
                .collect();
            let job = JobMessage::multi(&run, images, None).expect("valid");
            prop_assert_eq!(JobMessage::parse(&job.to_json()).expect("round trip"), job);
        }
    }
}
