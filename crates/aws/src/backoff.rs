//! The workspace's one backoff and one retry helper.
//!
//! Every retry in scorefleet waits [`Backoff::delay`]: exponential from
//! `base`, with jitter, and never longer than `max` (the jitter is applied
//! inside the cap, not after it). [`retry`] is the loop around a fallible
//! call; the caller says which failures are worth another try, which is
//! where retry budgets and time bounds live.

use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay's upper bound; doubles per retry.
    pub base: Duration,
    /// No delay exceeds this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_millis(50), max: Duration::from_secs(2) }
    }
}

impl Backoff {
    /// A backoff from `base`, capped at `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `retry` (0-based): uniform in
    /// `[cap / 2, cap]` with `cap = min(max, base × 2^retry)`. Concurrent
    /// callers spread out, and no delay is much shorter than its step (so
    /// a dead endpoint is never hammered) or longer than `max`.
    pub fn delay(&self, retry: u32) -> Duration {
        let cap = self.base.saturating_mul(1u32 << retry.min(16)).min(self.max);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(cap_us / 2..=cap_us))
    }

    /// Sleeps before retry number `retry`.
    pub async fn wait(&self, retry: u32) {
        tokio::time::sleep(self.delay(retry)).await;
    }
}

/// Runs `call` until it succeeds or fails in a way `again` does not retry.
/// `again` sees the failure and how many retries were already made; between
/// tries the caller waits `backoff.delay(retries)`.
pub async fn retry<T, E, Fut>(
    backoff: Backoff,
    mut again: impl FnMut(&E, u32) -> bool,
    mut call: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut retries = 0;
    loop {
        match call().await {
            Err(e) if again(&e, retries) => {
                backoff.wait(retries).await;
                retries = retries.saturating_add(1);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_half_and_all_of_the_growing_cap() {
        let b = Backoff { base: Duration::from_millis(10), max: Duration::from_millis(45) };
        for _ in 0..200 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(5) && d0 <= Duration::from_millis(10), "{d0:?}");
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(10) && d1 <= Duration::from_millis(20), "{d1:?}");
            assert!(b.delay(9) <= Duration::from_millis(45), "the jitter stays inside the cap");
            assert!(b.delay(40) <= Duration::from_millis(45), "no overflow on large retry numbers");
        }
    }

    #[test]
    fn retry_stops_on_success_on_a_refused_failure_and_at_the_budget() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let fast = Backoff::new(Duration::from_micros(1), Duration::from_micros(1));
        rt.block_on(async {
            let mut calls = 0;
            let r: Result<u32, &str> = retry(
                fast,
                |_, n| n < 5,
                || {
                    calls += 1;
                    let c = calls;
                    async move { if c < 3 { Err("transient") } else { Ok(c) } }
                },
            )
            .await;
            assert_eq!(r, Ok(3));

            let mut calls = 0;
            let r: Result<(), &str> = retry(
                fast,
                |e, _| *e == "transient",
                || {
                    calls += 1;
                    async { Err("permanent") }
                },
            )
            .await;
            assert_eq!((r, calls), (Err("permanent"), 1), "a permanent failure is not retried");

            let mut calls = 0;
            let r: Result<(), &str> = retry(
                fast,
                |_, n| n < 2,
                || {
                    calls += 1;
                    async { Err("transient") }
                },
            )
            .await;
            assert_eq!((r, calls), (Err("transient"), 3), "first try plus two retries");
        });
    }
}
