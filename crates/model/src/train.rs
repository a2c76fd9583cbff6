//! Training and evaluation of `digits` on MNIST (a plain loop: Adam,
//! cross-entropy, shuffled mini-batches; no burn-train dashboard).

use crate::digits::{self, DigitsNet};
use crate::error::ModelError;
use crate::mnist::{Mnist, SIDE};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::time::Instant;

/// Training hyper-parameters (the defaults reproduce the committed weights).
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Passes over the 60,000 training images.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam learning rate of the first epoch.
    pub lr: f64,
    /// Multiplies the learning rate after each epoch.
    pub lr_decay: f64,
    /// Seeds the initialisation, dropout and shuffling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 4, batch_size: 64, lr: 1e-3, lr_decay: 0.5, seed: 42 }
    }
}

/// Builds a normalised batch: images: [n, 1, 28, 28].
pub fn batch_tensor(data: &Mnist, indices: &[usize], device: &Device) -> Tensor<4> {
    let mut v = Vec::with_capacity(indices.len() * SIDE * SIDE);
    for &i in indices {
        v.extend(data.image(i).iter().map(|&p| digits::normalise(p)));
    }
    Tensor::from_data(TensorData::new(v, [indices.len(), 1, SIDE, SIDE]), device)
}

/// Trains a fresh network; logs progress on stderr; returns the inference (non-autodiff) model.
pub fn train(train: &Mnist, test: &Mnist, config: &TrainConfig, device: &Device) -> Result<DigitsNet, ModelError> {
    let ad = device.clone().autodiff();
    ad.seed(config.seed);
    let mut model = DigitsNet::new(&ad);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut lr = config.lr;
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let start = Instant::now();
        let mut seen = 0usize;
        for (step, chunk) in order.chunks(config.batch_size).enumerate() {
            let images = batch_tensor(train, chunk, &ad);
            let targets: Vec<i64> = chunk.iter().map(|&i| train.labels[i] as i64).collect();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [chunk.len()]), &ad);
            let logits = model.forward(images);
            let loss = loss_fn.forward(logits, targets);
            seen += chunk.len();
            if step % 100 == 0 {
                let l = loss.clone().into_scalar::<f32>();
                eprintln!(
                    "epoch {epoch} step {step} loss {l:.4} ({:.0} img/s)",
                    seen as f64 / start.elapsed().as_secs_f64()
                );
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        let acc = evaluate(&model.valid(), test, 500, device)?;
        eprintln!(
            "epoch {epoch} done in {:.0}s ({:.0} img/s), test accuracy {acc:.4}",
            start.elapsed().as_secs_f64(),
            seen as f64 / start.elapsed().as_secs_f64()
        );
        lr *= config.lr_decay;
    }
    Ok(model.valid())
}

/// Fraction of `data` the model classifies correctly, through the burn
/// module's own forward (training's per-epoch check).
pub fn evaluate(model: &DigitsNet, data: &Mnist, batch: usize, device: &Device) -> Result<f64, ModelError> {
    let model = model.clone().to_device(device);
    evaluate_with(|x| Ok(model.forward(x)), data, batch, device)
}

/// Fraction of `data` that `forward` (images: [batch, 1, 28, 28] → logits:
/// [batch, 10]) classifies correctly; e.g. the served NHWC path.
pub fn evaluate_with(
    forward: impl Fn(Tensor<4>) -> Result<Tensor<2>, ModelError>,
    data: &Mnist,
    batch: usize,
    device: &Device,
) -> Result<f64, ModelError> {
    let predicted = predict_classes(forward, data, batch, device)?;
    let correct = predicted.iter().zip(&data.labels).filter(|(p, l)| **p == **l as usize).count();
    Ok(correct as f64 / data.len().max(1) as f64)
}

/// The arg-max class `forward` gives every image of `data`.
pub fn predict_classes(
    forward: impl Fn(Tensor<4>) -> Result<Tensor<2>, ModelError>,
    data: &Mnist,
    batch: usize,
    device: &Device,
) -> Result<Vec<usize>, ModelError> {
    let all: Vec<usize> = (0..data.len()).collect();
    let mut out = Vec::with_capacity(data.len());
    for chunk in all.chunks(batch.max(1)) {
        let logits = forward(batch_tensor(data, chunk, device))?;
        let idx = logits.argmax(1).into_data();
        let idx = idx.try_to_vec_as::<i64>().map_err(|e| ModelError::Inference(format!("{e:?}")))?;
        out.extend(idx.into_iter().map(|i| i as usize));
    }
    Ok(out)
}
