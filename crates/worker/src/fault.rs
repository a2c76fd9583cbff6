//! Faults injected on purpose, for the tests that check the worker survives
//! (or stops cleanly on) its own bugs. Off unless a hidden flag asks.

use scorefleet_core::error::JobError;
use scorefleet_core::result::{ModelRef, Prediction, Scored};
use scorefleet_core::traits::{Chw, Predictor};

/// A predictor that panics on its `n`th call (`--fault-panic-on-batch`):
/// the supervision test's model bug. With `None` it only passes through.
#[derive(Debug)]
pub struct PanicOnBatch<M> {
    inner: M,
    at: Option<u64>,
    calls: u64,
}

impl<M> PanicOnBatch<M> {
    /// Wraps `inner`; panics on call number `at` (1-based), if set.
    pub fn new(inner: M, at: Option<u64>) -> Self {
        Self { inner, at, calls: 0 }
    }

    /// Counts a call; panics on the chosen one.
    fn count(&mut self) {
        self.calls += 1;
        if self.at == Some(self.calls) {
            panic!("injected fault: the predictor panics on batch {}", self.calls);
        }
    }
}

impl<M: Predictor> Predictor for PanicOnBatch<M> {
    fn model(&self) -> &ModelRef {
        self.inner.model()
    }

    /// images: [batch, channels, height, width], as `inner` takes them.
    fn predict(&mut self, batch: &[Chw], k: usize) -> Result<Vec<Vec<Prediction>>, JobError> {
        self.count();
        self.inner.predict(batch, k)
    }

    /// The inner model's own task (labels, vector or tensors), counted like `predict`.
    fn score(&mut self, batch: &[Chw], k: usize) -> Result<Vec<Scored>, JobError> {
        self.count();
        self.inner.score(batch, k)
    }
}
