//! The ONNX project's backend test suite, run through the runner: each case
//! is a `model.onnx` with `test_data_set_N/input_K.pb` and the expected
//! `output_K.pb` (see `bench/python/onnx_backend_data.py`, which writes the
//! suite the `onnx` wheel ships into that layout).
//!
//! Tolerances are the suite's own: node cases `|got − want| ≤ atol + rtol·|want|`
//! with rtol 1e-3, atol 1e-7; light models `max |diff| ≤ 1e-4 · max |want|`.

use super::value::Value;
use super::{OnnxModel, Options};
use burn::prelude::*;
use burn::tensor::TensorData;
use onnx_ir::{Message, TensorProto};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The ONNX operators the runner claims: every one is executed on burn ops
/// and has its node cases run by the conformance suite.
pub const CLAIMED: &[&str] = &[
    "Abs",
    "Add",
    "Attention",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LRN",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
];

/// One case's outcome (`bench/conformance --json` prints one per line).
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// `node` or `light`.
    pub suite: String,
    /// The case directory's name.
    pub case: String,
    /// The operator under test (node cases: the graph's single operator, or
    /// `A+B` for a graph of several).
    pub op: String,
    /// Within tolerance on every output of every data set.
    pub passed: bool,
    /// Largest absolute difference seen (0 when nothing ran).
    pub max_abs_diff: f64,
    /// Why it failed or was refused (empty when passed).
    pub reason: String,
    /// Nodes run by a CPU kernel or folded at load ([`OnnxModel::overrides`]).
    pub overrides: usize,
}

/// Reads a serialized `TensorProto` (`input_0.pb`) as tensor data.
pub fn read_tensor_pb(path: &Path) -> Result<TensorData, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = TensorProto::parse_from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    tensor_proto_data(&t).map_err(|e| format!("{}: {e}", path.display()))
}

fn tensor_proto_data(t: &TensorProto) -> Result<TensorData, String> {
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let raw = &t.raw_data;
    macro_rules! le {
        ($ty:ty, $w:expr) => {
            raw.chunks_exact($w).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or_default())).collect::<Vec<$ty>>()
        };
    }
    let data = match t.data_type {
        1 => TensorData::new(if raw.is_empty() { t.float_data.clone() } else { le!(f32, 4) }, shape),
        11 => TensorData::new(if raw.is_empty() { t.double_data.clone() } else { le!(f64, 8) }, shape),
        7 => TensorData::new(if raw.is_empty() { t.int64_data.clone() } else { le!(i64, 8) }, shape),
        6 => TensorData::new(if raw.is_empty() { t.int32_data.clone() } else { le!(i32, 4) }, shape),
        9 => {
            let v: Vec<bool> = if raw.is_empty() {
                t.int32_data.iter().map(|&b| b != 0).collect()
            } else {
                raw.iter().map(|&b| b != 0).collect()
            };
            TensorData::new(v, shape)
        }
        4 => TensorData::new(
            if raw.is_empty() { t.int32_data.iter().map(|&v| v as u16).collect() } else { le!(u16, 2) },
            shape,
        ),
        5 => TensorData::new(
            if raw.is_empty() { t.int32_data.iter().map(|&v| v as i16).collect() } else { le!(i16, 2) },
            shape,
        ),
        12 => TensorData::new(
            if raw.is_empty() { t.uint64_data.iter().map(|&v| v as u32).collect() } else { le!(u32, 4) },
            shape,
        ),
        13 => TensorData::new(if raw.is_empty() { t.uint64_data.clone() } else { le!(u64, 8) }, shape),
        2 => TensorData::new(
            if raw.is_empty() { t.int32_data.iter().map(|&v| v as u8).collect() } else { raw.to_vec() },
            shape,
        ),
        3 => TensorData::new(
            if raw.is_empty() {
                t.int32_data.iter().map(|&v| v as i8).collect()
            } else {
                raw.iter().map(|&b| b as i8).collect()
            },
            shape,
        ),
        other => return Err(format!("tensor type {other} is not read here")),
    };
    if data.num_elements() != n {
        return Err(format!("{} values for shape {:?}", data.num_elements(), t.dims));
    }
    Ok(data)
}

/// The case directories of `suite` (`node` or `light`) under `data`, sorted.
pub fn case_dirs(data: &Path, suite: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join(suite))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("model.onnx").exists()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The operator a node case tests: its graph's operators, joined.
pub fn case_op(dir: &Path) -> String {
    std::fs::read(dir.join("model.onnx"))
        .ok()
        .and_then(|b| OnnxModel::inspect(&b).ok())
        .map(|i| i.operators.keys().cloned().collect::<Vec<_>>().join("+"))
        .unwrap_or_default()
}

/// Runs one case directory through the runner on `device` with `options`.
pub fn run_case(dir: &Path, suite: &str, device: &Device, options: Options) -> CaseResult {
    let case = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = CaseResult {
        suite: suite.into(),
        case,
        op: String::new(),
        passed: false,
        max_abs_diff: 0.0,
        reason: String::new(),
        overrides: 0,
    };
    let bytes = match std::fs::read(dir.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => {
            out.reason = e.to_string();
            return out;
        }
    };
    let model = match OnnxModel::from_bytes_with(&bytes, device, options) {
        Ok(m) => m,
        Err(e) => {
            out.op = OnnxModel::inspect(&bytes)
                .map(|i| i.operators.keys().cloned().collect::<Vec<_>>().join("+"))
                .unwrap_or_default();
            out.reason = format!("refused at load: {e}");
            return out;
        }
    };
    out.op = model.inspection.operators.keys().cloned().collect::<Vec<_>>().join("+");
    out.overrides = model.overrides.values().sum();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.sort();
    for set in sets {
        match run_set(&model, &set, suite, device) {
            Ok(diff) => out.max_abs_diff = out.max_abs_diff.max(diff),
            Err(e) => {
                out.reason = e;
                return out;
            }
        }
    }
    out.passed = true;
    out
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    (0..).map(|i| dir.join(format!("{prefix}_{i}.pb"))).take_while(|p| p.exists()).collect()
}

/// One data set: the largest absolute difference, or why it is out of tolerance.
fn run_set(model: &OnnxModel, set: &Path, suite: &str, device: &Device) -> Result<f64, String> {
    let inputs = numbered(set, "input")
        .iter()
        .map(|p| read_tensor_pb(p).and_then(|td| Value::from_tensor_data(&td, device)))
        .collect::<Result<Vec<_>, _>>()?;
    let wants = numbered(set, "output").iter().map(|p| read_tensor_pb(p)).collect::<Result<Vec<_>, _>>()?;
    let gots = model.run(inputs).map_err(|e| e.to_string())?;
    let mut worst = 0.0f64;
    for (k, (got, want)) in gots.iter().zip(&wants).enumerate() {
        let want_shape: Vec<usize> = want.shape().to_vec();
        if got.shape != want_shape {
            return Err(format!("output {k}: shape {:?}, expected {want_shape:?}", got.shape));
        }
        let g: Vec<f64> = got.to_f32s()?.into_iter().map(f64::from).collect();
        let w: Vec<f64> = want.clone().convert::<f64>().try_to_vec::<f64>().map_err(|e| format!("{e:?}"))?;
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let d = (a - b).abs();
            if a.is_nan() != b.is_nan() {
                return Err(format!("output {k}[{i}]: {a} vs {b}"));
            }
            if d.is_nan() || (a.is_infinite() && a == b) {
                continue;
            }
            worst = worst.max(d);
            let ok =
                if suite == "light" { d <= 1e-4 * scale.max(f64::MIN_POSITIVE) } else { d <= 1e-7 + 1e-3 * b.abs() };
            if !ok {
                return Err(format!("output {k}[{i}]: {a} vs {b} (|diff| {d:.3e})"));
            }
        }
    }
    if gots.len() < wants.len() {
        return Err(format!("{} outputs, expected {}", gots.len(), wants.len()));
    }
    Ok(worst)
}
