//! Inference throughput of the burn networks (the burn half of
//! `bench/inference`; the driver runs onnxruntime and interleaves rounds).

use crate::backend::BackendKind;
use crate::error::ModelError;
use crate::predictor::Network;
use burn::prelude::*;
use std::time::{Duration, Instant};

/// Which forward a measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardPath {
    /// [`Network::forward`]: the NHWC path the predictor serves.
    Nhwc,
    /// [`Network::forward_reference`]: the burn modules' own forward (burn `conv2d`, pooling, …).
    Reference,
    /// An ONNX graph through the runner, with the CPU kernels and load-time
    /// folding its backend gets by default (what a worker serves).
    Onnx,
    /// The same graph with every node on burn's own op (no overrides, no folding).
    OnnxBurn,
    /// [`ForwardPath::Nhwc`] with Winograd off: every convolution on im2col + GEMM.
    NhwcIm2col,
    /// [`ForwardPath::Onnx`] with Winograd off: every convolution on im2col + GEMM.
    OnnxIm2col,
}

impl std::str::FromStr for ForwardPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nhwc" => Ok(ForwardPath::Nhwc),
            "reference" => Ok(ForwardPath::Reference),
            "onnx" => Ok(ForwardPath::Onnx),
            "onnx-burn" => Ok(ForwardPath::OnnxBurn),
            "nhwc-im2col" => Ok(ForwardPath::NhwcIm2col),
            "onnx-im2col" => Ok(ForwardPath::OnnxIm2col),
            other => Err(format!("path {other:?}: nhwc, reference, onnx, onnx-burn, nhwc-im2col or onnx-im2col")),
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    /// Network name.
    pub model: String,
    /// burn backend.
    pub backend: String,
    /// Which forward ran.
    pub path: ForwardPath,
    /// Images per forward call.
    pub batch: usize,
    /// Throughput of this round.
    pub images_per_s: f64,
    /// Images per second of CPU time (all threads; Linux only): unlike
    /// `images_per_s`, barely moved by other processes competing for the cores,
    /// so a load-independent cross-check when both sides run one thread.
    pub images_per_cpu_s: Option<f64>,
}

/// CPU seconds (user + system, all threads) this process has used so far,
/// from `/proc/self/stat` (Linux; `None` elsewhere). Clock ticks are taken as
/// 1/100 s, Linux's USER_HZ on every mainstream architecture.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The images a benchmark feeds the network.
#[derive(Debug, Clone, Copy)]
pub struct BenchInput<'a> {
    /// [n, channels, height, width], row-major, n ≥ the largest batch.
    pub images: &'a [f32],
    /// [channels, height, width] of one image.
    pub chw: [usize; 3],
}

/// Times `network`'s `path` forward on the first `b` images of `input` for every `b` in
/// `batches`: one warm-up call, then calls until `min_time` has passed (at least 2).
pub fn bench_network(
    name: &str,
    network: &Network,
    backend: BackendKind,
    path: ForwardPath,
    input: BenchInput<'_>,
    batches: &[usize],
    min_time: Duration,
) -> Result<Vec<BenchRow>, ModelError> {
    let BenchInput { images: input, chw } = input;
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
            let logits = match path {
                ForwardPath::Nhwc
                | ForwardPath::Onnx
                | ForwardPath::OnnxBurn
                | ForwardPath::NhwcIm2col
                | ForwardPath::OnnxIm2col => network.forward(make())?,
                ForwardPath::Reference => network.forward_reference(make())?,
            };
            logits.into_data().try_to_vec_as::<f32>().map(|_| ()).map_err(|e| ModelError::Inference(format!("{e:?}")))
        };
        run()?;
        let start = Instant::now();
        let cpu_start = process_cpu_seconds();
        let mut calls = 0usize;
        while calls < 2 || start.elapsed() < min_time {
            run()?;
            calls += 1;
        }
        let cpu = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| b - a).filter(|s| *s > 0.0);
        rows.push(BenchRow {
            model: name.to_string(),
            backend: backend.as_str().to_string(),
            path,
            batch: b,
            images_per_s: (calls * b) as f64 / start.elapsed().as_secs_f64(),
            images_per_cpu_s: cpu.map(|s| (calls * b) as f64 / s),
        });
    }
    Ok(rows)
}
