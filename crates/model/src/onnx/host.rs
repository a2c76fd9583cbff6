//! CPU kernels that stand in for burn's op on single nodes (per-node
//! overrides), and the values they pass between each other.
//!
//! On a CPU backend a convolution with constant weights runs as a Winograd
//! F(m×m, 3×3) when it is 3×3, stride 1, undilated and ungrouped
//! ([`crate::nhwc::WinogradConv`], unless [`super::Options::winograd`] is
//! `None`), else as im2col + one GEMM per chunk of rows
//! ([`crate::nhwc::GemmConv`]) or, when depthwise, as a direct
//! channel-vectorised loop ([`crate::nhwc::DepthwiseConv`]), with its
//! bias, a shortcut `Add` and a `Relu`/`Clip` fused into the store. Their
//! results stay channels-last ([`Held::Host`]) while the nodes that read them
//! have a kernel here too (pooling, `Concat` of channels, `Add`, activations);
//! a node without one gets its inputs converted to burn tensors (NCHW) first.
//! So layouts change only at the boundaries between the two kinds of node.
//! [`super::plan`] decides at load which node runs where; every kernel has a
//! test that it equals burn's op (`crate::nhwc` tests, `tests/onnx.rs`).

use super::value::{Data, Value};
use crate::nhwc::{Act, Activations, DepthwiseConv, Epilogue, GemmConv, Pool, WinogradConv};
use burn::prelude::*;
use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};
use std::sync::Arc;

/// A value between two nodes: a burn tensor, or channels-last floats that a
/// CPU kernel wrote.
// A `Value` is passed by value between every node already; boxing it here
// would add an allocation per node for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Held {
    /// A burn tensor (ONNX layout).
    Burn(Value),
    /// `[n, c, h, w]` held as NHWC.
    Host(Arc<Activations>),
}

impl Held {
    /// The value as a burn tensor in ONNX layout (`[n, c, h, w]` for host values).
    pub fn into_value(self, device: &Device) -> Result<Value, String> {
        match self {
            Held::Burn(v) => Ok(v),
            Held::Host(a) => {
                let shape = vec![a.batch, a.channels, a.height, a.width];
                Value::floats(a.to_nchw(), shape, device)
            }
        }
    }

    /// The value as NHWC activations; `what` names the node for errors.
    fn into_host(self, what: &str) -> Result<Arc<Activations>, String> {
        match self {
            Held::Host(a) => Ok(a),
            Held::Burn(v) => {
                let dims = <[usize; 4]>::try_from(v.shape.as_slice())
                    .map_err(|_| format!("{what} takes a rank-4 image batch, got {:?}", v.shape))?;
                if !matches!(v.data, Data::F(_)) {
                    return Err(format!("{what} takes floats"));
                }
                Ok(Arc::new(Activations::from_nchw_slice(&v.to_f32s()?, dims)))
            }
        }
    }

    fn as_host(&self) -> Option<&Activations> {
        match self {
            Held::Host(a) => Some(a),
            Held::Burn(_) => None,
        }
    }
}

/// A convolution's CPU form.
#[derive(Debug, Clone)]
pub enum ConvKernel {
    /// im2col + GEMM (`group` = 1).
    Gemm(GemmConv),
    /// One filter per channel.
    Depthwise(DepthwiseConv),
    /// Winograd F(m×m, 3×3) (3×3, stride 1, dilation 1, `group` = 1).
    Winograd(WinogradConv),
}

impl ConvKernel {
    fn forward_padded(&self, x: &Activations, pad: [usize; 4], e: Epilogue<'_>) -> Result<Activations, String> {
        match self {
            ConvKernel::Gemm(c) => c.forward_padded(x, pad, e, true),
            ConvKernel::Depthwise(c) => c.forward_padded(x, pad, e, true),
            ConvKernel::Winograd(c) => c.forward_padded(x, pad, e, true),
        }
        .map_err(|e| e.to_string())
    }

    fn out_dims(&self, x: &Activations, pad: [usize; 4]) -> Result<[usize; 4], String> {
        match self {
            ConvKernel::Gemm(c) => c.out_dims(x, pad),
            ConvKernel::Depthwise(c) => c.out_dims(x, pad),
            ConvKernel::Winograd(c) => c.out_dims(x, pad),
        }
        .map_err(|e| e.to_string())
    }
}

/// How a convolution or pooling node pads, resolved per input size.
#[derive(Debug, Clone)]
pub struct Padding {
    /// The explicit pads.
    pub pads: PaddingConfig2d,
    /// ONNX `auto_pad`.
    pub auto: AutoPad,
    /// Kernel, strides and dilations (for `SAME_*`).
    pub kernel: [usize; 2],
    /// Strides.
    pub stride: [usize; 2],
    /// Dilations.
    pub dilation: [usize; 2],
}

impl Padding {
    /// [top, left, bottom, right] for an `h`×`w` input.
    fn resolve(&self, h: usize, w: usize) -> [usize; 4] {
        let [(t, b), (l, r)] =
            super::ops::pads_2d(&self.pads, &self.auto, [h, w], self.kernel, self.stride, self.dilation);
        [t, l, b, r]
    }
}

/// The CPU kernel a node runs instead of burn's op.
#[derive(Debug, Clone)]
pub enum Kernel {
    /// `Conv` (+ `BatchNormalization` folded at load) + optionally a shortcut
    /// `Add` (the step's second input) and an activation.
    Conv {
        /// The weights, laid out.
        conv: ConvKernel,
        /// Its padding.
        padding: Padding,
        /// The step's second input is added before `act`.
        residual: bool,
        /// Applied after the shortcut.
        act: Act,
        /// A following 2×2, stride-2 `MaxPool` (no shortcut then).
        pool2: bool,
    },
    /// `MaxPool` (one output).
    MaxPool {
        /// Window, ceil mode.
        pool: Pool,
        /// Padding, resolved per input.
        padding: Padding,
    },
    /// `GlobalAveragePool`: `[n, c, 1, 1]`, where both layouts agree.
    GlobalAveragePool,
    /// `Concat` on the channel axis of rank-4 inputs.
    ConcatChannels,
    /// `Add` of two values of one shape.
    Add,
    /// `Relu` or `Clip` with constant bounds.
    Act(Act),
    /// `Identity`, or inference `Dropout` with one output.
    Pass,
}

impl Kernel {
    /// A short name for [`super::OnnxModel::overrides`].
    pub fn name(&self) -> String {
        match self {
            Kernel::Conv { conv, residual, act, pool2, .. } => {
                let mut s = match conv {
                    ConvKernel::Gemm(_) => "Conv (im2col + GEMM".to_string(),
                    ConvKernel::Depthwise(_) => "Conv (depthwise".to_string(),
                    ConvKernel::Winograd(c) => format!("Conv (Winograd {}", c.tile().name()),
                };
                if *residual {
                    s.push_str(" + Add");
                }
                match act {
                    Act::Identity => {}
                    Act::Relu => s.push_str(" + Relu"),
                    Act::Clip(..) => s.push_str(" + Clip"),
                }
                if *pool2 {
                    s.push_str(" + MaxPool");
                }
                s.push(')');
                s
            }
            Kernel::MaxPool { .. } => "MaxPool".into(),
            Kernel::GlobalAveragePool => "GlobalAveragePool".into(),
            Kernel::ConcatChannels => "Concat".into(),
            Kernel::Add => "Add".into(),
            Kernel::Act(Act::Relu) => "Relu".into(),
            Kernel::Act(_) => "Clip".into(),
            Kernel::Pass => "Identity".into(),
        }
    }

    /// Whether the kernel computes these inputs (else the node's burn op
    /// does, on converted inputs): `Add` needs two host values of one shape,
    /// `Concat` host values of one size and batch.
    pub fn applies(&self, inputs: &[Option<Held>]) -> bool {
        let hosts: Option<Vec<&Activations>> = inputs.iter().map(|h| h.as_ref().and_then(Held::as_host)).collect();
        match self {
            Kernel::Add => hosts.is_some_and(|h| h.len() == 2 && h[0].dims() == h[1].dims()),
            Kernel::ConcatChannels => hosts.is_some_and(|h| {
                h.iter().all(|a| (a.batch, a.height, a.width) == (h[0].batch, h[0].height, h[0].width))
            }),
            _ => true,
        }
    }

    /// Runs the kernel (after [`Kernel::applies`]); `what` names the node.
    pub fn run(&self, mut inputs: Vec<Option<Held>>, what: &str, device: &Device) -> Result<Held, String> {
        let mut take =
            |i: usize| inputs.get_mut(i).and_then(Option::take).ok_or_else(|| format!("{what}: input {i} is missing"));
        let err = |e: crate::ModelError| e.to_string();
        Ok(match self {
            Kernel::Conv { conv, padding, residual, act, pool2 } => {
                let x = take(0)?.into_host(what)?;
                let pad = padding.resolve(x.height, x.width);
                if !*residual {
                    let epilogue = Epilogue { act: *act, pool2: *pool2, residual: None };
                    return Ok(Held::Host(Arc::new(conv.forward_padded(&x, pad, epilogue)?)));
                }
                let shortcut = take(1)?;
                let dims = conv.out_dims(&x, pad)?;
                if let Some(r) = shortcut.as_host().filter(|r| r.dims() == dims) {
                    let epilogue = Epilogue { residual: Some(r), act: *act, pool2: false };
                    Held::Host(Arc::new(conv.forward_padded(&x, pad, epilogue)?))
                } else {
                    // A broadcasting Add: burn's, then the activation.
                    let y = Held::Host(Arc::new(conv.forward_padded(&x, pad, Epilogue::default())?));
                    let sum = super::ops::add(&y.into_value(device)?, &shortcut.into_value(device)?)?;
                    Held::Burn(super::ops::activate(sum, *act)?)
                }
            }
            Kernel::MaxPool { pool, padding } => {
                let x = take(0)?.into_host(what)?;
                let pool = Pool { pad: padding.resolve(x.height, x.width), ..*pool };
                Held::Host(Arc::new(x.max_pool2d(&pool, true).map_err(err)?))
            }
            Kernel::GlobalAveragePool => {
                let x = take(0)?.into_host(what)?;
                Held::Burn(Value::floats(x.global_mean(), vec![x.batch, x.channels, 1, 1], device)?)
            }
            Kernel::ConcatChannels => {
                let parts: Vec<Arc<Activations>> = inputs
                    .into_iter()
                    .map(|h| h.ok_or_else(|| format!("{what}: an input is missing"))?.into_host(what))
                    .collect::<Result<_, _>>()?;
                let refs: Vec<&Activations> = parts.iter().map(|a| a.as_ref()).collect();
                Held::Host(Arc::new(
                    Activations::concat_channels(&refs).ok_or_else(|| format!("{what}: inputs differ in size"))?,
                ))
            }
            Kernel::Add => {
                let a = take(0)?.into_host(what)?;
                let b = take(1)?.into_host(what)?;
                let mut sum = Arc::unwrap_or_clone(a);
                sum.data.iter_mut().zip(&b.data).for_each(|(s, v)| *s += v);
                Held::Host(Arc::new(sum))
            }
            Kernel::Act(act) => {
                let mut x = Arc::unwrap_or_clone(take(0)?.into_host(what)?);
                act.apply(&mut x.data);
                Held::Host(Arc::new(x))
            }
            Kernel::Pass => take(0)?,
        })
    }
}
