//! The operators the runner executes, each on burn's own tensor ops.
//!
//! [`supported`] is the list [`super::OnnxModel`] checks at load, so a graph
//! with another operator is refused before it serves; [`run`] executes one
//! node. Shapes follow the ONNX operator specifications (opsets 1–24 through
//! onnx-ir's typed configs).

use super::value::{Data, R, Value, each_kind, padded};
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::module::{
    avg_pool1d, avg_pool2d, conv_transpose1d, conv_transpose2d, conv1d, conv2d, max_pool1d, max_pool2d,
};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, ConvTransposeOptions, MaxPoolOptions, PadMode};
use burn::tensor::{DType, Int, TensorData};
use onnx_ir::node::padding::{AutoPad, PaddingConfig1d, PaddingConfig2d};
use onnx_ir::{Node, RuntimeInputRef};

type Res<T> = Result<T, String>;

/// The ONNX operators the runner executes (as onnx-ir names its nodes:
/// `Conv` of a 2-D image is `Conv2d`). A node whose operator is missing here is
/// refused at load.
pub fn supported(node: &Node) -> Result<(), String> {
    use Node::*;
    match node {
        Add(_)
        | Sub(_)
        | Mul(_)
        | Div(_)
        | Pow(_)
        | Sqrt(_)
        | Neg(_)
        | Abs(_)
        | Exp(_)
        | Log(_)
        | Reciprocal(_)
        | Floor(_)
        | Ceil(_)
        | Erf(_)
        | Tanh(_)
        | Sigmoid(_)
        | Relu(_)
        | LeakyRelu(_)
        | PRelu(_)
        | HardSigmoid(_)
        | HardSwish(_)
        | Gelu(_)
        | Elu(_)
        | Softplus(_)
        | Clip(_)
        | Sum(_)
        | Max(_)
        | Min(_)
        | Mean(_)
        | Softmax(_)
        | LogSoftmax(_)
        | Identity(_)
        | Dropout(_)
        | Conv1d(_)
        | Conv2d(_)
        | ConvTranspose1d(_)
        | ConvTranspose2d(_)
        | BatchNormalization(_)
        | InstanceNormalization(_)
        | LayerNormalization(_)
        | MaxPool1d(_)
        | MaxPool2d(_)
        | AveragePool1d(_)
        | AveragePool2d(_)
        | GlobalAveragePool(_)
        | GlobalMaxPool(_)
        | Lrn(_)
        | Gemm(_)
        | MatMul(_)
        | Linear(_)
        | Flatten(_)
        | Reshape(_)
        | Transpose(_)
        | Concat(_)
        | Split(_)
        | Slice(_)
        | Squeeze(_)
        | Unsqueeze(_)
        | Gather(_)
        | Shape(_)
        | Cast(_)
        | Constant(_)
        | ConstantOfShape(_)
        | Expand(_)
        | Range(_)
        | ReduceMean(_)
        | ReduceSum(_)
        | ReduceMax(_)
        | ReduceMin(_)
        | ReduceProd(_)
        | ReduceSumSquare(_)
        | ReduceL1(_)
        | ReduceL2(_)
        | Resize(_)
        | Pad(_)
        | Tile(_)
        | Attention(_) => Ok(()),
        _ => Err(String::new()),
    }
    .and_then(|()| extra_checks(node))
}

/// Settings of a supported operator that the runner still refuses, named.
fn extra_checks(node: &Node) -> Res<()> {
    match node {
        Node::Resize(n) => {
            use onnx_ir::node::resize::CoordinateTransformMode as C;
            let c = &n.config;
            if matches!(c.coordinate_transformation_mode, C::TfCropAndResize) || c.antialias != 0 {
                return Err(format!(
                    "Resize with coordinate_transformation_mode {:?}, antialias {}",
                    c.coordinate_transformation_mode, c.antialias
                ));
            }
        }
        Node::AveragePool2d(n) if n.config.dilation != [1, 1] => {
            return Err("AveragePool with dilations".into());
        }
        Node::AveragePool1d(n) if n.config.dilation != 1 => {
            return Err("AveragePool with dilations".into());
        }
        Node::Attention(n) => {
            let used = |args: &[onnx_ir::Argument], from: usize| {
                args.iter().skip(from).any(|a| !a.name.is_empty() && !a.is_optional())
            };
            if used(&n.inputs, 4) || used(&n.outputs, 1) {
                return Err(
                    "Attention with a KV cache (past/present key and value), padding lengths or a QK output".into()
                );
            }
            if n.config.qk_matmul_output_mode != onnx_ir::node::attention::AttentionQkMatmulOutputMode::Matmul {
                return Err("Attention with a QK output mode".into());
            }
        }
        Node::MaxPool2d(n) if n.outputs.len() > 1 && !n.outputs[1].name.is_empty() => {
            return Err("MaxPool with an Indices output".into());
        }
        _ => {}
    }
    Ok(())
}

/// The inputs of one node as the runner hands them over.
#[derive(Debug)]
pub struct Inputs(pub Vec<Option<Value>>);

impl Inputs {
    fn get(&self, i: usize) -> Option<&Value> {
        self.0.get(i).and_then(Option::as_ref)
    }
    fn req(&self, i: usize) -> Res<&Value> {
        self.get(i).ok_or_else(|| format!("input {i} is missing"))
    }
    fn take(&mut self, i: usize) -> Res<Value> {
        self.0.get_mut(i).and_then(Option::take).ok_or_else(|| format!("input {i} is missing"))
    }
    fn ints(&self, r: &RuntimeInputRef) -> Res<Vec<i64>> {
        self.req(r.input_index)?.to_i64s()
    }
}

fn axis(a: i64, rank: usize) -> Res<usize> {
    let r = rank as i64;
    let a2 = if a < 0 { a + r } else { a };
    if a2 < 0 || a2 >= r.max(1) {
        return Err(format!("axis {a} is out of range for rank {rank}"));
    }
    Ok(a2 as usize)
}

fn broadcast(a: &[usize], b: &[usize]) -> Res<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

fn f(v: Tensor<R>, shape: Vec<usize>) -> Value {
    Value { data: Data::F(v), shape }
}

fn float_of(v: &Value) -> Tensor<R> {
    match &v.data {
        Data::F(t) => t.clone(),
        Data::I(t) => t.clone().float(),
        Data::B(t) => t.clone().int().float(),
    }
}

/// `a + b` with numpy broadcasting (a fused `Add` whose shapes differ).
pub(super) fn add(a: &Value, b: &Value) -> Res<Value> {
    binary(a, b, |a, b| a + b, |a, b| a + b)
}

/// `act(x)` on burn ops (a fused activation after a broadcasting `Add`).
pub(super) fn activate(x: Value, act: crate::nhwc::Act) -> Res<Value> {
    use crate::nhwc::Act;
    match act {
        Act::Identity => Ok(vec![x]),
        Act::Relu => unary(x, activation::relu),
        Act::Clip(lo, hi) => unary(x, |t| t.clamp(lo, hi)),
    }
    .map(|mut v| v.swap_remove(0))
}

/// Element-wise binary op with numpy broadcasting: floats, or integers when both are.
fn binary(
    a: &Value,
    b: &Value,
    ff: impl Fn(Tensor<R>, Tensor<R>) -> Tensor<R>,
    fi: impl Fn(Tensor<R, Int>, Tensor<R, Int>) -> Tensor<R, Int>,
) -> Res<Value> {
    let shape = broadcast(&a.shape, &b.shape)?;
    let dims = padded(&shape)?;
    let data = match (&a.data, &b.data) {
        (Data::I(x), Data::I(y)) => Data::I(fi(x.clone().expand(dims), y.clone().expand(dims))),
        _ => Data::F(ff(float_of(a).expand(dims), float_of(b).expand(dims))),
    };
    Ok(Value { data, shape })
}

fn unary(v: Value, op: impl Fn(Tensor<R>) -> Tensor<R>) -> Res<Vec<Value>> {
    let shape = v.shape.clone();
    Ok(vec![f(op(v.into_float("input")?), shape)])
}

fn variadic(
    mut inp: Inputs,
    ff: impl Fn(Tensor<R>, Tensor<R>) -> Tensor<R>,
    fi: impl Fn(Tensor<R, Int>, Tensor<R, Int>) -> Tensor<R, Int>,
) -> Res<Value> {
    let mut acc = inp.take(0)?;
    for i in 1..inp.0.len() {
        let next = inp.take(i)?;
        acc = binary(&acc, &next, &ff, &fi)?;
    }
    Ok(acc)
}

fn t4(v: &Value) -> Res<Tensor<4>> {
    let [a, b, c, d] =
        <[usize; 4]>::try_from(v.shape.as_slice()).map_err(|_| format!("expected rank 4, got {:?}", v.shape))?;
    Ok(float_of(v).reshape([a, b, c, d]))
}

fn t3(v: &Value) -> Res<Tensor<3>> {
    let [a, b, c] =
        <[usize; 3]>::try_from(v.shape.as_slice()).map_err(|_| format!("expected rank 3, got {:?}", v.shape))?;
    Ok(float_of(v).reshape([a, b, c]))
}

fn t1(v: &Value) -> Res<Tensor<1>> {
    Ok(float_of(v).reshape([v.len()]))
}

fn t2(v: &Value) -> Res<Tensor<2>> {
    let [a, b] =
        <[usize; 2]>::try_from(v.shape.as_slice()).map_err(|_| format!("expected rank 2, got {:?}", v.shape))?;
    Ok(float_of(v).reshape([a, b]))
}

fn from_nd<const D: usize>(t: Tensor<D>) -> Res<Value> {
    let shape = t.dims().to_vec();
    Ok(f(t.reshape(padded(&shape)?), shape))
}

/// The (begin, end) pads of one spatial axis for `auto_pad` SAME_UPPER/SAME_LOWER.
fn same_pads(input: usize, kernel: usize, stride: usize, dilation: usize, upper: bool) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let need = ((out - 1) * stride + (kernel - 1) * dilation + 1).saturating_sub(input);
    let small = need / 2;
    if upper { (small, need - small) } else { (need - small, small) }
}

pub(super) fn pads_2d(
    pad: &PaddingConfig2d,
    auto: &AutoPad,
    hw: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
) -> [(usize, usize); 2] {
    match auto {
        AutoPad::SameUpper | AutoPad::SameLower => {
            let up = matches!(auto, AutoPad::SameUpper);
            [same_pads(hw[0], k[0], s[0], d[0], up), same_pads(hw[1], k[1], s[1], d[1], up)]
        }
        AutoPad::Valid => [(0, 0); 2],
        AutoPad::NotSet => {
            let (t, l, b, r) = pad.as_tuple();
            [(t, b), (l, r)]
        }
    }
}

fn pads_1d(pad: &PaddingConfig1d, auto: &AutoPad, len: usize, k: usize, s: usize, d: usize) -> (usize, usize) {
    match auto {
        AutoPad::SameUpper | AutoPad::SameLower => same_pads(len, k, s, d, matches!(auto, AutoPad::SameUpper)),
        AutoPad::Valid => (0, 0),
        AutoPad::NotSet => pad.as_tuple(),
    }
}

fn reduce_axes(
    inp: &Inputs,
    axes: &onnx_ir::node::reduce::ReduceAxes,
    rank: usize,
    noop_empty: bool,
) -> Res<Option<Vec<usize>>> {
    use onnx_ir::node::reduce::ReduceAxes;
    let list: Vec<i64> = match axes {
        ReduceAxes::Static(v) => v.iter().map(|&a| a as i64).collect(),
        ReduceAxes::Runtime(r) => inp.ints(r)?,
    };
    if list.is_empty() {
        return Ok(if noop_empty { None } else { Some((0..rank).collect()) });
    }
    let mut out: Vec<usize> = list.iter().map(|&a| axis(a, rank)).collect::<Res<_>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

/// Reduces `v` over ONNX `axes` with a keep-dims reduction `op` (axes in tensor numbering).
fn reduce(v: &Value, axes: &[usize], keep: bool, op: impl Fn(Tensor<R>, usize) -> Tensor<R>) -> Res<Value> {
    let mut t = float_of(v);
    for &a in axes {
        t = op(t, v.axis(a));
    }
    let mut shape = v.shape.clone();
    for &a in axes {
        shape[a] = 1;
    }
    let out = f(t, shape.clone());
    if keep {
        Ok(out)
    } else {
        let kept = shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
        out.reshape(kept)
    }
}

/// `shape` with the ONNX Reshape rules: 0 copies the input's dimension (unless
/// `allowzero`), -1 takes what is left.
fn reshape_target(input: &[usize], target: &[i64]) -> Res<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            0 => out.push(*input.get(i).ok_or("Reshape: 0 beyond the input's rank")?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1)
            }
            d if d > 0 => out.push(d as usize),
            d => return Err(format!("Reshape: bad dimension {d}")),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("Reshape: cannot infer -1 for {input:?} → {target:?}"));
        }
        out[i] = total / known;
    }
    Ok(out)
}

fn to_dtype(v: Value, to: DType) -> Res<Value> {
    let shape = v.shape;
    let data = match (v.data, to) {
        (Data::F(t), DType::F32 | DType::F64 | DType::F16 | DType::BF16) => Data::F(t),
        (Data::F(t), DType::Bool(_)) => Data::B(t.not_equal_elem(0.0)),
        (Data::F(t), _) => Data::I(t.int()),
        (Data::I(t), DType::F32 | DType::F64 | DType::F16 | DType::BF16) => Data::F(t.float()),
        (Data::I(t), DType::Bool(_)) => Data::B(t.not_equal_elem(0)),
        (Data::I(t), _) => Data::I(t),
        (Data::B(t), DType::F32 | DType::F64 | DType::F16 | DType::BF16) => Data::F(t.int().float()),
        (Data::B(t), DType::Bool(_)) => Data::B(t),
        (Data::B(t), _) => Data::I(t.int()),
    };
    Ok(Value { data, shape })
}

/// Runs one node: its inputs in ONNX order (absent optional ones `None`) → its outputs.
pub fn run(node: &Node, mut inp: Inputs, opset: usize, device: &Device) -> Res<Vec<Value>> {
    use Node as N;
    let one = |v: Value| Ok(vec![v]);
    match node {
        N::Add(_) => one(binary(inp.req(0)?, inp.req(1)?, |a, b| a + b, |a, b| a + b)?),
        N::Sub(_) => one(binary(inp.req(0)?, inp.req(1)?, |a, b| a - b, |a, b| a - b)?),
        N::Mul(_) => one(binary(inp.req(0)?, inp.req(1)?, |a, b| a * b, |a, b| a * b)?),
        N::Div(_) => one(binary(inp.req(0)?, inp.req(1)?, |a, b| a / b, |a, b| a / b)?),
        N::Pow(_) => one(binary(inp.req(0)?, inp.req(1)?, |a, b| a.powf(b), |a, b| a.float().powf(b.float()).int())?),
        N::Sum(_) => one(variadic(inp, |a, b| a + b, |a, b| a + b)?),
        N::Max(_) => one(variadic(inp, |a, b| a.max_pair(b), |a, b| a.max_pair(b))?),
        N::Min(_) => one(variadic(inp, |a, b| a.min_pair(b), |a, b| a.min_pair(b))?),
        N::Mean(_) => {
            let n = inp.0.len() as f32;
            let s = variadic(inp, |a, b| a + b, |a, b| a + b)?;
            let shape = s.shape.clone();
            one(f(s.into_float("Mean")?.div_scalar(n), shape))
        }
        N::Sqrt(_) => unary(inp.take(0)?, |t| t.sqrt()),
        N::Neg(_) => unary(inp.take(0)?, |t| t.neg()),
        N::Abs(_) => unary(inp.take(0)?, |t| t.abs()),
        N::Exp(_) => unary(inp.take(0)?, |t| t.exp()),
        N::Log(_) => unary(inp.take(0)?, |t| t.log()),
        N::Reciprocal(_) => unary(inp.take(0)?, |t| t.recip()),
        N::Floor(_) => unary(inp.take(0)?, |t| t.floor()),
        N::Ceil(_) => unary(inp.take(0)?, |t| t.ceil()),
        N::Erf(_) => unary(inp.take(0)?, |t| t.erf()),
        N::Tanh(_) => unary(inp.take(0)?, activation::tanh),
        N::Sigmoid(_) => unary(inp.take(0)?, activation::sigmoid),
        N::Relu(_) => unary(inp.take(0)?, activation::relu),
        N::Softplus(_) => unary(inp.take(0)?, |t| activation::softplus(t, 1.0)),
        N::LeakyRelu(n) => unary(inp.take(0)?, |t| activation::leaky_relu(t, n.config.alpha)),
        N::Elu(n) => unary(inp.take(0)?, |t| activation::elu(t, n.config.alpha)),
        N::HardSigmoid(n) => unary(inp.take(0)?, |t| activation::hard_sigmoid(t, n.config.alpha, n.config.beta)),
        N::HardSwish(_) => unary(inp.take(0)?, activation::hard_swish),
        N::Gelu(n) => {
            use onnx_ir::node::gelu::GeluApproximate;
            match n.config.approximate {
                GeluApproximate::Exact => unary(inp.take(0)?, activation::gelu),
                GeluApproximate::Tanh => unary(inp.take(0)?, activation::gelu_approximate),
            }
        }
        N::PRelu(_) => {
            let x = inp.take(0)?;
            let slope = inp.take(1)?;
            // y = x if x >= 0 else slope * x, slope broadcast to x (unidirectional).
            let scaled = binary(&x, &slope, |a, b| a * b, |a, _| a)?;
            let xt = x.float("PRelu")?;
            let mask = xt.clone().lower_elem(0.0);
            one(f(xt.mask_where(mask, scaled.into_float("PRelu")?), x.shape))
        }
        N::Clip(n) => {
            use onnx_ir::node::clip::ClipInput;
            let bound = |c: &Option<ClipInput>| -> Res<Option<f32>> {
                Ok(match c {
                    None => None,
                    Some(ClipInput::Static(v)) => Some(*v as f32),
                    Some(ClipInput::Runtime(r)) => {
                        inp.get(r.input_index).map(|v| v.to_f32s()).transpose()?.and_then(|v| v.first().copied())
                    }
                })
            };
            let (lo, hi) = (bound(&n.config.min)?, bound(&n.config.max)?);
            let x = inp.take(0)?;
            let shape = x.shape.clone();
            let mut t = x.into_float("Clip")?;
            if let Some(lo) = lo {
                t = t.clamp_min(lo);
            }
            if let Some(hi) = hi {
                t = t.clamp_max(hi);
            }
            one(f(t, shape))
        }
        N::Softmax(n) => softmax(inp.take(0)?, n.config.axis, opset, false),
        N::LogSoftmax(n) => softmax(inp.take(0)?, n.config.axis, opset, true),
        N::Identity(_) => one(inp.take(0)?),
        N::Dropout(n) => {
            // Inference: the identity, and a mask that keeps everything.
            let x = inp.take(0)?;
            if n.outputs.len() < 2 {
                return one(x);
            }
            let dims = padded(&x.shape)?;
            let mask =
                Value { data: Data::B(Tensor::<R, Int>::ones(dims, device).equal_elem(1)), shape: x.shape.clone() };
            Ok(vec![x, mask])
        }
        N::Conv2d(n) => {
            let c = &n.config;
            let x = inp.req(0)?;
            let w = t4(inp.req(1)?)?;
            let b = inp.get(2).map(t1).transpose()?;
            let hw = [x.shape[2], x.shape[3]];
            let k = [w.dims()[2], w.dims()[3]];
            let pads = pads_2d(&c.padding, &c.auto_pad, hw, k, c.stride, c.dilation);
            let opts = ConvOptions::new_with_padding(c.stride, pads, c.dilation, c.groups);
            one(from_nd(conv2d(t4(x)?, w, b, opts))?)
        }
        N::Conv1d(n) => {
            let c = &n.config;
            let x = inp.req(0)?;
            let w = t3(inp.req(1)?)?;
            let b = inp.get(2).map(t1).transpose()?;
            let pad = pads_1d(&c.padding, &c.auto_pad, x.shape[2], w.dims()[2], c.stride, c.dilation);
            let opts = ConvOptions::new_with_padding([c.stride], [pad], [c.dilation], c.groups);
            one(from_nd(conv1d(t3(x)?, w, b, opts))?)
        }
        N::ConvTranspose2d(n) => {
            let c = &n.config;
            let x = t4(inp.req(0)?)?;
            let w = t4(inp.req(1)?)?;
            let b = inp.get(2).map(t1).transpose()?;
            let mut out_pad = c.padding_out;
            if let Some(target) = c.output_shape {
                let [_, _, h, wd] = x.dims();
                let k = [w.dims()[2], w.dims()[3]];
                for (i, size) in [h, wd].into_iter().enumerate() {
                    let natural = (size - 1) * c.stride[i] + (k[i] - 1) * c.dilation[i] + 1 - 2 * c.padding[i];
                    out_pad[i] =
                        target[i].checked_sub(natural).ok_or("ConvTranspose: output_shape below the natural size")?;
                }
            }
            if matches!(c.auto_pad, AutoPad::SameUpper | AutoPad::SameLower) {
                // SAME: the full result cropped to input × stride, the odd pixel at the end (upper) or start.
                let [_, _, h, wd] = x.dims();
                let opts = ConvTransposeOptions::new(c.stride, [0, 0], c.padding_out, c.dilation, c.groups);
                let y = conv_transpose2d(x, w, b, opts);
                let [yn, yc, yh, yw] = y.dims();
                let crop = |full: usize, want: usize| {
                    let total = full - want;
                    let begin = if matches!(c.auto_pad, AutoPad::SameUpper) { total / 2 } else { total - total / 2 };
                    begin..begin + want
                };
                let y = y.slice([0..yn, 0..yc, crop(yh, h * c.stride[0]), crop(yw, wd * c.stride[1])]);
                return one(from_nd(y)?);
            }
            let opts = ConvTransposeOptions::new(c.stride, c.padding, out_pad, c.dilation, c.groups);
            one(from_nd(conv_transpose2d(x, w, b, opts))?)
        }
        N::ConvTranspose1d(n) => {
            let c = &n.config;
            let x = t3(inp.req(0)?)?;
            let w = t3(inp.req(1)?)?;
            let b = inp.get(2).map(t1).transpose()?;
            let opts = ConvTransposeOptions::new([c.stride], [c.padding], [c.padding_out], [c.dilation], c.groups);
            one(from_nd(conv_transpose1d(x, w, b, opts))?)
        }
        N::BatchNormalization(n) => {
            use onnx_ir::node::batch_norm::BatchNormConfig;
            let eps = match &n.config {
                BatchNormConfig::Static(c) => c.epsilon,
                BatchNormConfig::Runtime(c) => c.epsilon,
            };
            let x = inp.take(0)?;
            let chan = |i: usize| -> Res<Tensor<R>> { channel_vector(inp.req(i)?, x.rank()) };
            let (scale, bias, mean, var) = (chan(1)?, chan(2)?, chan(3)?, chan(4)?);
            let a = scale / (var.add_scalar(eps).sqrt());
            let b = bias - mean * a.clone();
            let shape = x.shape.clone();
            one(f(x.into_float("BatchNormalization")? * a + b, shape))
        }
        N::InstanceNormalization(n) => {
            let x = inp.take(0)?;
            let axes: Vec<usize> = (2..x.rank()).collect();
            let scale = channel_vector(inp.req(1)?, x.rank())?;
            let bias = channel_vector(inp.req(2)?, x.rank())?;
            one(normalize(x, &axes, n.config.epsilon, scale, bias)?)
        }
        N::LayerNormalization(n) => {
            let x = inp.take(0)?;
            let first = axis(n.config.axis, x.rank())?;
            let axes: Vec<usize> = (first..x.rank()).collect();
            let scale = float_of(inp.req(1)?);
            let bias = inp.get(2).map(float_of).unwrap_or_else(|| scale.zeros_like());
            // Mean and InvStdDev, the optional outputs: the input's shape with the normalised axes 1.
            let mut stat_shape = x.shape.clone();
            for &a in &axes {
                stat_shape[a] = 1;
            }
            let tax: Vec<usize> = axes.iter().map(|&a| x.axis(a)).collect();
            let t = float_of(&x);
            let mean = t.clone().mean_dims(&tax);
            let inv = (t - mean.clone()).powi_scalar(2).mean_dims(&tax).add_scalar(n.config.epsilon).sqrt().recip();
            let y = normalize(x, &axes, n.config.epsilon, scale, bias)?;
            Ok(vec![y, f(mean, stat_shape.clone()), f(inv, stat_shape)])
        }
        N::MaxPool2d(n) => {
            let c = &n.config;
            let x = inp.req(0)?;
            let pads = pads_2d(&c.padding, &c.auto_pad, [x.shape[2], x.shape[3]], c.kernel_size, c.strides, c.dilation);
            let opts = MaxPoolOptions::new(c.kernel_size)
                .with_stride(c.strides)
                .with_padding_pairs(pads)
                .with_dilation(c.dilation)
                .with_ceil_mode(c.ceil_mode);
            one(from_nd(max_pool2d(t4(x)?, opts))?)
        }
        N::MaxPool1d(n) => {
            let c = &n.config;
            let x = inp.req(0)?;
            let pad = pads_1d(&c.padding, &c.auto_pad, x.shape[2], c.kernel_size, c.stride, c.dilation);
            let opts = MaxPoolOptions::new([c.kernel_size])
                .with_stride([c.stride])
                .with_padding_pairs([pad])
                .with_dilation([c.dilation])
                .with_ceil_mode(c.ceil_mode);
            one(from_nd(max_pool1d(t3(x)?, opts))?)
        }
        N::AveragePool2d(n) => {
            // Dilations are refused at load (`extra_checks`).
            let c = &n.config;
            let x = inp.req(0)?;
            let pads = pads_2d(&c.padding, &c.auto_pad, [x.shape[2], x.shape[3]], c.kernel_size, c.strides, c.dilation);
            let opts = AvgPoolOptions::new(c.kernel_size)
                .with_stride(c.strides)
                .with_padding_pairs(pads)
                .with_count_include_pad(c.count_include_pad)
                .with_ceil_mode(c.ceil_mode);
            one(from_nd(avg_pool2d(t4(x)?, opts))?)
        }
        N::AveragePool1d(n) => {
            let c = &n.config;
            let x = inp.req(0)?;
            let pad = pads_1d(&c.padding, &c.auto_pad, x.shape[2], c.kernel_size, c.stride, c.dilation);
            let opts = AvgPoolOptions::new([c.kernel_size])
                .with_stride([c.stride])
                .with_padding_pairs([pad])
                .with_count_include_pad(c.count_include_pad)
                .with_ceil_mode(c.ceil_mode);
            one(from_nd(avg_pool1d(t3(x)?, opts))?)
        }
        N::GlobalAveragePool(_) => {
            let x = inp.take(0)?;
            let axes: Vec<usize> = (2..x.rank()).collect();
            one(reduce(&x, &axes, true, |t, a| t.mean_dim(a))?)
        }
        N::GlobalMaxPool(_) => {
            let x = inp.take(0)?;
            let axes: Vec<usize> = (2..x.rank()).collect();
            one(reduce(&x, &axes, true, |t, a| t.max_dim(a))?)
        }
        N::Lrn(n) => {
            let c = &n.config;
            let x = inp.take(0)?;
            let [b, ch] = [x.shape[0], x.shape[1]];
            let rest: usize = x.shape[2..].iter().product();
            let size = c.size as usize;
            let sq = x.float("LRN")?.powi_scalar(2).reshape([b, 1, ch, rest]);
            // Sum over the channel window [c - floor((size-1)/2), c + ceil((size-1)/2)].
            let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
            let opts = AvgPoolOptions::new([size, 1]).with_stride([1, 1]).with_padding_pairs([(lo, hi), (0, 0)]);
            let sum = avg_pool2d(sq, opts).mul_scalar(size as f32);
            let den = sum.mul_scalar(c.alpha / size as f32).add_scalar(c.bias).powf_scalar(c.beta);
            let den = den.reshape(padded(&x.shape)?);
            let shape = x.shape.clone();
            one(f(x.into_float("LRN")? / den, shape))
        }
        N::Gemm(n) => {
            let c = &n.config;
            let mut a = t2(inp.req(0)?)?;
            let mut b = t2(inp.req(1)?)?;
            if c.trans_a != 0 {
                a = a.transpose();
            }
            if c.trans_b != 0 {
                b = b.transpose();
            }
            let mut y = a.matmul(b);
            if c.alpha != 1.0 {
                y = y.mul_scalar(c.alpha);
            }
            let y = from_nd(y)?;
            match inp.get(2) {
                Some(cv) if c.beta != 0.0 => {
                    let cv = Value { data: Data::F(float_of(cv).mul_scalar(c.beta)), shape: cv.shape.clone() };
                    one(binary(&y, &cv, |a, b| a + b, |a, b| a + b)?)
                }
                _ => one(y),
            }
        }
        N::Linear(n) => {
            let x = inp.take(0)?;
            let mut w = t2(inp.req(1)?)?;
            if n.config.transpose_weight {
                w = w.transpose();
            }
            let [k, out] = w.dims();
            let lead: Vec<usize> = x.shape[..x.rank() - 1].to_vec();
            let rows: usize = lead.iter().product();
            let mut y = x.into_float("Linear")?.reshape([rows, k]).matmul(w);
            if let Some(bias) = inp.get(2) {
                y = y + t1(bias)?.reshape([1, out]);
            }
            let mut shape = lead;
            shape.push(out);
            one(f(y.reshape(padded(&shape)?), shape))
        }
        N::MatMul(_) => one(matmul(inp.req(0)?, inp.req(1)?)?),
        N::Flatten(n) => {
            let x = inp.take(0)?;
            let a = n.config.axis.min(x.rank());
            let outer: usize = x.shape[..a].iter().product();
            let inner: usize = x.shape[a..].iter().product();
            one(x.reshape(vec![outer, inner])?)
        }
        N::Reshape(n) => {
            use onnx_ir::node::reshape::ReshapeInput;
            let target = match &n.config.shape {
                ReshapeInput::Static(v) => v.clone(),
                ReshapeInput::Runtime(r) => inp.ints(r)?,
            };
            let x = inp.take(0)?;
            let shape = reshape_target(&x.shape, &target)?;
            one(x.reshape(shape)?)
        }
        N::Transpose(n) => {
            let x = inp.take(0)?;
            let r = x.rank();
            let perm: Vec<usize> = if n.config.perm.is_empty() {
                (0..r).rev().collect()
            } else {
                n.config.perm.iter().map(|&p| axis(p, r)).collect::<Res<_>>()?
            };
            let mut full = [0usize; R];
            for (i, slot) in full.iter_mut().enumerate().take(R - r) {
                *slot = i;
            }
            for (i, &p) in perm.iter().enumerate() {
                full[R - r + i] = p + R - r;
            }
            let shape = perm.iter().map(|&p| x.shape[p]).collect();
            let data = each_kind!(x.data, t => t.permute(full));
            one(Value { data, shape })
        }
        N::Concat(n) => {
            let vals: Vec<Value> = (0..inp.0.len()).filter_map(|i| inp.0[i].take()).collect();
            let first = vals.first().ok_or("Concat without inputs")?;
            let r = first.rank();
            let a = n.config.axis;
            let mut shape = first.shape.clone();
            shape[a] = vals.iter().map(|v| v.shape[a]).sum();
            let ax = a + R - r;
            let data = if vals.iter().all(|v| matches!(v.data, Data::I(_))) {
                Data::I(Tensor::cat(
                    vals.into_iter().filter_map(|v| if let Data::I(t) = v.data { Some(t) } else { None }).collect(),
                    ax,
                ))
            } else {
                Data::F(Tensor::cat(vals.iter().map(float_of).collect(), ax))
            };
            one(Value { data, shape })
        }
        N::Split(n) => {
            use onnx_ir::node::split::SplitSizesInput;
            let x = inp.take(0)?;
            let a = n.config.axis;
            let len = x.shape[a];
            let sizes: Vec<usize> = match (&n.config.split_sizes, n.config.split_size) {
                (Some(SplitSizesInput::Static(v)), _) => v.clone(),
                (Some(SplitSizesInput::Runtime(r)), _) => inp.ints(r)?.into_iter().map(|v| v as usize).collect(),
                (None, _) if n.config.num_outputs.is_some() => {
                    let parts = n.config.num_outputs.unwrap_or(1);
                    let s = len.div_ceil(parts);
                    (0..parts).map(|i| s.min(len.saturating_sub(i * s))).collect()
                }
                (None, Some(s)) => {
                    let mut v = vec![s; len / s];
                    if len % s != 0 {
                        v.push(len % s);
                    }
                    v
                }
                (None, None) => {
                    let parts = n.outputs.len().max(1);
                    let s = len.div_ceil(parts);
                    (0..parts).map(|i| s.min(len.saturating_sub(i * s))).collect()
                }
            };
            let ax = x.axis(a);
            let mut out = Vec::new();
            let mut start = 0;
            for s in sizes {
                let mut shape = x.shape.clone();
                shape[a] = s;
                let range = start..start + s;
                let data = each_kind!(x.data.clone(), t => t.narrow(ax, range.start, range.len()));
                out.push(Value { data, shape });
                start += s;
            }
            Ok(out)
        }
        N::Slice(n) => {
            use onnx_ir::node::slice::SliceInput;
            let get = |s: &SliceInput| -> Res<Vec<i64>> {
                match s {
                    SliceInput::Static(v) => Ok(v.clone()),
                    SliceInput::Runtime(r) => inp.ints(r),
                }
            };
            let starts = get(&n.config.starts)?;
            let ends = get(&n.config.ends)?;
            let x = inp.req(0)?.clone();
            let r = x.rank();
            let axes: Vec<usize> = match &n.config.axes {
                Some(a) => get(a)?.into_iter().map(|a| axis(a, r)).collect::<Res<_>>()?,
                None => (0..starts.len()).collect(),
            };
            let steps = match &n.config.steps {
                Some(s) => get(s)?,
                None => vec![1; starts.len()],
            };
            let mut slices = vec![burn::tensor::Slice::new(0, None, 1); R];
            let mut shape = x.shape.clone();
            for (i, &a) in axes.iter().enumerate() {
                let dim = x.shape[a] as i64;
                let step = steps[i];
                if step == 0 {
                    return Err("Slice: step 0".into());
                }
                let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
                let norm = |v: i64| if v < 0 { v + dim } else { v };
                let (s, e) = if step > 0 {
                    (clampi(norm(starts[i]), 0, dim), clampi(norm(ends[i]), 0, dim))
                } else {
                    (clampi(norm(starts[i]), -1, dim - 1), clampi(norm(ends[i]), -1, dim - 1))
                };
                let count = if step > 0 {
                    ((e - s).max(0) + step - 1) / step
                } else {
                    ((s - e).max(0) + (-step) - 1) / (-step)
                };
                shape[a] = count as usize;
                slices[a + R - r] = if count == 0 {
                    burn::tensor::Slice::new(0, Some(0), 1)
                } else if step > 0 {
                    burn::tensor::Slice::new(s as isize, Some(e as isize), step as isize)
                } else {
                    // burn's negative step walks [start, end) backwards from its end.
                    let last = s - (count - 1) * (-step);
                    burn::tensor::Slice::new(last as isize, Some(s as isize + 1), step as isize)
                };
            }
            if shape.contains(&0) {
                return Err(format!("Slice: an empty result {shape:?} is not supported"));
            }
            let data = each_kind!(x.data, t => t.slice(slices.as_slice()));
            one(Value { data, shape })
        }
        N::Squeeze(n) => {
            use onnx_ir::node::squeeze::SqueezeInput;
            let x = inp.req(0)?.clone();
            let r = x.rank();
            let axes: Vec<usize> = match &n.config.axes {
                Some(SqueezeInput::Static(v)) => v.iter().map(|&a| axis(a, r)).collect::<Res<_>>()?,
                Some(SqueezeInput::Runtime(rt)) => inp.ints(rt)?.into_iter().map(|a| axis(a, r)).collect::<Res<_>>()?,
                None => (0..r).filter(|&i| x.shape[i] == 1).collect(),
            };
            let shape = x.shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
            one(x.reshape(shape)?)
        }
        N::Unsqueeze(n) => {
            use onnx_ir::node::unsqueeze::UnsqueezeConfig;
            let x = inp.req(0)?.clone();
            let list = match &n.config {
                UnsqueezeConfig::Static(v) => v.clone(),
                UnsqueezeConfig::Runtime(rt) => inp.ints(rt)?,
            };
            let out_rank = x.rank() + list.len();
            let mut axes: Vec<usize> = list.iter().map(|&a| axis(a, out_rank)).collect::<Res<_>>()?;
            axes.sort_unstable();
            let mut shape = x.shape.clone();
            for a in axes {
                shape.insert(a, 1);
            }
            one(x.reshape(shape)?)
        }
        N::Gather(n) => {
            let x = inp.req(0)?.clone();
            let idx = inp.req(1)?;
            let a = n.config.axis;
            let dim = x.shape[a] as i64;
            let ids: Vec<i64> = idx.to_i64s()?.into_iter().map(|i| if i < 0 { i + dim } else { i }).collect();
            if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= dim) {
                return Err(format!("Gather: index {bad} out of range for dimension {dim}"));
            }
            let n_ids = ids.len();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n_ids]), device);
            let ax = x.axis(a);
            let mut mid = x.shape.clone();
            mid[a] = n_ids;
            let data = each_kind!(x.data, t => t.select(ax, ids.clone()));
            let gathered = Value { data, shape: mid };
            let mut shape: Vec<usize> = x.shape[..a].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&x.shape[a + 1..]);
            one(gathered.reshape(shape)?)
        }
        N::Shape(n) => {
            let x = inp.req(0)?;
            let r = x.rank();
            let (s, e) = (n.config.start.min(r), n.config.end.min(r));
            let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            let len = dims.len();
            one(Value::ints(dims, vec![len], device)?)
        }
        N::Cast(n) => one(to_dtype(inp.take(0)?, n.config.to)?),
        N::Constant(n) => {
            let td = n.outputs.first().and_then(|o| o.value()).ok_or("Constant without a value")?;
            one(Value::from_tensor_data(&td, device)?)
        }
        N::ConstantOfShape(n) => {
            use onnx_ir::node::constant_of_shape::ConstantOfShapeShape;
            let shape: Vec<usize> = match &n.config.shape {
                ConstantOfShapeShape::Static(v) => v.iter().map(|&d| d as usize).collect(),
                ConstantOfShapeShape::Runtime(r) => inp.ints(r)?.into_iter().map(|d| d as usize).collect(),
            };
            let value = match &n.config.value {
                Some(td) => Value::from_tensor_data(td, device)?,
                None => Value::floats(vec![0.0], vec![1], device)?,
            };
            let dims = padded(&shape)?;
            let data = match value.data {
                Data::F(_) => Data::F(Tensor::<R>::full(dims, value.to_f32s()?[0], device)),
                Data::I(_) => Data::I(Tensor::<R, Int>::full(dims, value.to_i64s()?[0], device)),
                Data::B(_) => Data::B(Tensor::<R, Int>::full(dims, value.to_i64s()?[0], device).equal_elem(1)),
            };
            one(Value { data, shape })
        }
        N::Expand(n) => {
            use onnx_ir::node::expand::ExpandConfig;
            let target: Vec<usize> = match &n.config {
                ExpandConfig::Static(v) => v.iter().map(|&d| d as usize).collect(),
                ExpandConfig::Runtime(r) => inp.ints(r)?.into_iter().map(|d| d as usize).collect(),
            };
            let x = inp.req(0)?.clone();
            let shape = broadcast(&x.shape, &target)?;
            let dims = padded(&shape)?;
            let data = each_kind!(x.data, t => t.expand(dims));
            one(Value { data, shape })
        }
        N::Tile(n) => {
            use onnx_ir::node::tile::TileInput;
            let reps: Vec<usize> = match &n.config.repeats {
                TileInput::Static(v) => v.clone(),
                TileInput::Runtime(r) => inp.ints(r)?.into_iter().map(|d| d as usize).collect(),
            };
            let x = inp.req(0)?.clone();
            let mut full = [1usize; R];
            for (i, &rep) in reps.iter().enumerate() {
                full[R - x.rank() + i] = rep;
            }
            let shape = x.shape.iter().zip(&reps).map(|(d, r)| d * r).collect();
            let data = each_kind!(x.data, t => t.repeat(&full));
            one(Value { data, shape })
        }
        N::Range(n) => {
            use onnx_ir::node::range::RangeInput;
            let get = |r: &RangeInput| -> Res<(f64, bool)> {
                Ok(match r {
                    RangeInput::Static(v) => (*v as f64, true),
                    RangeInput::StaticFloat(v) => (*v, false),
                    RangeInput::Runtime(rt) => {
                        let v = inp.req(rt.input_index)?;
                        (v.to_f32s()?[0] as f64, matches!(v.data, Data::I(_)))
                    }
                })
            };
            let (s, si) = get(&n.config.start)?;
            let (l, _) = get(&n.config.limit)?;
            let (d, _) = get(&n.config.delta)?;
            let count = ((l - s) / d).ceil().max(0.0) as usize;
            if si {
                one(Value::ints((0..count).map(|i| (s + i as f64 * d) as i64).collect(), vec![count], device)?)
            } else {
                one(Value::floats((0..count).map(|i| (s + i as f64 * d) as f32).collect(), vec![count], device)?)
            }
        }
        N::ReduceMean(n) => reduce_node(&inp, &n.config, |t, a| t.mean_dim(a), |t| t),
        N::ReduceSum(n) => reduce_node(&inp, &n.config, |t, a| t.sum_dim(a), |t| t),
        N::ReduceMax(n) => reduce_node(&inp, &n.config, |t, a| t.max_dim(a), |t| t),
        N::ReduceMin(n) => reduce_node(&inp, &n.config, |t, a| t.min_dim(a), |t| t),
        N::ReduceProd(n) => reduce_node(&inp, &n.config, |t, a| t.prod_dim(a), |t| t),
        N::ReduceSumSquare(n) => reduce_pre(&inp, &n.config, |t| t.powi_scalar(2), |t| t),
        N::ReduceL1(n) => reduce_pre(&inp, &n.config, |t| t.abs(), |t| t),
        N::ReduceL2(n) => reduce_pre(&inp, &n.config, |t| t.powi_scalar(2), |t| t.sqrt()),
        N::Resize(n) => {
            use onnx_ir::node::resize::{ResizeScales, ResizeSizes};
            let c = &n.config;
            let x = inp.req(0)?.clone();
            let r = x.rank();
            let scales: Option<Vec<f32>> = match &c.scales {
                Some(ResizeScales::Static(v)) if !v.is_empty() => Some(v.clone()),
                Some(ResizeScales::Runtime(rt)) => match inp.get(rt.input_index) {
                    Some(v) if !v.is_empty() => Some(v.to_f32s()?),
                    _ => None,
                },
                _ => None,
            };
            let sizes: Option<Vec<usize>> = match &c.sizes {
                Some(ResizeSizes::Static(v)) if !v.is_empty() => Some(v.clone()),
                Some(ResizeSizes::Runtime(rt)) => match inp.get(rt.input_index) {
                    Some(v) if !v.is_empty() => Some(v.to_i64s()?.into_iter().map(|d| d as usize).collect()),
                    _ => None,
                },
                _ => None,
            };
            let (out_sizes, axis_scales): (Vec<usize>, Vec<f64>) = match (sizes, scales) {
                (Some(sz), _) if sz.len() == r => {
                    let sc = sz.iter().zip(&x.shape).map(|(&o, &i)| o as f64 / i as f64).collect();
                    (sz, sc)
                }
                (_, Some(sc)) if sc.len() == r => {
                    let sz = sc.iter().zip(&x.shape).map(|(&s, &i)| (i as f64 * s as f64).floor() as usize).collect();
                    (sz, sc.iter().map(|&s| s as f64).collect())
                }
                _ => return Err("Resize: neither sizes nor scales of the input's rank".into()),
            };
            let mut t = float_of(&x);
            let mut shape = x.shape.clone();
            for a in 0..r {
                if out_sizes[a] == shape[a] && (axis_scales[a] - 1.0).abs() < 1e-12 {
                    continue;
                }
                let taps = resize_taps(c, shape[a], out_sizes[a], axis_scales[a]);
                t = apply_taps(t, x.axis(a), &shape, a, &taps, device)?;
                shape[a] = out_sizes[a];
            }
            one(f(t, shape))
        }
        N::Pad(n) => {
            use onnx_ir::node::pad::{AxesInput, ConstantValueInput, PadInput, PadMode as M};
            let x = inp.req(0)?.clone();
            let r = x.rank();
            let pairs: Vec<(usize, usize)> = match &n.config.pads {
                PadInput::Static(v) => v.clone(),
                PadInput::Runtime { input, axes } => {
                    let raw = inp.ints(input)?;
                    let axes: Vec<usize> = match axes {
                        None => (0..r).collect(),
                        Some(AxesInput::Static(v)) => v.clone(),
                        Some(AxesInput::Runtime(rt)) => {
                            inp.ints(rt)?.into_iter().map(|a| axis(a, r)).collect::<Res<_>>()?
                        }
                    };
                    let k = axes.len();
                    if raw.len() != 2 * k || raw.iter().any(|&p| p < 0) {
                        return Err(format!("Pad: pads {raw:?} (negative pads are not supported)"));
                    }
                    let mut pairs = vec![(0, 0); r];
                    for (i, &a) in axes.iter().enumerate() {
                        pairs[a] = (raw[i] as usize, raw[i + k] as usize);
                    }
                    pairs
                }
            };
            let value = match &n.config.constant_value {
                ConstantValueInput::Static(v) => *v,
                ConstantValueInput::Runtime(rt) => {
                    inp.get(rt.input_index).map(|v| v.to_f32s()).transpose()?.map_or(0.0, |v| v[0])
                }
            };
            let mode = match n.config.mode {
                M::Constant => PadMode::Constant(value),
                M::Reflect => PadMode::Reflect,
                M::Edge => PadMode::Edge,
            };
            let mut full = [(0usize, 0usize); R];
            for (i, &p) in pairs.iter().enumerate() {
                full[R - r + i] = p;
            }
            let shape = x.shape.iter().zip(&pairs).map(|(d, (b, a))| d + b + a).collect();
            one(f(float_of(&x).pad(full, mode), shape))
        }
        N::Attention(n) => one(attention(&n.config, &inp, device)?),
        other => Err(format!("operator {} is not supported", other.node_type())),
    }
}

/// ONNX Attention (opset 23): softmax(Q·Kᵀ·scale [softcap] [+ mask] [causal])·V,
/// with grouped key/value heads; 3-D inputs `[batch, seq, heads·dim]` are split into heads.
fn attention(c: &onnx_ir::node::attention::AttentionConfig, inp: &Inputs, device: &Device) -> Res<Value> {
    let heads = |v: &Value, n: Option<usize>, what: &str| -> Res<Tensor<4>> {
        match v.shape.as_slice() {
            [_, _, _, _] => t4(v),
            &[b, s, hd] => {
                let h = n.ok_or_else(|| format!("Attention: a 3-D {what} needs its head count"))?;
                if h == 0 || hd % h != 0 {
                    return Err(format!("Attention: {what} width {hd} is not a multiple of {h} heads"));
                }
                Ok(t3(v)?.reshape([b, s, h, hd / h]).swap_dims(1, 2))
            }
            other => Err(format!("Attention: {what} of shape {other:?}")),
        }
    };
    let (q, k, v) = (inp.req(0)?, inp.req(1)?, inp.req(2)?);
    let three_d = q.rank() == 3;
    let q4 = heads(q, c.q_num_heads, "Q")?;
    let mut k4 = heads(k, c.kv_num_heads, "K")?;
    let mut v4 = heads(v, c.kv_num_heads, "V")?;
    let [b, qh, sq, d] = q4.dims();
    let [_, kvh, skv, _] = k4.dims();
    if kvh != qh {
        if kvh == 0 || qh % kvh != 0 {
            return Err(format!("Attention: {qh} query heads over {kvh} key/value heads"));
        }
        // Each key/value head serves qh / kvh consecutive query heads.
        let g = qh / kvh;
        let rep = |t: Tensor<4>| {
            let [b, h, s, e] = t.dims();
            t.reshape([b, h, 1, s, e]).expand([b, h, g, s, e]).reshape([b, h * g, s, e])
        };
        k4 = rep(k4);
        v4 = rep(v4);
    }
    let scale = c.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
    let mut qk = q4.matmul(k4.swap_dims(2, 3)).mul_scalar(scale);
    if c.softcap > 0.0 {
        let cap = c.softcap as f32;
        qk = qk.div_scalar(cap).tanh().mul_scalar(cap);
    }
    if let Some(mask) = inp.get(3) {
        let dims = {
            let mut s = vec![1; 4 - mask.rank().min(4)];
            s.extend_from_slice(&mask.shape);
            s
        };
        let [m0, m1, m2, m3] =
            <[usize; 4]>::try_from(dims.as_slice()).map_err(|_| "Attention: mask rank above 4".to_string())?;
        let target = [b, qh, sq, skv];
        qk = match &mask.data {
            Data::B(t) => {
                let keep = t.clone().reshape([m0, m1, m2, m3]).expand(target);
                qk.mask_fill(keep.bool_not(), f32::NEG_INFINITY)
            }
            _ => qk + float_of(mask).reshape([m0, m1, m2, m3]).expand(target),
        };
    }
    if c.is_causal {
        // Upper-left aligned, as the ONNX reference: query i sees keys j <= i.
        let future: Vec<bool> = (0..sq).flat_map(|i| (0..skv).map(move |j| j > i)).collect();
        let future = Tensor::<2, burn::tensor::Bool>::from_data(TensorData::new(future, [sq, skv]), device);
        qk = qk.mask_fill(future.reshape([1, 1, sq, skv]).expand([b, qh, sq, skv]), f32::NEG_INFINITY);
    }
    // A fully masked row is 0, not NaN.
    let p = activation::softmax(qk, 3);
    let p = p.clone().mask_fill(p.is_nan(), 0.0);
    let y = p.matmul(v4);
    if three_d {
        let [b, h, s, e] = y.dims();
        return from_nd(y.swap_dims(1, 2).reshape([b, s, h * e]));
    }
    from_nd(y)
}

/// For each output index along one axis: the input indices it reads and their weights.
type Taps = Vec<Vec<(usize, f32)>>;

/// The ONNX Resize sampling of one axis of `len` → `out` (scale `scale`), as taps.
fn resize_taps(c: &onnx_ir::node::resize::ResizeConfig, len: usize, out: usize, scale: f64) -> Taps {
    use onnx_ir::node::resize::{CoordinateTransformMode as C, NearestMode, ResizeMode};
    let last = len as f64 - 1.0;
    // The resized length before rounding: ONNX maps coordinates with it.
    let out_f = len as f64 * scale;
    (0..out)
        .map(|o| {
            let o = o as f64;
            let x = match c.coordinate_transformation_mode {
                C::HalfPixel => (o + 0.5) / scale - 0.5,
                C::PytorchHalfPixel => {
                    if out_f > 1.0 {
                        (o + 0.5) / scale - 0.5
                    } else {
                        0.0
                    }
                }
                C::AlignCorners => {
                    if out_f > 1.0 {
                        o * last / (out_f - 1.0)
                    } else {
                        0.0
                    }
                }
                C::Asymmetric => o / scale,
                C::TfHalfPixelForNn => (o + 0.5) / scale,
                C::TfCropAndResize => o / scale,
            };
            let clamp = |i: i64| i.clamp(0, len as i64 - 1) as usize;
            match c.mode {
                ResizeMode::Nearest => {
                    let i = match c.nearest_mode {
                        NearestMode::RoundPreferFloor => {
                            if x.fract() == 0.5 {
                                x.floor()
                            } else {
                                x.round()
                            }
                        }
                        NearestMode::RoundPreferCeil => x.round(),
                        NearestMode::Floor => x.floor(),
                        NearestMode::Ceil => x.ceil(),
                    };
                    vec![(clamp(i as i64), 1.0)]
                }
                ResizeMode::Linear => {
                    let x = x.clamp(0.0, last.max(0.0));
                    let x0 = x.floor();
                    let w = (x - x0) as f32;
                    vec![(clamp(x0 as i64), 1.0 - w), (clamp(x0 as i64 + 1), w)]
                }
                ResizeMode::Cubic => {
                    let a = c.cubic_coeff_a as f64;
                    let x0 = x.floor();
                    let t = x - x0;
                    let ws = [
                        ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a,
                        ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
                        ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0,
                        ((a * (2.0 - t) - 5.0 * a) * (2.0 - t) + 8.0 * a) * (2.0 - t) - 4.0 * a,
                    ];
                    let mut taps: Vec<(i64, f64)> = (0..4).map(|k| (x0 as i64 - 1 + k as i64, ws[k])).collect();
                    if c.exclude_outside != 0 {
                        taps.retain(|(i, _)| *i >= 0 && *i < len as i64);
                        let sum: f64 = taps.iter().map(|(_, w)| w).sum();
                        taps.iter_mut().for_each(|(_, w)| *w /= sum);
                    }
                    taps.into_iter().map(|(i, w)| (clamp(i), w as f32)).collect()
                }
            }
        })
        .collect()
}

/// Σ_k select(t, axis, index_k) · weight_k: separable resampling of one axis on burn ops.
fn apply_taps(t: Tensor<R>, ax: usize, shape: &[usize], a: usize, taps: &Taps, device: &Device) -> Res<Tensor<R>> {
    let width = taps.iter().map(Vec::len).max().unwrap_or(0);
    let out = taps.len();
    let mut wshape = vec![1; shape.len()];
    wshape[a] = out;
    let mut acc: Option<Tensor<R>> = None;
    for k in 0..width {
        let (ids, ws): (Vec<i64>, Vec<f32>) =
            taps.iter().map(|row| row.get(k).map_or((row[0].0 as i64, 0.0), |&(i, w)| (i as i64, w))).unzip();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [out]), device);
        let ws = Tensor::<R>::from_data(TensorData::new(ws, padded(&wshape)?), device);
        let term = t.clone().select(ax, ids) * ws;
        acc = Some(match acc {
            Some(s) => s + term,
            None => term,
        });
    }
    acc.ok_or_else(|| "Resize: no taps".to_string())
}

/// A per-channel vector (BatchNormalization, InstanceNormalization) shaped to
/// broadcast along axis 1 of a rank-`rank` input.
fn channel_vector(v: &Value, rank: usize) -> Res<Tensor<R>> {
    let mut shape = vec![1; rank];
    shape[1] = v.len();
    Ok(v.float("channel parameter")?.reshape(padded(&shape)?))
}

/// (x − mean) / sqrt(var + eps) · scale + bias, statistics over `axes`.
fn normalize(x: Value, axes: &[usize], eps: f64, scale: Tensor<R>, bias: Tensor<R>) -> Res<Value> {
    let shape = x.shape.clone();
    let tax: Vec<usize> = axes.iter().map(|&a| x.axis(a)).collect();
    let t = x.into_float("normalization")?;
    let mean = t.clone().mean_dims(&tax);
    let centred = t - mean;
    let var = centred.clone().powi_scalar(2).mean_dims(&tax);
    Ok(f(centred / var.add_scalar(eps).sqrt() * scale + bias, shape))
}

fn softmax(x: Value, a: usize, opset: usize, log: bool) -> Res<Vec<Value>> {
    let shape = x.shape.clone();
    let r = x.rank();
    let op = |t: Tensor<R>, ax: usize| if log { activation::log_softmax(t, ax) } else { activation::softmax(t, ax) };
    if opset < 13 && a + 1 < r {
        // Before opset 13, Softmax flattens to [prod(..axis), prod(axis..)].
        let outer: usize = shape[..a].iter().product();
        let flat = x.reshape(vec![outer, shape[a..].iter().product()])?;
        let flat_shape = flat.shape.clone();
        let t = op(flat.into_float("Softmax")?, R - 1);
        return Ok(vec![f(t, flat_shape).reshape(shape)?]);
    }
    let ax = x.axis(a);
    Ok(vec![f(op(x.into_float("Softmax")?, ax), shape)])
}

fn reduce_node(
    inp: &Inputs,
    c: &onnx_ir::node::reduce::ReduceConfig,
    op: impl Fn(Tensor<R>, usize) -> Tensor<R>,
    post: impl Fn(Tensor<R>) -> Tensor<R>,
) -> Res<Vec<Value>> {
    let x = inp.req(0)?;
    let Some(axes) = reduce_axes(inp, &c.axes, x.rank(), c.noop_with_empty_axes)? else {
        return Ok(vec![x.clone()]);
    };
    let v = reduce(x, &axes, c.keepdims, op)?;
    let shape = v.shape.clone();
    Ok(vec![f(post(v.into_float("reduce")?), shape)])
}

fn reduce_pre(
    inp: &Inputs,
    c: &onnx_ir::node::reduce::ReduceConfig,
    pre: impl Fn(Tensor<R>) -> Tensor<R>,
    post: impl Fn(Tensor<R>) -> Tensor<R>,
) -> Res<Vec<Value>> {
    let x = inp.req(0)?;
    let pre_x = f(pre(float_of(x)), x.shape.clone());
    let Some(axes) = reduce_axes(inp, &c.axes, x.rank(), c.noop_with_empty_axes)? else {
        return Ok(vec![pre_x]);
    };
    let v = reduce(&pre_x, &axes, c.keepdims, |t, a| t.sum_dim(a))?;
    let shape = v.shape.clone();
    Ok(vec![f(post(v.into_float("reduce")?), shape)])
}

/// numpy `matmul`: 1-D operands promoted and their axis dropped, batch dims broadcast.
fn matmul(a: &Value, b: &Value) -> Res<Value> {
    let (mut sa, mut sb) = (a.shape.clone(), b.shape.clone());
    let (va, vb) = (sa.len() == 1, sb.len() == 1);
    if va {
        sa.insert(0, 1);
    }
    if vb {
        sb.push(1);
    }
    let (ra, rb) = (sa.len(), sb.len());
    if ra < 2 || rb < 2 {
        return Err("MatMul of scalars".into());
    }
    let batch = broadcast(&sa[..ra - 2], &sb[..rb - 2])?;
    let (m, k, k2, n) = (sa[ra - 2], sa[ra - 1], sb[rb - 2], sb[rb - 1]);
    if k != k2 {
        return Err(format!("MatMul: {:?} × {:?}", a.shape, b.shape));
    }
    let full = |x: usize, y: usize| -> Res<[usize; R]> {
        let mut s = batch.clone();
        s.extend([x, y]);
        padded(&s)
    };
    let ta = float_of(a).reshape(padded(&sa)?).expand(full(m, k)?);
    let tb = float_of(b).reshape(padded(&sb)?).expand(full(k, n)?);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let y = f(ta.matmul(tb), shape.clone());
    let mut out = shape;
    if vb {
        out.pop();
    }
    if va {
        out.remove(out.len() - if vb { 1 } else { 2 });
    }
    y.reshape(out)
}
