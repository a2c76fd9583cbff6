//! `digits`: the classic MNIST CNN, trained in this project.
//!
//! `conv 5×5 1→32 → ReLU → maxpool 2 → conv 5×5 32→64 → ReLU → maxpool 2 →
//! fc 1024→128 → ReLU → dropout → fc 128→10`, unpadded convolutions
//! (28 → 24 → 12 → 8 → 4). Parameter names follow PyTorch (`conv1.weight`,
//! `fc1.bias`, …) in the safetensors file, so a model trained in PyTorch with
//! the same layout loads too.

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

/// Normalises raw MNIST pixels (0–255) as the model expects.
pub fn normalise(pixel: u8) -> f32 {
    (pixel as f32 / 255.0 - MEAN) / STD
}
