//! S3: images and model weights ([`ObjectStore`]), plus put and listing.
//!
//! `get` never holds more than `max_bytes` (+ one network chunk): it refuses
//! an object whose Content-Length is over the cap before reading any of it,
//! and it stops reading a body that runs past the cap anyway (a missing or
//! lying Content-Length). Failures are typed per job:
//! `NoSuchKey`/404 → `fetch_not_found`; 403, `NoSuchBucket` and other
//! refusals → `fetch_denied`; 5xx, throttling, timeouts, broken connections →
//! `fetch_failed` (retryable).
//!
//! Listing walks ListObjectsV2 pages (1,000 keys each); [`KeyPages`] hands
//! them out one at a time so a producer never holds a huge listing.

use crate::errors::{classify, error_code, http_status, is_transient, permanent};
use crate::metrics::ApiCounters;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::traits::{ObjectStore, ServiceError};
use std::sync::Arc;

/// S3 as an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    counters: Arc<ApiCounters>,
}

impl S3Store {
    /// A store over `client` (see [`crate::AwsConfig::s3`] for path style).
    pub fn new(client: aws_sdk_s3::Client, counters: Arc<ApiCounters>) -> Self {
        Self { client, counters }
    }

    /// Uploads one object.
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), ServiceError> {
        const OP: &str = "PutObject";
        self.counters.incr(OP);
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify(OP, &e))?;
        Ok(())
    }

    /// Every key under `prefix`, through all ListObjectsV2 pages. For large
    /// listings prefer [`S3Store::list_pages`].
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, ServiceError> {
        let mut pages = self.list_pages(bucket, prefix);
        let mut keys = Vec::new();
        while let Some(page) = pages.next_page().await {
            keys.extend(page?);
        }
        Ok(keys)
    }

    /// The keys under `prefix`, one ListObjectsV2 page at a time.
    pub fn list_pages(&self, bucket: &str, prefix: &str) -> KeyPages {
        KeyPages {
            store: self.clone(),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            page_size: None,
            token: None,
            done: false,
        }
    }
}

/// A ListObjectsV2 walk, one page per [`KeyPages::next_page`].
#[derive(Debug)]
pub struct KeyPages {
    store: S3Store,
    bucket: String,
    prefix: String,
    /// MaxKeys per request; `None` leaves the service's default (1,000).
    page_size: Option<i32>,
    /// Where the next page starts; `None` before the first page.
    token: Option<String>,
    done: bool,
}

impl KeyPages {
    /// Asks for at most `n` keys per page (S3 caps it at 1,000).
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = Some(n.clamp(1, 1000) as i32);
        self
    }

    /// The next page of keys, `None` once the listing is exhausted. After an
    /// error the same page may be asked for again.
    pub async fn next_page(&mut self) -> Option<Result<Vec<String>, ServiceError>> {
        const OP: &str = "ListObjectsV2";
        if self.done {
            return None;
        }
        self.store.counters.incr(OP);
        let res = self
            .store
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_max_keys(self.page_size)
            .set_continuation_token(self.token.clone())
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            Err(e) => return Some(Err(classify(OP, &e))),
        };
        let keys = out.contents.unwrap_or_default().into_iter().filter_map(|o| o.key).collect();
        match (out.is_truncated.unwrap_or(false), out.next_continuation_token) {
            (true, Some(token)) => self.token = Some(token),
            (true, None) => {
                // Without a token the walk cannot go on; stopping here would
                // silently lose keys.
                self.done = true;
                return Some(Err(permanent(OP, "truncated listing without a continuation token")));
            }
            (false, _) => self.done = true,
        }
        Some(Ok(keys))
    }
}

impl ObjectStore for S3Store {
    async fn get(&self, bucket: &str, key: &str, max_bytes: u64) -> Result<Vec<u8>, JobError> {
        self.counters.incr("GetObject");
        let out =
            self.client.get_object().bucket(bucket).key(key).send().await.map_err(|e| get_error(bucket, key, &e))?;
        let declared = out.content_length.and_then(|n| u64::try_from(n).ok());
        if let Some(len) = declared.filter(|&len| len > max_bytes) {
            // Dropping the body closes the connection without reading it.
            return Err(JobError::new(
                ErrorKind::TooLarge,
                format!("s3://{bucket}/{key} is {len} bytes, limit {max_bytes}"),
            ));
        }
        read_capped(out.body, max_bytes, declared.unwrap_or(0)).await.map_err(|e| match e.kind {
            ErrorKind::TooLarge | ErrorKind::FetchFailed => {
                JobError::new(e.kind, format!("s3://{bucket}/{key}: {}", e.message))
            }
            _ => e,
        })
    }
}

/// Reads a body, giving up with `too_large` as soon as it passes `max_bytes`.
async fn read_capped(mut body: ByteStream, max_bytes: u64, size_hint: u64) -> Result<Vec<u8>, JobError> {
    let mut buf = Vec::with_capacity(usize::try_from(size_hint.min(max_bytes)).unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| JobError::new(ErrorKind::FetchFailed, format!("reading the body: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > max_bytes {
            return Err(JobError::new(ErrorKind::TooLarge, format!("body passes the limit of {max_bytes} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A failed GetObject as a job failure.
fn get_error(bucket: &str, key: &str, e: &SdkError<GetObjectError>) -> JobError {
    let detail = format!("s3://{bucket}/{key}: {}", crate::errors::describe(e));
    if let SdkError::ServiceError(ctx) = e
        && matches!(ctx.err(), GetObjectError::NoSuchKey(_))
    {
        return JobError::new(ErrorKind::FetchNotFound, detail);
    }
    let kind = match (error_code(e), http_status(e)) {
        (Some("NoSuchKey"), _) => ErrorKind::FetchNotFound,
        // A missing bucket is a configuration problem, not a missing image.
        (Some("NoSuchBucket" | "AccessDenied" | "AllAccessDisabled" | "InvalidObjectState"), _) => {
            ErrorKind::FetchDenied
        }
        _ if is_transient(e) => ErrorKind::FetchFailed,
        (_, Some(404 | 410)) => ErrorKind::FetchNotFound,
        // 403, 400 (bad key or bucket name), 301 (wrong region), …: retrying
        // the same request cannot help.
        _ => ErrorKind::FetchDenied,
    };
    JobError::new(kind, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_capped_stops_past_the_cap_whatever_the_declared_length() {
        let body = || ByteStream::from(vec![7u8; 100]);
        assert_eq!(read_capped(body(), 100, 0).await.map(|b| b.len()), Ok(100));
        assert_eq!(read_capped(body(), 1000, 100).await.map(|b| b.len()), Ok(100));
        let err = read_capped(body(), 99, 0).await.expect_err("over the cap");
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert_eq!(read_capped(ByteStream::from(Vec::new()), 0, 0).await, Ok(Vec::new()));
    }
}
