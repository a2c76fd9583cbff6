//! `digits`: the classic MNIST CNN, trained in this project.
//!
//! `conv 5×5 1→32 → ReLU → maxpool 2 → conv 5×5 32→64 → ReLU → maxpool 2 →
//! fc 1024→128 → ReLU → dropout → fc 128→10`, unpadded convolutions
//! (28 → 24 → 12 → 8 → 4). Parameter names follow PyTorch (`conv1.weight`,
//! `fc1.bias`, …) in the safetensors file, so a model trained in PyTorch with
//! the same layout loads too.

use crate::error::ModelError;
use crate::nhwc::{Act, Activations, Dense, Epilogue, GemmConv, run_batched};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

/// Input side in pixels.
pub const SIDE: usize = 28;
/// Output classes.
pub const CLASSES: usize = 10;
/// Width of the hidden fully connected layer (narrow, to keep the weights under 1 MB).
pub const HIDDEN: usize = 128;
/// MNIST mean of `[0, 1]` pixels (the PyTorch MNIST example's).
pub const MEAN: f32 = 0.1307;
/// MNIST standard deviation of `[0, 1]` pixels.
pub const STD: f32 = 0.3081;

/// The network.
#[derive(Module, Debug)]
pub struct DigitsNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    // Active only on an autodiff device (training); a no-op at inference.
    dropout: Dropout,
    activation: Relu,
}

impl DigitsNet {
    /// A freshly initialised network on `device`.
    pub fn new(device: &Device) -> Self {
        let conv = |c: [usize; 2]| Conv2dConfig::new(c, [5, 5]).with_padding(PaddingConfig2d::Valid).init(device);
        Self {
            conv1: conv([1, 32]),
            conv2: conv([32, 64]),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(64 * 4 * 4, HIDDEN).init(device),
            fc2: LinearConfig::new(HIDDEN, CLASSES).init(device),
            dropout: DropoutConfig::new(0.5).init(),
            activation: Relu::new(),
        }
    }

    /// images: [batch, 1, 28, 28], normalised → logits: [batch, 10]
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.activation.forward(self.conv1.forward(images)));
        let x = self.pool.forward(self.activation.forward(self.conv2.forward(x)));
        let [batch, c, h, w] = x.dims();
        let x = x.reshape([batch, c * h * w]);
        let x = self.dropout.forward(self.activation.forward(self.fc1.forward(x)));
        self.fc2.forward(x)
    }
}

/// [`DigitsNet`] prepared for the NHWC inference path ([`crate::nhwc`]): same
/// weights, each convolution + bias + ReLU + 2×2 pooling one fused layer.
#[derive(Debug, Clone)]
pub struct DigitsNhwc {
    conv1: GemmConv,
    conv2: GemmConv,
    // fc1 with its input rows reordered from NCHW (c, y, x) to NHWC (y, x, c)
    // flattening, so the pooled activations feed it without a transpose.
    fc1: Dense,
    fc2: Dense,
}

impl DigitsNhwc {
    /// Lays out `net`'s weights for the NHWC path.
    pub fn new(net: &DigitsNet) -> Result<Self, ModelError> {
        let w = net.fc1.weight.val(); // [64·4·4 (c, y, x), HIDDEN]
        let [inputs, hidden] = w.dims();
        let channels = net.conv2.weight.dims()[0];
        let plane = inputs / channels;
        let w = w.reshape([channels, plane, hidden]).swap_dims(0, 1).reshape([inputs, hidden]);
        let fc1 = Linear { weight: Param::from_tensor(w), bias: net.fc1.bias.clone() };
        Ok(Self {
            conv1: GemmConv::from_conv(&net.conv1)?,
            conv2: GemmConv::from_conv(&net.conv2)?,
            fc1: Dense::from_linear(&fc1)?,
            fc2: Dense::from_linear(&net.fc2)?,
        })
    }

    /// images: [batch, 1, 28, 28], normalised → logits: [batch, 10]
    pub fn forward(&self, images: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        run_batched(images, CLASSES, PART, |x, parallel| self.forward_nhwc(&x, parallel))
    }

    /// x: [batch, 28, 28, 1] → logits [batch, 10], row-major.
    fn forward_nhwc(&self, x: &Activations, parallel: bool) -> Result<Vec<f32>, ModelError> {
        let fused = Epilogue { act: Act::Relu, pool2: true, ..Epilogue::default() };
        let x = self.conv1.forward(x, fused, parallel)?;
        let x = self.conv2.forward(&x, fused, parallel)?;
        let hidden = self.fc1.forward(&x.data, true, parallel)?;
        self.fc2.forward(&hidden, false, parallel)
    }
}

/// Images per part of a batch on the NHWC path ([`run_batched`]).
const PART: usize = 8;

/// Normalises raw MNIST pixels (0–255) as the model expects.
pub fn normalise(pixel: u8) -> f32 {
    (pixel as f32 / 255.0 - MEAN) / STD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use burn::tensor::Distribution;

    /// A batch split into parts (one per thread) gives the logits of each image alone.
    #[test]
    fn a_split_batch_gives_each_images_own_logits() {
        for backend in BackendKind::all() {
            let device = backend.device();
            let net = DigitsNet::new(&device);
            let fast = DigitsNhwc::new(&net).expect("nhwc");
            let batch = 4 * rayon::current_num_threads() + 3;
            let x = Tensor::<4>::random([batch, 1, SIDE, SIDE], Distribution::Normal(0.0, 1.0), &device);
            let all = fast.forward(x.clone()).expect("batch").into_data().try_to_vec::<f32>().expect("f32");
            let reference = net.forward(x.clone()).into_data().try_to_vec::<f32>().expect("f32");
            for i in 0..batch {
                let one = fast.forward(x.clone().slice(i..i + 1)).expect("one").into_data();
                let one = one.try_to_vec::<f32>().expect("f32");
                let row = &all[i * CLASSES..(i + 1) * CLASSES];
                assert!(one.iter().zip(row).all(|(a, b)| (a - b).abs() < 1e-5), "{backend} image {i}");
                let module = &reference[i * CLASSES..(i + 1) * CLASSES];
                assert!(module.iter().zip(row).all(|(a, b)| (a - b).abs() < 1e-4), "{backend} image {i} vs module");
            }
        }
    }
}
