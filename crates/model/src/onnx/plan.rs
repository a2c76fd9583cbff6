//! Graph-level work at load: constant folding, `Conv` + `BatchNormalization`
//! folding, and the
//! choice of a CPU kernel ([`super::host::Kernel`]) per node, with the
//! `Add`/`Relu`/`Clip` after a convolution fused into it.
//!
//! Both passes rewrite the step list built by [`super::OnnxModel::from_bytes_with`]:
//! a fused node's step goes, and the step that absorbed it writes the fused
//! node's output slot instead of its own.

use super::host::{ConvKernel, Kernel, Padding};
use super::value::{Data, Value};
use super::{Arg, Step};
use crate::error::ModelError;
use crate::nhwc::{Act, DepthwiseConv, GemmConv, Pool, WinogradConv, WinogradTile};
use burn::prelude::*;
use onnx_ir::Node;
use std::collections::HashSet;

/// Which load-time rewrites and CPU kernels a model gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Compute at load every node whose inputs are all constants (onnx-ir
    /// folds only some), then fold each `BatchNormalization` that only reads
    /// a convolution with constant weights into that convolution's weights
    /// and bias.
    pub fold: bool,
    /// Run convolutions, pooling and their neighbours on the CPU kernels of
    /// [`super::host`] instead of burn's ops (CPU backends only).
    pub cpu_kernels: bool,
    /// With `cpu_kernels`: the Winograd tile of the 3×3, stride-1, dilation-1,
    /// group-1 convolutions ([`WinogradConv`]); `None` puts them on im2col +
    /// GEMM like every other convolution.
    pub winograd: Option<WinogradTile>,
}

impl Options {
    /// What `device` gets by default: folding everywhere, the CPU kernels on
    /// CPU backends (on a GPU every node runs on burn's ops).
    pub fn for_device(device: &Device) -> Options {
        let host = crate::backend::is_host(device);
        Options { fold: true, cpu_kernels: host, winograd: host.then_some(WinogradTile::SERVED) }
    }

    /// Every node on burn's own op, as the file has it.
    pub fn burn_only() -> Options {
        Options { fold: false, cpu_kernels: false, winograd: None }
    }
}

/// For each slot, the steps (index, argument position) that read it.
fn readers(steps: &[Step], slots: usize) -> Vec<Vec<(usize, usize)>> {
    let mut r = vec![Vec::new(); slots];
    for (i, s) in steps.iter().enumerate() {
        for (k, a) in s.args.iter().enumerate() {
            if let Arg::Slot { slot, .. } = a {
                r[*slot].push((i, k));
            }
        }
    }
    r
}

fn output_slots(outputs: &[Arg]) -> HashSet<usize> {
    outputs.iter().filter_map(|o| if let Arg::Slot { slot, .. } = o { Some(*slot) } else { None }).collect()
}

/// The one step that reads `slot`, if exactly one does and it is not a graph output.
fn sole_reader(
    readers: &[Vec<(usize, usize)>],
    graph_out: &HashSet<usize>,
    slot: Option<usize>,
) -> Option<(usize, usize)> {
    let slot = slot?;
    match readers[slot].as_slice() {
        [one] if !graph_out.contains(&slot) => Some(*one),
        _ => None,
    }
}

fn constant(arg: Option<&Arg>) -> Option<&Value> {
    match arg {
        Some(Arg::Const(v)) if matches!(v.data, Data::F(_)) => Some(v),
        _ => None,
    }
}

/// An optional input (a convolution's bias): `Some(None)` when left out,
/// `Some(Some(v))` when a float constant, `None` when computed at run time.
fn optional_constant(arg: Option<&Arg>) -> Option<Option<&Value>> {
    match arg {
        None | Some(Arg::Absent) => Some(None),
        a => constant(a).map(Some),
    }
}

/// Only output 0 of `step` is used.
fn single_output(step: &Step) -> bool {
    step.outs.iter().skip(1).all(Option::is_none)
}

/// Marks step `j` as fused into step `into` (its label joins `into`'s
/// `folded`, [`retain`] drops it) and returns the slot `j` wrote, which
/// `into` writes from now on.
fn absorb(steps: &mut [Step], into: usize, j: usize, gone: &mut HashSet<usize>) -> Option<usize> {
    let label = steps[j].label.clone();
    steps[into].folded.push(label);
    gone.insert(j);
    steps[j].outs[0]
}

/// Removes the steps marked in `gone`.
fn retain(steps: &mut Vec<Step>, gone: &HashSet<usize>) {
    let mut i = 0;
    steps.retain(|_| {
        i += 1;
        !gone.contains(&(i - 1))
    });
}

/// Runs each node whose inputs are all constants once, at load, and makes its
/// outputs constants (the ONNX suite's light models compute their weights
/// with `ConstantOfShape`, for one). A node that fails here is left to fail
/// at run time, naming itself. Returns how many nodes went.
pub(super) fn fold_constants(
    steps: &mut Vec<Step>,
    outputs: &mut [Arg],
    slots: usize,
    opset: usize,
    device: &Device,
) -> usize {
    let mut known: Vec<Option<Value>> = vec![None; slots];
    let resolve = |a: &mut Arg, known: &[Option<Value>]| {
        if let Arg::Slot { slot, .. } = a
            && let Some(v) = &known[*slot]
        {
            *a = Arg::Const(Box::new(v.clone()));
        }
    };
    let mut gone = HashSet::new();
    for (i, step) in steps.iter_mut().enumerate() {
        step.args.iter_mut().for_each(|a| resolve(a, &known));
        if step.args.is_empty() || step.args.iter().any(|a| matches!(a, Arg::Slot { .. })) {
            continue;
        }
        let given = step.args.iter().map(|a| if let Arg::Const(v) = a { Some(Value::clone(v)) } else { None });
        let inputs = super::ops::Inputs(given.collect());
        let node = &step.node;
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| super::ops::run(node, inputs, opset, device)));
        if let Ok(Ok(values)) = run {
            for (slot, v) in step.outs.iter().zip(values) {
                if let Some(slot) = slot {
                    known[*slot] = Some(v);
                }
            }
            gone.insert(i);
        }
    }
    outputs.iter_mut().for_each(|a| resolve(a, &known));
    retain(steps, &gone);
    gone.len()
}

/// Folds `BatchNormalization` into the convolution before it:
/// `w' = w · γ/√(σ²+ε)` per output channel, `b' = (b − μ) · γ/√(σ²+ε) + β`.
/// Returns how many were folded.
pub(super) fn fold_batch_norms(
    steps: &mut Vec<Step>,
    outputs: &[Arg],
    slots: usize,
    device: &Device,
) -> Result<usize, ModelError> {
    let readers = readers(steps, slots);
    let graph_out = output_slots(outputs);
    let mut gone = HashSet::new();
    for i in 0..steps.len() {
        if !matches!(steps[i].node, Node::Conv2d(_)) || !single_output(&steps[i]) {
            continue;
        }
        let Some((j, 0)) = sole_reader(&readers, &graph_out, steps[i].outs[0]) else { continue };
        let Node::BatchNormalization(bn) = &steps[j].node else { continue };
        if !single_output(&steps[j]) {
            continue;
        }
        use onnx_ir::node::batch_norm::BatchNormConfig;
        let eps = match &bn.config {
            BatchNormConfig::Static(c) => c.epsilon,
            BatchNormConfig::Runtime(c) => c.epsilon,
        } as f32;
        let params: Option<Vec<&Value>> = (1..=4).map(|k| constant(steps[j].args.get(k))).collect();
        let (Some(params), Some(w)) = (params, constant(steps[i].args.get(1))) else { continue };
        let Some(bias) = optional_constant(steps[i].args.get(2)) else { continue };
        let vec = |v: &Value| v.to_f32s().map_err(ModelError::Onnx);
        let (gamma, beta, mean, var) = (vec(params[0])?, vec(params[1])?, vec(params[2])?, vec(params[3])?);
        let c_out = w.shape[0];
        if [&gamma, &beta, &mean, &var].iter().any(|p| p.len() != c_out) {
            continue;
        }
        let mut weights = vec(w)?;
        let per = weights.len() / c_out.max(1);
        let mut b = match bias {
            Some(b) => vec(b)?,
            None => vec![0.0; c_out],
        };
        for o in 0..c_out {
            let a = gamma[o] / (var[o] + eps).sqrt();
            weights[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= a);
            b[o] = (b[o] - mean[o]) * a + beta[o];
        }
        let w = Value::floats(weights, w.shape.clone(), device).map_err(ModelError::Onnx)?;
        let b = Value::floats(b, vec![c_out], device).map_err(ModelError::Onnx)?;
        steps[i].outs[0] = absorb(steps, i, j, &mut gone);
        let conv = &mut steps[i];
        conv.args.resize(3, Arg::Absent);
        conv.args[1] = Arg::Const(Box::new(w));
        conv.args[2] = Arg::Const(Box::new(b));
    }
    retain(steps, &gone);
    Ok(gone.len())
}

/// A 2×2, stride-2 max pooling without padding (floor mode): the one
/// [`crate::nhwc::Epilogue::pool2`] computes.
fn is_pool2(c: &onnx_ir::node::max_pool2d::MaxPool2dConfig) -> bool {
    use onnx_ir::node::padding::{AutoPad, PaddingConfig2d};
    c.kernel_size == [2, 2]
        && c.strides == [2, 2]
        && c.dilation == [1, 1]
        && !c.ceil_mode
        && matches!(c.auto_pad, AutoPad::NotSet | AutoPad::Valid)
        && matches!(c.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0))
}

/// `Add`, or `Sum` of two inputs (older exports' shortcut).
fn is_add(step: &Step) -> bool {
    match step.node {
        Node::Add(_) => true,
        Node::Sum(_) => step.args.len() == 2,
        _ => false,
    }
}

/// A `Relu`, or a `Clip` with constant bounds, as an [`Act`].
fn activation(step: &Step) -> Option<Act> {
    match &step.node {
        Node::Relu(_) => Some(Act::Relu),
        Node::Clip(n) => {
            use onnx_ir::node::clip::ClipInput;
            let bound = |c: &Option<ClipInput>, none: f32| -> Option<f32> {
                match c {
                    None => Some(none),
                    Some(ClipInput::Static(v)) => Some(*v as f32),
                    Some(ClipInput::Runtime(r)) => match step.args.get(r.input_index) {
                        Some(Arg::Const(v)) => v.to_f32s().ok()?.first().copied(),
                        Some(Arg::Absent) | None => Some(none),
                        Some(Arg::Slot { .. }) => None,
                    },
                }
            };
            Some(Act::Clip(bound(&n.config.min, f32::NEG_INFINITY)?, bound(&n.config.max, f32::INFINITY)?))
        }
        _ => None,
    }
}

/// The CPU form of a `Conv` node with constant weights, if there is one
/// (`group` 1, or depthwise with one filter per channel).
fn conv_kernel(step: &Step, winograd: Option<WinogradTile>) -> Result<Option<(ConvKernel, Padding)>, ModelError> {
    let Node::Conv2d(n) = &step.node else { return Ok(None) };
    let c = &n.config;
    let Some(w) = constant(step.args.get(1)) else { return Ok(None) };
    let Some(bias) = optional_constant(step.args.get(2)) else { return Ok(None) };
    let bias = bias.map(|b| b.to_f32s().map_err(ModelError::Onnx)).transpose()?;
    let Ok(dims) = <[usize; 4]>::try_from(w.shape.as_slice()) else { return Ok(None) };
    let weights = w.to_f32s().map_err(ModelError::Onnx)?;
    let kernel = if let Some(tile) = winograd
        && c.groups == 1
        && WinogradConv::applies([dims[2], dims[3]], c.stride, c.dilation)
    {
        ConvKernel::Winograd(WinogradConv::new(&weights, dims, bias.as_deref(), [0; 4], tile)?)
    } else if c.groups == 1 {
        ConvKernel::Gemm(GemmConv::new(&weights, dims, bias.as_deref(), c.stride, c.dilation, [0; 4])?)
    } else if dims[1] == 1 && c.groups == dims[0] {
        ConvKernel::Depthwise(DepthwiseConv::new(&weights, dims, bias.as_deref(), c.stride, c.dilation)?)
    } else {
        return Ok(None);
    };
    let padding = Padding {
        pads: c.padding.clone(),
        auto: c.auto_pad.clone(),
        kernel: [dims[2], dims[3]],
        stride: c.stride,
        dilation: c.dilation,
    };
    Ok(Some((kernel, padding)))
}

/// Gives each node that has a CPU kernel that kernel: every convolution with
/// constant weights (fusing a following shortcut `Add` and `Relu`/`Clip`),
/// and the pooling, `Concat`, `Add`, activations and identities whose inputs
/// all come from CPU kernels (so no layout change happens for them).
pub(super) fn choose_kernels(
    steps: &mut Vec<Step>,
    outputs: &[Arg],
    slots: usize,
    winograd: Option<WinogradTile>,
) -> Result<(), ModelError> {
    let graph_out = output_slots(outputs);
    // Slot → index of the step that writes it (graph inputs: none).
    let mut producer = vec![None; slots];
    for (i, s) in steps.iter().enumerate() {
        for o in s.outs.iter().flatten() {
            producer[*o] = Some(i);
        }
    }
    let readers = readers(steps, slots);
    let mut gone = HashSet::new();
    // Slots that will hold channels-last values.
    let mut host: HashSet<usize> = HashSet::new();
    for i in 0..steps.len() {
        if gone.contains(&i) {
            continue;
        }
        // Every computed input is channels-last (constants are left to `Kernel::applies`).
        let from_host = |s: &Step| {
            s.args.iter().any(|a| matches!(a, Arg::Slot { .. }))
                && s.args.iter().all(|a| match a {
                    Arg::Slot { slot, .. } => host.contains(slot),
                    _ => true,
                })
        };
        let kernel = if let Some((conv, padding)) = conv_kernel(&steps[i], winograd)? {
            let (mut residual, mut act) = (false, Act::Identity);
            steps[i].args.truncate(1);
            let mut out = steps[i].outs[0];
            // conv → Add(conv, shortcut), the shortcut computed before the conv.
            if let Some((j, k)) = sole_reader(&readers, &graph_out, out)
                && is_add(&steps[j])
                && single_output(&steps[j])
                && let Some(Arg::Slot { slot, .. }) = steps[j].args.get(1 - k)
                && producer[*slot].is_none_or(|p| p < i)
            {
                let shortcut = Arg::Slot { slot: *slot, last: false };
                steps[i].args.push(shortcut);
                residual = true;
                out = absorb(steps, i, j, &mut gone);
            }
            // … → Relu / Clip.
            if let Some((j, 0)) = sole_reader(&readers, &graph_out, out)
                && single_output(&steps[j])
                && let Some(a) = activation(&steps[j])
            {
                act = a;
                out = absorb(steps, i, j, &mut gone);
            }
            // … → MaxPool 2×2, stride 2, unpadded (pooled in the store).
            let mut pool2 = false;
            if !residual
                && matches!(conv, ConvKernel::Gemm(_) | ConvKernel::Winograd(_))
                && let Some((j, 0)) = sole_reader(&readers, &graph_out, out)
                && single_output(&steps[j])
                && let Node::MaxPool2d(n) = &steps[j].node
                && is_pool2(&n.config)
            {
                pool2 = true;
                out = absorb(steps, i, j, &mut gone);
            }
            steps[i].outs = vec![out];
            Some(Kernel::Conv { conv, padding, residual, act, pool2 })
        } else if !from_host(&steps[i]) || !single_output(&steps[i]) {
            None
        } else {
            match &steps[i].node {
                Node::MaxPool2d(n) => {
                    let c = &n.config;
                    let pool = Pool {
                        kernel: c.kernel_size,
                        stride: c.strides,
                        pad: [0; 4],
                        dilation: c.dilation,
                        ceil_mode: c.ceil_mode,
                    };
                    let padding = Padding {
                        pads: c.padding.clone(),
                        auto: c.auto_pad.clone(),
                        kernel: c.kernel_size,
                        stride: c.strides,
                        dilation: c.dilation,
                    };
                    Some(Kernel::MaxPool { pool, padding })
                }
                Node::GlobalAveragePool(_) => Some(Kernel::GlobalAveragePool),
                Node::Concat(n) if n.config.axis == 1 => Some(Kernel::ConcatChannels),
                _ if is_add(&steps[i]) => Some(Kernel::Add),
                Node::Identity(_) | Node::Dropout(_) => Some(Kernel::Pass),
                _ => activation(&steps[i]).map(Kernel::Act),
            }
        };
        if let Some(k) = &kernel
            && !matches!(k, Kernel::GlobalAveragePool)
        {
            host.extend(steps[i].outs.iter().flatten());
        }
        steps[i].kernel = kernel;
    }
    retain(steps, &gone);
    Ok(())
}
