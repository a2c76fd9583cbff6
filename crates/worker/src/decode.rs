//! Decode and preprocess on tokio's blocking pool: image decoding and
//! resizing are CPU work and must not stall the async stages. The
//! [`Preprocessor`] enforces the size and pixel limits (decompression bombs
//! fail as `too_large`/`decode` for their own job only).

use crate::metrics::Stage;
use crate::pipeline::Ctx;
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::traits::{Chw, Preprocessor};
use std::time::Instant;

/// Bytes → model input, off the runtime.
pub(crate) async fn decode<Q, S, O, F, P: Preprocessor>(
    ctx: &Ctx<Q, S, O, F, P>,
    bytes: Vec<u8>,
) -> Result<Chw, JobError> {
    let started = Instant::now();
    let pre = ctx.ports.preprocessor.clone();
    let decoded = tokio::task::spawn_blocking(move || pre.preprocess(&bytes)).await;
    ctx.metrics.observe(Stage::Decode, started.elapsed());
    match decoded {
        Ok(r) => r,
        // A panic in a decoder is a bug, but it must cost one job, not the worker.
        Err(e) => Err(JobError::new(ErrorKind::Decode, format!("decoder failed: {e}"))),
    }
}
