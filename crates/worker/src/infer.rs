//! Inference: one dedicated OS thread owns the [`Predictor`] and is fed by a
//! bounded channel of batches, so `forward` never blocks the async runtime.
//! A batch is every model input of its jobs (a job of several images brings
//! each image that decoded). If a whole batch fails, each image is retried
//! alone, so one bad input fails only its own image.
//!
//! The thread is watched by the pipeline's supervisor: a panic in the model
//! stops the worker (see [`crate::supervise`]).
//!
//! The loop runs *inside* a rayon pool of its own (the backend's parallel
//! kernels use whichever pool they are called from). With one thread, every
//! kernel runs inline on the loop's thread: no wake-ups, hand-offs or idle
//! spinning between threads, which in the worker cost more CPU than the
//! digits model itself. More threads parallelise each batch.

use crate::batch::Batched;
use crate::ctx::Ctx;
use crate::job::{Job, Outcome};
use crate::metrics::{SharedMetrics, Stage};
use scorefleet_core::error::{ErrorKind, JobError};
use scorefleet_core::result::{ModelRef, Scored};
use scorefleet_core::traits::{Chw, Predictor};
use std::time::Instant;
use tokio::sync::mpsc;

/// What the inference loop needs besides the predictor.
#[derive(Debug)]
pub(crate) struct Scoring {
    top_k: usize,
    worker_id: String,
    model: ModelRef,
    metrics: SharedMetrics,
}

impl Scoring {
    /// Taken from the pipeline's shared state.
    pub(crate) fn new(ctx: &Ctx) -> Self {
        Self {
            top_k: ctx.settings.top_k,
            worker_id: ctx.settings.worker_id.clone(),
            model: ctx.model.clone(),
            metrics: ctx.metrics.clone(),
        }
    }
}

/// The rayon pool the inference loop runs in: `threads` threads (0: one per
/// core), named `scorefleet-infer-N`.
pub(crate) fn pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("scorefleet-infer-{i}")).build()
}

/// The inference thread's builder.
pub(crate) fn thread() -> std::thread::Builder {
    std::thread::Builder::new().name("scorefleet-infer".into())
}

/// The inference thread's loop: runs until the batcher's channel closes.
pub(crate) fn run<M: Predictor>(
    s: Scoring,
    mut predictor: M,
    mut rx: mpsc::Receiver<Vec<Batched>>,
    record_tx: mpsc::Sender<Outcome>,
) {
    let k = s.top_k;
    while let Some(batch) = rx.blocking_recv() {
        // Every job's model inputs, in order, and per job its images with the
        // inputs taken out (`None`: its score is the next prediction).
        let mut inputs: Vec<Chw> = Vec::new();
        let mut jobs: Vec<(Job, Vec<Option<JobError>>)> = Vec::with_capacity(batch.len());
        for (job, images) in batch {
            let slots = images
                .into_iter()
                .map(|i| match i {
                    Ok(chw) => {
                        inputs.push(chw);
                        None
                    }
                    Err(e) => Some(e),
                })
                .collect();
            jobs.push((job, slots));
        }
        // One span per batch, naming its jobs and runs, so a job's log lines
        // can be found from its id and a slow batch traced to its members.
        let span = batch_span(jobs.iter().map(|(j, _)| j), inputs.len());
        let _entered = span.enter();
        let started = Instant::now();
        let preds = if inputs.is_empty() { Ok(Vec::new()) } else { predict(&mut predictor, &inputs, k) };
        s.metrics.observe(Stage::Infer, started.elapsed());
        s.metrics.batch(inputs.len());
        let preds: Vec<Result<Scored, JobError>> = match preds {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) if inputs.len() > 1 => {
                // The batch failed as a whole: find out which image is to
                // blame by scoring each alone, so only it fails.
                tracing::warn!(error = %e, size = inputs.len(), "batch failed; scoring its images one by one");
                inputs
                    .iter()
                    .map(|x| predict(&mut predictor, std::slice::from_ref(x), k).map(|mut r| r.remove(0)))
                    .collect()
            }
            Err(e) => vec![Err(e)],
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "batch scored");
        let mut preds = preds.into_iter();
        for (job, slots) in jobs {
            let images: Vec<Result<Scored, JobError>> = slots
                .into_iter()
                .map(|slot| match slot {
                    Some(e) => Err(e),
                    None => preds
                        .next()
                        .unwrap_or_else(|| Err(JobError::new(ErrorKind::Inference, "no prediction for this image"))),
                })
                .collect();
            let outcome = job.finish(&s.worker_id, &s.model, images);
            if record_tx.blocking_send(outcome).is_err() {
                return;
            }
        }
    }
}

/// The `batch` span: images, distinct run ids and every job id, comma-separated.
fn batch_span<'a>(jobs: impl Iterator<Item = &'a Job>, images: usize) -> tracing::Span {
    let (mut runs, ids): (Vec<&str>, Vec<&str>) = jobs.map(|j| (j.run_id.as_str(), j.job_id.as_str())).unzip();
    runs.sort_unstable();
    runs.dedup();
    tracing::info_span!("batch", size = images, run_id = %runs.join(","), job_ids = %ids.join(","))
}

/// One forward pass, with its output checked: a model that returns the wrong
/// number of rows must not shift results onto the wrong jobs.
fn predict<M: Predictor>(predictor: &mut M, inputs: &[Chw], k: usize) -> Result<Vec<Scored>, JobError> {
    let rows = predictor.score(inputs, k)?;
    if rows.len() != inputs.len() {
        return Err(JobError::new(
            ErrorKind::Inference,
            format!("model returned {} rows for {} images", rows.len(), inputs.len()),
        ));
    }
    Ok(rows)
}
