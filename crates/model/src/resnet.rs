//! `resnet18`: torchvision's ResNet-18 (3×224×224 → 1000 logits by default),
//! loaded from PyTorch-exported safetensors, BatchNorm folded at load time.
//!
//! Loading builds [`ResNet18Raw`], whose parameter paths are torchvision's
//! (`layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `bn1.running_var`,
//! …; `downsample.0/1` are remapped to `downsample.conv/bn`), fills it through
//! burn-store's `SafetensorsStore` + `PyTorchToBurnAdapter`, then folds every
//! `conv → BatchNorm` pair into one biased convolution:
//! `w' = w · γ/√(σ²+ε)`, `b' = β − μ · γ/√(σ²+ε)`. Inference then runs
//! [`ResNet18`], which has no BatchNorm at all.

use crate::error::ModelError;
use crate::nhwc::{Act, Activations, Conv, Dense, Epilogue, GemmConv, WinogradTile, run_batched};
use crate::weights;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

/// Stages of ResNet-18: (input channels, output channels, stride of the first block).
const STAGES: [(usize, usize, usize); 4] = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)];

fn conv(c: [usize; 2], k: usize, stride: usize, pad: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new(c, [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(bias)
        .init(device)
}

/// The 1×1 projection of a block whose shape changes, as exported.
#[derive(Module, Debug)]
pub struct DownsampleRaw {
    conv: Conv2d,
    bn: BatchNorm,
}

/// A BasicBlock as exported (convolutions without bias, BatchNorm after each).
#[derive(Module, Debug)]
pub struct BlockRaw {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<DownsampleRaw>,
}

/// ResNet-18 with torchvision's parameter paths: the loading form.
#[derive(Module, Debug)]
pub struct ResNet18Raw {
    conv1: Conv2d,
    bn1: BatchNorm,
    layer1: Vec<BlockRaw>,
    layer2: Vec<BlockRaw>,
    layer3: Vec<BlockRaw>,
    layer4: Vec<BlockRaw>,
    fc: Linear,
}

impl ResNet18Raw {
    /// Randomly initialised, `classes` outputs.
    pub fn new(classes: usize, device: &Device) -> Self {
        let bn = |c| BatchNormConfig::new(c).with_epsilon(1e-5).init(device);
        let stage = |(cin, cout, stride): (usize, usize, usize)| {
            (0..2)
                .map(|i| {
                    let (cin, stride) = if i == 0 { (cin, stride) } else { (cout, 1) };
                    BlockRaw {
                        conv1: conv([cin, cout], 3, stride, 1, false, device),
                        bn1: bn(cout),
                        conv2: conv([cout, cout], 3, 1, 1, false, device),
                        bn2: bn(cout),
                        downsample: (stride != 1 || cin != cout).then(|| DownsampleRaw {
                            conv: conv([cin, cout], 1, stride, 0, false, device),
                            bn: bn(cout),
                        }),
                    }
                })
                .collect()
        };
        Self {
            conv1: conv([3, 64], 7, 2, 3, false, device),
            bn1: bn(64),
            layer1: stage(STAGES[0]),
            layer2: stage(STAGES[1]),
            layer3: stage(STAGES[2]),
            layer4: stage(STAGES[3]),
            fc: LinearConfig::new(512, classes).init(device),
        }
    }

    /// Fills the parameters from PyTorch-exported safetensors bytes.
    pub fn load_pytorch(&mut self, bytes: Vec<u8>, source_name: &str) -> Result<(), ModelError> {
        weights::load_pytorch_safetensors_remapped(
            self,
            bytes,
            source_name,
            &[(r"downsample\.0\.", "downsample.conv."), (r"downsample\.1\.", "downsample.bn.")],
        )
    }

    /// Folds every BatchNorm into the convolution before it.
    pub fn fold(self) -> ResNet18 {
        let fold_stage = |blocks: Vec<BlockRaw>| {
            blocks
                .into_iter()
                .map(|b| Block {
                    conv1: fold_bn(b.conv1, &b.bn1),
                    conv2: fold_bn(b.conv2, &b.bn2),
                    downsample: b.downsample.map(|d| fold_bn(d.conv, &d.bn)),
                })
                .collect()
        };
        ResNet18 {
            conv1: fold_bn(self.conv1, &self.bn1),
            pool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: fold_stage(self.layer1),
            layer2: fold_stage(self.layer2),
            layer3: fold_stage(self.layer3),
            layer4: fold_stage(self.layer4),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: self.fc,
            activation: Relu::new(),
        }
    }
}

/// `conv` followed by `bn` (inference statistics) as one biased convolution.
pub fn fold_bn(mut conv: Conv2d, bn: &BatchNorm) -> Conv2d {
    let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt(); // [out]
    let shift = bn.beta.val() - bn.running_mean.value() * scale.clone(); // [out]
    let [out, cin, kh, kw] = conv.weight.val().dims();
    let w = conv.weight.val() * scale.clone().reshape([out, 1, 1, 1]);
    let b = match &conv.bias {
        Some(b) => b.val() * scale + shift,
        None => shift,
    };
    debug_assert_eq!(w.dims(), [out, cin, kh, kw]);
    conv.weight = Param::from_tensor(w);
    conv.bias = Some(Param::from_tensor(b));
    conv
}

/// A BasicBlock with BatchNorm folded.
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    conv2: Conv2d,
    downsample: Option<Conv2d>,
}

impl Block {
    /// x: [batch, c_in, h, w] → [batch, c_out, h/stride, w/stride]
    fn forward(&self, x: Tensor<4>, relu: &Relu) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let y = relu.forward(self.conv1.forward(x));
        relu.forward(self.conv2.forward(y) + identity)
    }
}

/// ResNet-18 for inference (BatchNorm folded).
#[derive(Module, Debug)]
pub struct ResNet18 {
    conv1: Conv2d,
    pool: MaxPool2d,
    layer1: Vec<Block>,
    layer2: Vec<Block>,
    layer3: Vec<Block>,
    layer4: Vec<Block>,
    avgpool: AdaptiveAvgPool2d,
    fc: Linear,
    activation: Relu,
}

impl ResNet18 {
    /// images: [batch, 3, height, width] (224×224 for ImageNet weights), normalised → logits: [batch, classes]
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let relu = &self.activation;
        let mut x = self.pool.forward(relu.forward(self.conv1.forward(images)));
        for block in self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4) {
            x = block.forward(x, relu);
        }
        let x = self.avgpool.forward(x);
        let [batch, c, _, _] = x.dims();
        self.fc.forward(x.reshape([batch, c]))
    }
}

/// A [`Block`] prepared for the NHWC path.
#[derive(Debug, Clone)]
struct BlockNhwc {
    /// 3×3, stride 1 or 2.
    conv1: Conv,
    /// 3×3, stride 1.
    conv2: Conv,
    downsample: Option<GemmConv>,
}

/// [`ResNet18`] prepared for the NHWC inference path ([`crate::nhwc`]): same
/// (folded) weights; bias + ReLU, and bias + shortcut + ReLU, fused into the
/// convolutions.
#[derive(Debug, Clone)]
pub struct ResNet18Nhwc {
    conv1: GemmConv,
    blocks: Vec<BlockNhwc>,
    fc: Dense,
    classes: usize,
}

impl ResNet18Nhwc {
    /// Lays out `net`'s weights for the NHWC path: the 3×3 stride-1
    /// convolutions on Winograd with `winograd`'s tile (`None`: every
    /// convolution on im2col + GEMM).
    pub fn new(net: &ResNet18, winograd: Option<WinogradTile>) -> Result<Self, ModelError> {
        let blocks = net
            .layer1
            .iter()
            .chain(&net.layer2)
            .chain(&net.layer3)
            .chain(&net.layer4)
            .map(|b| {
                Ok(BlockNhwc {
                    conv1: Conv::from_conv(&b.conv1, winograd)?,
                    conv2: Conv::from_conv(&b.conv2, winograd)?,
                    downsample: b.downsample.as_ref().map(GemmConv::from_conv).transpose()?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            conv1: GemmConv::from_conv(&net.conv1)?,
            blocks,
            fc: Dense::from_linear(&net.fc)?,
            classes: net.fc.weight.dims()[1],
        })
    }

    /// images: [batch, 3, height, width], normalised → logits: [batch, classes]
    pub fn forward(&self, images: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        run_batched(images, self.classes, PART, |x, parallel| self.forward_nhwc(&x, parallel))
    }

    /// x: [batch, height, width, 3] → logits [batch, classes], row-major.
    fn forward_nhwc(&self, x: &Activations, parallel: bool) -> Result<Vec<f32>, ModelError> {
        let relu = Epilogue { act: Act::Relu, ..Epilogue::default() };
        // The stem's 3×3 stride-2 max-pool, padding 1, as torchvision's.
        let mut x = self.conv1.forward(x, relu, parallel)?.max_pool(3, 2, 1, parallel)?;
        for block in &self.blocks {
            let shortcut = match &block.downsample {
                Some(d) => Some(d.forward(&x, Epilogue::default(), parallel)?),
                None => None,
            };
            let y = block.conv1.forward(&x, relu, parallel)?;
            let residual = Some(shortcut.as_ref().unwrap_or(&x));
            x = block.conv2.forward(&y, Epilogue { residual, act: Act::Relu, pool2: false }, parallel)?;
        }
        self.fc.forward(&x.global_mean(), false, parallel)
    }
}

/// Images per part of a batch on the NHWC path ([`run_batched`]).
const PART: usize = 8;
