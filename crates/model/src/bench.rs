//! Inference throughput of the burn networks (the burn half of
//! `bench/inference`; the driver runs onnxruntime and interleaves rounds).

use crate::backend::BackendKind;
use crate::error::ModelError;
use crate::predictor::Network;
use burn::prelude::*;
use std::time::{Duration, Instant};

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// Network name.
    pub model: String,
    /// burn backend.
    pub backend: String,
    /// Images per forward call.
    pub batch: usize,
    /// Throughput of this round.
    pub images_per_s: f64,
}

/// Times `network.forward` on the first `b` images of `input` for every `b` in
/// `batches`: one warm-up call, then calls until `min_time` has passed (at least 2).
///
/// input: [n, channels, height, width], n ≥ max(batches)
pub fn bench_network(
    name: &str,
    network: &Network,
    backend: BackendKind,
    input: &[f32],
    chw: [usize; 3],
    batches: &[usize],
    min_time: Duration,
) -> Result<Vec<BenchRow>, ModelError> {
    let device = backend.device();
    let per = chw.iter().product::<usize>();
    let mut rows = Vec::new();
    for &b in batches {
        if b == 0 || input.len() < b * per {
            return Err(ModelError::Invalid(format!("bench input has {} images, batch {b}", input.len() / per.max(1))));
        }
        let make =
            || Tensor::<4>::from_data(TensorData::new(input[..b * per].to_vec(), [b, chw[0], chw[1], chw[2]]), &device);
        // Reading the output back forces the (possibly lazy) backend to finish.
        let run = || -> Result<(), ModelError> {
            network
                .forward(make())
                .into_data()
                .try_to_vec_as::<f32>()
                .map(|_| ())
                .map_err(|e| ModelError::Inference(format!("{e:?}")))
        };
        run()?;
        let start = Instant::now();
        let mut calls = 0usize;
        while calls < 2 || start.elapsed() < min_time {
            run()?;
            calls += 1;
        }
        rows.push(BenchRow {
            model: name.to_string(),
            backend: backend.as_str().to_string(),
            batch: b,
            images_per_s: (calls * b) as f64 / start.elapsed().as_secs_f64(),
        });
    }
    Ok(rows)
}
