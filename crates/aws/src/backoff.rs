//! Exponential backoff with full jitter, for the retries this crate does
//! itself (failed batch entries, unprocessed keys). The SDK retries whole
//! requests on its own.

use rand::Rng;
use std::time::Duration;

/// How many times, and how patiently, to retry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// Retries after the first try.
    pub retries: u32,
    /// The first delay's upper bound; doubles per retry.
    pub base: Duration,
    /// No delay exceeds this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { retries: 3, base: Duration::from_millis(50), max: Duration::from_secs(2) }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (0-based): uniform in
    /// `[0, min(max, base * 2^retry)]`, so concurrent workers spread out.
    pub fn delay(&self, retry: u32) -> Duration {
        let cap = self.base.saturating_mul(1u32 << retry.min(16)).min(self.max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=cap_ms))
    }

    /// Sleeps before retry number `retry`.
    pub async fn wait(&self, retry: u32) {
        tokio::time::sleep(self.delay(retry)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_growing_cap() {
        let b = Backoff { retries: 5, base: Duration::from_millis(10), max: Duration::from_millis(45) };
        for _ in 0..200 {
            assert!(b.delay(0) <= Duration::from_millis(10));
            assert!(b.delay(1) <= Duration::from_millis(20));
            assert!(b.delay(9) <= Duration::from_millis(45));
            assert!(b.delay(40) <= Duration::from_millis(45), "no overflow on large retry numbers");
        }
    }
}
