//! What the stages share: the pipeline's ports (handed to each stage one by
//! one, so a stage is generic only over the ports it uses), the settings,
//! the counters, the in-flight registry and the root stop token.

use crate::lease::Registry;
use crate::metrics::SharedMetrics;
use crate::settings::Settings;
use scorefleet_core::result::ModelRef;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The pipeline's collaborators.
#[derive(Debug)]
pub struct Ports<Q, S, O, F, P> {
    /// Input queue.
    pub queue: Arc<Q>,
    /// Output queue.
    pub sink: Arc<S>,
    /// Dedup table.
    pub store: Arc<O>,
    /// Image fetcher.
    pub fetcher: Arc<F>,
    /// Decoder (shared by the blocking pool).
    pub preprocessor: Arc<P>,
}

/// Where a claimed job lives: its message in the input queue and its claim
/// in the dedup table. A stage that can give a job back needs both.
#[derive(Debug)]
pub(crate) struct Claims<Q, O> {
    pub(crate) queue: Arc<Q>,
    pub(crate) store: Arc<O>,
}

impl<Q, O> Clone for Claims<Q, O> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone(), store: self.store.clone() }
    }
}

/// Shared state of one pipeline run: no ports, so no port generics.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) settings: Settings,
    pub(crate) model: ModelRef,
    pub(crate) metrics: SharedMetrics,
    pub(crate) registry: Arc<Registry>,
    /// The root token: cancelled by a signal or by the supervisor on a fault.
    pub(crate) stop: CancellationToken,
}
