//! AWS requests counted per API operation.
//!
//! Every adapter counts each request it sends (retries of failed batch entries
//! included) in one shared [`ApiCounters`]; the worker exports the snapshot as
//! `scorefleet_aws_requests_total{api="…"}`, which is how requests per image
//! are measured.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The operations this crate calls, pre-registered so a metric exists (at 0)
/// before its first request and counting is one atomic add.
const KNOWN: [&str; 22] = [
    "ReceiveMessage",
    "SendMessageBatch",
    "DeleteMessageBatch",
    "ChangeMessageVisibilityBatch",
    "CreateQueue",
    "GetQueueUrl",
    "GetQueueAttributes",
    "SetQueueAttributes",
    "UpdateItem",
    "GetItem",
    "BatchGetItem",
    "Query",
    "PutItem",
    "CreateTable",
    "UpdateTable",
    "DescribeTable",
    "UpdateTimeToLive",
    "DescribeTimeToLive",
    "GetObject",
    "PutObject",
    "ListObjectsV2",
    "CreateBucket",
];

/// Request counts by API name; cheap to share (`Arc<ApiCounters>`) and to
/// increment from any task.
#[derive(Debug)]
pub struct ApiCounters {
    known: [AtomicU64; KNOWN.len()],
    /// Names outside [`KNOWN`] (a caller counting its own calls); rare, so a
    /// lock is fine.
    other: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for ApiCounters {
    fn default() -> Self {
        Self { known: std::array::from_fn(|_| AtomicU64::new(0)), other: Mutex::new(BTreeMap::new()) }
    }
}

impl ApiCounters {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one request to `api` (`ReceiveMessage`, `UpdateItem`, …).
    pub fn incr(&self, api: &'static str) {
        self.add(api, 1);
    }

    /// Counts `n` requests to `api`.
    pub fn add(&self, api: &'static str, n: u64) {
        match KNOWN.iter().position(|k| *k == api) {
            Some(i) => {
                self.known[i].fetch_add(n, Ordering::Relaxed);
            }
            None => {
                // A poisoned lock only means another thread panicked mid-add;
                // the map itself is still a valid map.
                let mut other = self.other.lock().unwrap_or_else(|p| p.into_inner());
                *other.entry(api).or_insert(0) += n;
            }
        }
    }

    /// The count for one API (0 if never called).
    pub fn get(&self, api: &str) -> u64 {
        match KNOWN.iter().position(|k| *k == api) {
            Some(i) => self.known[i].load(Ordering::Relaxed),
            None => self.other.lock().unwrap_or_else(|p| p.into_inner()).get(api).copied().unwrap_or(0),
        }
    }

    /// Every API with its count, the pre-registered ones included at 0,
    /// sorted by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = KNOWN.iter().zip(&self.known).map(|(k, v)| (*k, v.load(Ordering::Relaxed))).collect();
        out.extend(self.other.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, *v)));
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// The sum over all APIs.
    pub fn total(&self) -> u64 {
        self.snapshot().iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_and_other_apis() {
        let c = ApiCounters::new();
        c.incr("ReceiveMessage");
        c.add("ReceiveMessage", 2);
        c.incr("Custom");
        assert_eq!(c.get("ReceiveMessage"), 3);
        assert_eq!(c.get("Custom"), 1);
        assert_eq!(c.get("GetObject"), 0);
        let snap = c.snapshot();
        assert!(snap.contains(&("ReceiveMessage", 3)));
        assert!(snap.contains(&("Custom", 1)));
        assert!(snap.contains(&("GetObject", 0)), "pre-registered at zero");
        assert!(snap.windows(2).all(|w| w[0].0 < w[1].0), "sorted, no duplicates");
        assert_eq!(c.total(), 4);
    }
}
