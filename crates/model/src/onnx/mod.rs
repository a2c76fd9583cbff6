//! The ONNX graph runner: a model file parsed by burn's own ONNX parser
//! (`onnx-ir`: typed configs per operator, opsets 1–24, shape inference,
//! constant folding) and executed node by node on burn tensors of the
//! configured backend. No code generation: a new model is a new file.
//!
//! At load ([`OnnxModel::from_bytes`]) every node is checked against the
//! operators the runner executes ([`ops::supported`]) and refused with its
//! operator, node name and opset if it is not one of them; initializers and
//! constants move to the device once; each intermediate value is freed after
//! its last reader. [`OnnxModel::run`] executes the graph on one set of
//! inputs.

pub mod conformance;
pub mod host;
pub mod ops;
pub mod plan;
pub mod value;

pub use plan::Options;

use crate::error::ModelError;
use burn::prelude::*;
use host::Held;
use onnx_ir::{ArgType, Message, ModelProto, Node, OnnxGraphBuilder, ValueSource};
use std::collections::{BTreeMap, HashMap};
use value::Value;

/// Where a node input comes from.
#[derive(Debug, Clone)]
enum Arg {
    /// An optional input left out.
    Absent,
    /// An initializer or constant, on the device since load.
    Const(Box<Value>),
    /// The output of an earlier node or a graph input; `last` when this read
    /// is the value's last, so it is moved out instead of cloned.
    Slot { slot: usize, last: bool },
}

#[derive(Debug, Clone)]
struct Step {
    node: Node,
    /// ONNX operator type and node name, as the file has them (for errors).
    label: String,
    args: Vec<Arg>,
    outs: Vec<Option<usize>>,
    /// The CPU kernel that runs this node instead of burn's op ([`plan::choose_kernels`]).
    kernel: Option<host::Kernel>,
    /// Nodes folded or fused into this one (their labels).
    folded: Vec<String>,
}

/// A graph input or output as the file declares it.
#[derive(Debug, Clone)]
pub struct Port {
    /// Its name.
    pub name: String,
    /// Element type (`F32`, `I64`, …).
    pub dtype: String,
    /// Dimensions, `None` where symbolic (a dynamic batch).
    pub shape: Vec<Option<usize>>,
}

impl Port {
    fn from_arg(a: &onnx_ir::Argument) -> Port {
        let (dtype, shape) = match &a.ty {
            ArgType::Tensor(t) => {
                (format!("{:?}", t.dtype), t.static_shape.clone().unwrap_or_else(|| vec![None; t.rank]))
            }
            ArgType::ScalarNative(d) | ArgType::ScalarTensor(d) => (format!("{d:?}"), vec![]),
            ArgType::Shape(r) => ("I64".into(), vec![Some(*r)]),
        };
        Port { name: a.name.clone(), dtype, shape }
    }

    /// `[?, 3, 224, 224]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// What `scorefleet-model inspect` prints: the graph's interface, opset,
/// operators and whether the runner executes every one.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<Port>,
    /// Graph outputs.
    pub outputs: Vec<Port>,
    /// The default domain's opset.
    pub opset: usize,
    /// Operator type (as in the file) → node count.
    pub operators: BTreeMap<String, usize>,
    /// One line per node the runner cannot execute (empty: all supported).
    pub unsupported: Vec<String>,
    /// For each output, the operator type of the node that produces it.
    pub output_ops: Vec<String>,
}

/// A parsed, checked ONNX graph on a burn device.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    steps: Vec<Step>,
    input_slots: Vec<usize>,
    outputs: Vec<Arg>,
    slots: usize,
    opset: usize,
    device: Device,
    /// The file's interface and operators.
    pub inspection: Inspection,
    /// What load changed: CPU kernel → how many nodes run on it, and
    /// `BatchNormalization (folded)` → how many were folded. Empty with
    /// [`Options::burn_only`].
    pub overrides: BTreeMap<String, usize>,
    /// What load was asked to do.
    pub options: Options,
}

/// The file's own view: opset, and for each node output its operator type and node name.
struct ProtoView {
    opset: usize,
    by_output: HashMap<String, (String, String)>,
    operators: BTreeMap<String, usize>,
    /// Nodes whose settings onnx-ir keeps as inputs and the runner refuses (Dropout's training_mode).
    refused: Vec<String>,
    /// The graph's input (initializers excluded) and output names as the file
    /// has them (onnx-ir renames values).
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// Lower-cased operator type → the names of its nodes, in file order
    /// (onnx-ir names nodes `<type><n>`, counting per type in that order).
    names_by_op: HashMap<String, Vec<String>>,
}

fn proto_view(bytes: &[u8]) -> Result<ProtoView, ModelError> {
    let model = ModelProto::parse_from_bytes(bytes).map_err(|e| ModelError::Onnx(format!("not an ONNX model: {e}")))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version as usize);
    let mut by_output = HashMap::new();
    let mut operators = BTreeMap::new();
    let mut refused = Vec::new();
    let mut names_by_op: HashMap<String, Vec<String>> = HashMap::new();
    for n in &model.graph.node {
        names_by_op.entry(n.op_type.to_ascii_lowercase()).or_default().push(n.name.clone());
        if n.op_type == "Attention"
            && n.attribute.iter().any(|a| (a.name == "left_window_size" || a.name == "right_window_size") && a.i >= 0)
        {
            refused.push(format!(
                "Attention (node {:?}, opset {opset}): a sliding window is not supported by the runner",
                n.name
            ));
        }
        if n.op_type == "Dropout" && n.input.get(2).is_some_and(|t| !t.is_empty()) {
            refused.push(format!(
                "Dropout (node {:?}, opset {opset}): a training_mode input is not supported by the runner",
                n.name
            ));
        }
        let op = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        *operators.entry(op.clone()).or_insert(0) += 1;
        for o in &n.output {
            by_output.insert(o.clone(), (op.clone(), n.name.clone()));
        }
    }
    let inits: std::collections::HashSet<&str> = model.graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input_names =
        model.graph.input.iter().map(|i| i.name.clone()).filter(|n| !inits.contains(n.as_str())).collect();
    let output_names = model.graph.output.iter().map(|o| o.name.clone()).collect();
    Ok(ProtoView { opset, by_output, operators, refused, input_names, output_names, names_by_op })
}

impl OnnxModel {
    /// Only the interface and the operator check, without moving weights to a device.
    pub fn inspect(bytes: &[u8]) -> Result<Inspection, ModelError> {
        let view = proto_view(bytes)?;
        let graph = parse(bytes)?;
        Ok(inspection(&graph, &view))
    }

    /// Parses `bytes`, refuses a graph with an operator the runner does not
    /// execute (naming it, its node and the opset), and loads the constants on
    /// `device`, with the load-time rewrites and CPU kernels `device` gets by
    /// default ([`Options::for_device`]).
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<OnnxModel, ModelError> {
        Self::from_bytes_with(bytes, device, Options::for_device(device))
    }

    /// [`OnnxModel::from_bytes`] with the rewrites and kernels of `options`.
    pub fn from_bytes_with(bytes: &[u8], device: &Device, options: Options) -> Result<OnnxModel, ModelError> {
        let view = proto_view(bytes)?;
        let graph = parse(bytes)?;
        let inspection = inspection(&graph, &view);
        if let Some(first) = inspection.unsupported.first() {
            return Err(ModelError::Unsupported(format!(
                "{first}{}",
                if inspection.unsupported.len() > 1 {
                    format!(
                        " (and {} more: {})",
                        inspection.unsupported.len() - 1,
                        inspection.unsupported[1..].join("; ")
                    )
                } else {
                    String::new()
                }
            )));
        }
        for p in &inspection.inputs {
            if ["F16", "BF16"].contains(&p.dtype.as_str()) || p.dtype.starts_with("Q") {
                return Err(ModelError::Unsupported(format!("graph input {} of type {}", p.name, p.dtype)));
            }
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let slot_of = |name: &str, names: &mut HashMap<String, usize>| -> usize {
            let next = names.len();
            *names.entry(name.to_string()).or_insert(next)
        };
        let input_slots: Vec<usize> = graph.inputs.iter().map(|a| slot_of(&a.name, &mut names)).collect();
        let konst = |a: &onnx_ir::Argument| -> Result<Option<Value>, ModelError> {
            if matches!(a.value_source, ValueSource::Static(_) | ValueSource::Constant)
                && let Some(td) = a.value()
            {
                return Value::from_tensor_data(&td, device)
                    .map(Some)
                    .map_err(|e| ModelError::Unsupported(format!("constant {}: {e}", a.name)));
            }
            Ok(None)
        };
        let mut steps = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let label = label(node, &view);
            let mut args = Vec::new();
            for a in node.inputs() {
                let arg = if a.is_optional() || (a.name.is_empty() && !a.is_static()) {
                    Arg::Absent
                } else if let Some(v) = konst(a)? {
                    Arg::Const(Box::new(v))
                } else if let Some(&slot) = names.get(&a.name) {
                    Arg::Slot { slot, last: false }
                } else {
                    return Err(ModelError::Onnx(format!("{label}: input {} is produced by no node", a.name)));
                };
                args.push(arg);
            }
            let outs =
                node.outputs().iter().map(|o| (!o.name.is_empty()).then(|| slot_of(&o.name, &mut names))).collect();
            steps.push(Step { node: node.clone(), label, args, outs, kernel: None, folded: Vec::new() });
        }
        let mut outputs: Vec<Arg> = Vec::new();
        for o in &graph.outputs {
            outputs.push(if let Some(v) = konst(o)? {
                Arg::Const(Box::new(v))
            } else {
                let slot = *names
                    .get(&o.name)
                    .ok_or_else(|| ModelError::Onnx(format!("output {} is produced by no node", o.name)))?;
                Arg::Slot { slot, last: false }
            });
        }
        let slots = names.len();
        let mut overrides = BTreeMap::new();
        if options.fold {
            let computed = plan::fold_constants(&mut steps, &mut outputs, slots, view.opset, device);
            if computed > 0 {
                overrides.insert("constant (computed at load)".to_string(), computed);
            }
            let folded = plan::fold_batch_norms(&mut steps, &outputs, slots, device)?;
            if folded > 0 {
                overrides.insert("BatchNormalization (folded)".to_string(), folded);
            }
        }
        if options.cpu_kernels {
            plan::choose_kernels(&mut steps, &outputs, slots, options.winograd)?;
            for k in steps.iter().filter_map(|s| s.kernel.as_ref()) {
                *overrides.entry(k.name()).or_insert(0) += 1;
            }
        }
        mark_last_reads(&mut steps, &outputs);
        Ok(OnnxModel {
            steps,
            input_slots,
            outputs,
            slots,
            opset: view.opset,
            device: device.clone(),
            inspection,
            overrides,
            options,
        })
    }

    /// The device the graph runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the graph: `inputs` in the order of [`Inspection::inputs`] → the
    /// outputs in the order of [`Inspection::outputs`]. A failing or
    /// panicking operator is an `Inference` error naming its node.
    pub fn run(&self, inputs: Vec<Value>) -> Result<Vec<Value>, ModelError> {
        if inputs.len() != self.input_slots.len() {
            return Err(ModelError::Inference(format!(
                "{} inputs given, the graph takes {}",
                inputs.len(),
                self.input_slots.len()
            )));
        }
        let mut env: Vec<Option<Held>> = vec![None; self.slots];
        for (slot, v) in self.input_slots.iter().zip(inputs) {
            env[*slot] = Some(Held::Burn(v));
        }
        let device = &self.device;
        for step in &self.steps {
            let mut given = Vec::with_capacity(step.args.len());
            for a in &step.args {
                given.push(match a {
                    Arg::Absent => None,
                    Arg::Const(v) => Some(Held::Burn(Value::clone(v))),
                    Arg::Slot { slot, last: true } => env[*slot].take(),
                    Arg::Slot { slot, last: false } => env[*slot].clone(),
                });
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &step.kernel {
                Some(k) if k.applies(&given) => k.run(given, &step.label, device).map(|h| vec![h]),
                _ => {
                    let values = given.into_iter().map(|h| h.map(|h| h.into_value(device)).transpose());
                    let values = values.collect::<Result<Vec<_>, String>>()?;
                    let outs = ops::run(&step.node, ops::Inputs(values), self.opset, device)?;
                    Ok(outs.into_iter().map(Held::Burn).collect())
                }
            }));
            let outs = match result {
                Ok(Ok(outs)) => outs,
                Ok(Err(e)) => return Err(ModelError::Inference(format!("{}: {e}", step.label))),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into());
                    return Err(ModelError::Inference(format!("{}: {msg}", step.label)));
                }
            };
            for (slot, v) in step.outs.iter().zip(outs) {
                if let Some(slot) = slot {
                    env[*slot] = Some(v);
                }
            }
        }
        self.outputs
            .iter()
            .map(|o| match o {
                Arg::Const(v) => Ok(Value::clone(v)),
                Arg::Slot { slot, .. } => env[*slot]
                    .take()
                    .ok_or_else(|| ModelError::Inference("an output was not computed".into()))?
                    .into_value(device)
                    .map_err(ModelError::Inference),
                Arg::Absent => Err(ModelError::Inference("an output is absent".into())),
            })
            .collect()
    }
}

fn parse(bytes: &[u8]) -> Result<onnx_ir::OnnxGraph, ModelError> {
    OnnxGraphBuilder::new().parse_bytes(bytes).map_err(|e| ModelError::Onnx(e.to_string()))
}

/// `Conv (node "conv1", opset 13)`, from the file's own names where onnx-ir renamed them.
fn label(node: &Node, view: &ProtoView) -> String {
    let (op, name) =
        node.outputs().iter().find_map(|o| view.by_output.get(&o.name).cloned()).unwrap_or_else(|| match node {
            Node::Custom(c) => (format!("{}::{}", c.domain, c.op_type), node.name().to_string()),
            _ => {
                let op = node.node_type().to_string();
                let renamed = node.name();
                let digits = renamed.trim_start_matches(|c: char| !c.is_ascii_digit());
                let original = digits
                    .parse::<usize>()
                    .ok()
                    .and_then(|k| view.names_by_op.get(&op.to_ascii_lowercase())?.get(k.checked_sub(1)?).cloned())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| renamed.to_string());
                (op, original)
            }
        });
    format!("{op} (node {name:?}, opset {})", view.opset)
}

fn inspection(graph: &onnx_ir::OnnxGraph, view: &ProtoView) -> Inspection {
    let unsupported = view
        .refused
        .iter()
        .cloned()
        .chain(graph.nodes.iter().filter_map(|n| match ops::supported(n) {
            Ok(()) => None,
            Err(why) if why.is_empty() => Some(format!("operator {} is not supported by the runner", label(n, view))),
            Err(why) => Some(format!("{}: {why} is not supported by the runner", label(n, view))),
        }))
        .collect();
    let named = |args: &[onnx_ir::Argument], names: &[String]| -> Vec<Port> {
        args.iter()
            .enumerate()
            .map(|(i, a)| {
                let mut p = Port::from_arg(a);
                if args.len() == names.len() {
                    p.name = names[i].clone();
                }
                p
            })
            .collect()
    };
    Inspection {
        inputs: named(&graph.inputs, &view.input_names),
        outputs: named(&graph.outputs, &view.output_names),
        opset: view.opset,
        operators: view.operators.clone(),
        unsupported,
        output_ops: graph
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let name = view.output_names.get(i).unwrap_or(&o.name);
                view.by_output.get(name).map(|(op, _)| op.clone()).unwrap_or_default()
            })
            .collect(),
    }
}

/// Marks each slot's last read (graph outputs are never freed), so the
/// runner moves a value into its last reader instead of keeping a copy.
fn mark_last_reads(steps: &mut [Step], outputs: &[Arg]) {
    let mut seen = std::collections::HashSet::new();
    for o in outputs {
        if let Arg::Slot { slot, .. } = o {
            seen.insert(*slot);
        }
    }
    for step in steps.iter_mut().rev() {
        for a in step.args.iter_mut().rev() {
            if let Arg::Slot { slot, last } = a {
                *last = seen.insert(*slot);
            }
        }
    }
}
