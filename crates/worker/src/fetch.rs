//! Fetching images by job URL.
//!
//! `s3://` goes through the S3 API ([`ObjectStore`], byte cap enforced by the
//! store, optional bucket allowlist). `https://`/`http://` go through
//! [`http::HttpFetcher`], behind the SSRF guard of [`ssrf`]: loopback,
//! private, link-local, multicast, unspecified and reserved addresses are
//! refused (`blocked_url`) on the literal host, on every DNS answer, on every
//! redirect hop and on the address actually connected to.

pub mod http;
pub mod ssrf;
pub(crate) mod stage;

use self::http::{HttpFetcher, Resolve, SystemResolver};
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::job::JobUrl;
use scorefleet_core::traits::ObjectStore;
use std::future::Future;

/// Gets the bytes behind a job URL.
pub trait Fetcher: Send + Sync + 'static {
    /// The whole object, at most `max_bytes` (else `too_large`).
    fn fetch(&self, url: &JobUrl, max_bytes: u64) -> impl Future<Output = Result<Vec<u8>, JobError>> + Send;
}

/// The production fetcher.
#[derive(Debug)]
pub struct UrlFetcher<S, R = SystemResolver> {
    s3: S,
    /// When set, only these buckets may be read: a worker fleet scoring one
    /// customer's archive should not be steerable to another bucket its role
    /// can read.
    allow_buckets: Option<Vec<String>>,
    http: HttpFetcher<R>,
}

impl<S: ObjectStore, R: Resolve> UrlFetcher<S, R> {
    /// A fetcher over an object store, optionally limited to some buckets,
    /// and an HTTP client with its guard.
    pub fn new(s3: S, allow_buckets: Option<Vec<String>>, http: HttpFetcher<R>) -> Self {
        Self { s3, allow_buckets, http }
    }
}

impl<S: ObjectStore, R: Resolve> Fetcher for UrlFetcher<S, R> {
    async fn fetch(&self, url: &JobUrl, max_bytes: u64) -> Result<Vec<u8>, JobError> {
        match url {
            JobUrl::S3 { bucket, key } => {
                if let Some(allowed) = &self.allow_buckets
                    && !allowed.iter().any(|b| b == bucket)
                {
                    return Err(JobError::new(
                        ErrorKind::BlockedUrl,
                        format!("bucket {bucket} is not in the allowlist"),
                    ));
                }
                self.s3.get(bucket, key, max_bytes).await
            }
            JobUrl::Http(u) => self.http.fetch(u, max_bytes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::http::Timeouts;
    use super::ssrf::Guard;
    use super::*;

    struct Store;
    impl ObjectStore for Store {
        async fn get(&self, bucket: &str, key: &str, _max: u64) -> Result<Vec<u8>, JobError> {
            Ok(format!("{bucket}/{key}").into_bytes())
        }
    }

    #[tokio::test]
    async fn bucket_allowlist_and_guarded_http_are_typed() {
        let f = UrlFetcher::new(
            Store,
            Some(vec!["ok-bucket".into()]),
            HttpFetcher::new(Guard::default(), Timeouts::default()),
        );
        let ok = JobUrl::parse("s3://ok-bucket/a.png").expect("url");
        assert_eq!(f.fetch(&ok, 10).await.expect("allowed"), b"ok-bucket/a.png");
        let other = JobUrl::parse("s3://other-bucket/a.png").expect("url");
        assert_eq!(f.fetch(&other, 10).await.expect_err("blocked").kind, ErrorKind::BlockedUrl);
        let metadata = JobUrl::parse("http://169.254.169.254/latest/meta-data/").expect("url");
        assert_eq!(f.fetch(&metadata, 10).await.expect_err("ssrf").kind, ErrorKind::BlockedUrl);
    }
}
