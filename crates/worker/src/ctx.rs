//! What the port-using stages share: the ports, the settings, the counters,
//! the in-flight registry and the root stop token.

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

/// Shared state of one pipeline run.
pub(crate) struct Ctx<Q, S, O, F, P> {
    pub(crate) ports: Ports<Q, S, O, F, P>,
    pub(crate) settings: Settings,
    pub(crate) model: ModelRef,
    pub(crate) metrics: SharedMetrics,
    pub(crate) registry: Arc<Registry>,
    /// The root token: cancelled by a signal or by the supervisor on a fault.
    pub(crate) stop: CancellationToken,
}
