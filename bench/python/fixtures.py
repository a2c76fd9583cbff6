#!/usr/bin/env python3
"""Weights, ONNX graphs and reference outputs for scorefleet-model's import
test and bench/inference.

For each network (digits, resnet18) this writes into OUT:
  <name>.safetensors   PyTorch-layout weights (numpy; random unless --digits-weights)
  <name>.onnx          the same network built with the onnx helper API
                       (resnet18 keeps real BatchNormalization nodes: the Rust
                       side folds them, so the comparison checks the folding)
  <name>_io.safetensors  "input" [N,C,H,W] float32 and onnxruntime's "output" logits

ONNX-only networks (no safetensors; the runner's CPU kernels against
onnxruntime): resnet50 and squeezenet are the onnx wheel's light models with
random weights of the right shapes in place of their ConstantOfShape fills;
mobilenetv2 is built here (depthwise convolutions, ReLU6 as Clip, shortcut
Adds without activation); geometry is a small graph of the convolution and
pooling settings real exports use (dilation, asymmetric pads, auto_pad
SAME_UPPER/SAME_LOWER, ceil-mode pooling, channel Concat, a broadcasting Add).

Usage: fixtures.py OUT [--digits-weights models/digits/digits.safetensors] [--batch 4]
"""
import argparse
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

RESNET_STAGES = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]


def kaiming(rng, shape):
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def digits_weights(rng):
    w = {}
    for name, cin, cout in [("conv1", 1, 32), ("conv2", 32, 64)]:
        w[f"{name}.weight"] = kaiming(rng, (cout, cin, 5, 5))
        w[f"{name}.bias"] = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    for name, cin, cout in [("fc1", 1024, 128), ("fc2", 128, 10)]:
        w[f"{name}.weight"] = kaiming(rng, (cout, cin))
        w[f"{name}.bias"] = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    return w


def digits_graph(w):
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "fc2.weight", "fc2.bias"], ["output"], transB=1),
    ]
    return make_model("digits", nodes, inits, [1, 28, 28], 10)


def resnet_weights(rng, classes=1000):
    w = {}

    def conv(name, cout, cin, k):
        w[f"{name}.weight"] = kaiming(rng, (cout, cin, k, k))

    def bn(name, c):
        # Residual branches start small (as with torchvision's zero_init_residual), so activations
        # stay O(1) through the 8 blocks and 1e-4 is a meaningful absolute tolerance on the logits.
        lo, hi = (0.1, 0.3) if name.endswith("bn2") else (0.5, 1.5)
        w[f"{name}.weight"] = rng.uniform(lo, hi, c).astype(np.float32)
        w[f"{name}.bias"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        w[f"{name}.running_mean"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        w[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        w[f"{name}.num_batches_tracked"] = np.array(0, dtype=np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    for li, (cin, cout, stride) in enumerate(RESNET_STAGES, start=1):
        for b in range(2):
            p = f"layer{li}.{b}"
            bin_ = cin if b == 0 else cout
            conv(f"{p}.conv1", cout, bin_, 3)
            bn(f"{p}.bn1", cout)
            conv(f"{p}.conv2", cout, cout, 3)
            bn(f"{p}.bn2", cout)
            if b == 0 and (stride != 1 or cin != cout):
                conv(f"{p}.downsample.0", cout, cin, 1)
                bn(f"{p}.downsample.1", cout)
    w["fc.weight"] = (rng.standard_normal((classes, 512)) * np.sqrt(1.0 / 512)).astype(np.float32)
    w["fc.bias"] = (rng.standard_normal(classes) * 0.05).astype(np.float32)
    return w


def resnet_graph(w, side=224):
    nodes = []
    counter = [0]

    def fresh(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def conv_bn(x, conv, bn, stride, pad, relu):
        k = w[f"{conv}.weight"].shape[2]
        c = fresh("conv")
        nodes.append(helper.make_node("Conv", [x, f"{conv}.weight"], [c], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[pad] * 4))
        y = fresh("bn")
        nodes.append(helper.make_node("BatchNormalization",
                                      [c, f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"],
                                      [y], epsilon=1e-5))
        if relu:
            r = fresh("relu")
            nodes.append(helper.make_node("Relu", [y], [r]))
            return r
        return y

    x = conv_bn("input", "conv1", "bn1", 2, 3, True)
    p = fresh("pool")
    nodes.append(helper.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x = p
    for li, (cin, cout, stride) in enumerate(RESNET_STAGES, start=1):
        for b in range(2):
            pre = f"layer{li}.{b}"
            s = stride if b == 0 else 1
            y = conv_bn(x, f"{pre}.conv1", f"{pre}.bn1", s, 1, True)
            y = conv_bn(y, f"{pre}.conv2", f"{pre}.bn2", 1, 1, False)
            if f"{pre}.downsample.0.weight" in w:
                idn = conv_bn(x, f"{pre}.downsample.0", f"{pre}.downsample.1", s, 0, False)
            else:
                idn = x
            a = fresh("add")
            nodes.append(helper.make_node("Add", [y, idn], [a]))
            r = fresh("relu")
            nodes.append(helper.make_node("Relu", [a], [r]))
            x = r
    g = fresh("gap")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [g]))
    f = fresh("flat")
    nodes.append(helper.make_node("Flatten", [g], [f], axis=1))
    nodes.append(helper.make_node("Gemm", [f, "fc.weight", "fc.bias"], ["output"], transB=1))
    inits = [numpy_helper.from_array(v, k) for k, v in w.items() if not k.endswith("num_batches_tracked")]
    return make_model("resnet18", nodes, inits, [3, side, side], w["fc.weight"].shape[0])


def light_random(name, rng):
    """The onnx wheel's light_<name>.onnx with each ConstantOfShape (its
    weights, all one value) replaced by random weights of that shape: He
    normal for convolution and Gemm weights, BatchNormalization parameters
    near the identity, small biases. The final Softmax goes (the output is
    the logits, so a comparison is not flattened by saturation), and the
    batch is left free."""
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    model = onnx.load(path)
    g = model.graph
    shapes = {}
    for n in g.node:
        if n.op_type == "ConstantOfShape":
            t = next(a.t for a in n.attribute if a.name == "value") if n.attribute else None
            shape_src = n.input[0]
            init = next((i for i in g.initializer if i.name == shape_src), None)
            const = next((c for c in g.node if c.op_type == "Constant" and c.output[0] == shape_src), None)
            arr = numpy_helper.to_array(init) if init is not None else numpy_helper.to_array(const.attribute[0].t)
            shapes[n.output[0]] = [int(d) for d in arr]
    role = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in shapes:
                role[i] = (n.op_type, k)
    keep, inits = [], []
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.output[0] in role:
            shape = shapes[n.output[0]]
            op, k = role[n.output[0]]
            if op in ("Conv", "Gemm") and k == 1:
                v = kaiming(rng, shape)
            elif op == "BatchNormalization" and k == 1 and "branch2c" in n.output[0]:
                # The last scale of a ResNet residual branch starts small, so
                # activations stay O(1) through the 16 blocks.
                v = rng.uniform(0.1, 0.3, shape).astype(np.float32)
            elif op == "BatchNormalization" and k in (1, 4):
                v = rng.uniform(0.8, 1.2, shape).astype(np.float32)
            else:
                v = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            inits.append(numpy_helper.from_array(v, n.output[0]))
        else:
            keep.append(n)
    last = keep[-1]
    if last.op_type == "Softmax" and last.output[0] == g.output[0].name:
        producer = next(n for n in keep if last.input[0] in n.output)
        producer.output[list(producer.output).index(last.input[0])] = last.output[0]
        keep.pop()
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(inits)
    # A batch of any size: the file fixes it at 1 (inputs, outputs, Reshape targets).
    for v in list(g.input) + list(g.output):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    del g.value_info[:]
    consts = {c.output[0]: c for c in g.node if c.op_type == "Constant"}
    for n in g.node:
        if n.op_type == "Reshape":
            init = next((i for i in g.initializer if i.name == n.input[1]), None)
            t = init if init is not None else consts[n.input[1]].attribute[0].t
            shape = numpy_helper.to_array(t).copy()
            if shape[0] == 1:
                shape[0] = 0
                t.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), t.name))
    # IR 3 wants every initializer listed as a graph input; from IR 4 they need
    # not be, and onnxruntime only folds and fuses initializers that are not.
    model.ir_version = max(model.ir_version, 4)
    used = {i for n in g.node for i in n.input}
    names = {i.name for i in g.initializer}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    real = [v for v in g.input if v.name not in names and v.name in used]
    del g.input[:]
    g.input.extend(real)
    onnx.checker.check_model(model)
    return model


def mobilenet_v2_graph(rng, side=224, width=1.0, classes=1000):
    """MobileNetV2 (Sandler et al. 2018, table 2): inverted residual blocks of
    1x1 expansion, 3x3 depthwise and 1x1 projection convolutions, each followed
    by BatchNormalization, ReLU6 (Clip 0..6) after the first two."""
    nodes, inits = [], []
    counter = [0]

    def fresh(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def param(prefix, v):
        name = fresh(prefix)
        inits.append(numpy_helper.from_array(v, name))
        return name

    zero, six = param("zero", np.array(0.0, np.float32)), param("six", np.array(6.0, np.float32))

    def conv_bn(x, cin, cout, k, stride, groups=1, act=True, **attrs):
        w = param("w", kaiming(rng, (cout, cin // groups, k, k)))
        c = fresh("conv")
        if "auto_pad" not in attrs:
            attrs["pads"] = [k // 2] * 4
        nodes.append(helper.make_node("Conv", [x, w], [c], kernel_shape=[k, k], strides=[stride, stride],
                                      group=groups, **attrs))
        bn = [param("g", rng.uniform(0.8, 1.2, cout).astype(np.float32)),
              param("b", (rng.standard_normal(cout) * 0.05).astype(np.float32)),
              param("m", (rng.standard_normal(cout) * 0.05).astype(np.float32)),
              param("v", rng.uniform(0.8, 1.2, cout).astype(np.float32))]
        y = fresh("bn")
        nodes.append(helper.make_node("BatchNormalization", [c, *bn], [y], epsilon=1e-5))
        if not act:
            return y
        r = fresh("relu6")
        nodes.append(helper.make_node("Clip", [y, zero, six], [r]))
        return r

    ch = lambda c: max(8, int(c * width + 4) // 8 * 8)  # noqa: E731
    cin = ch(32)
    x = conv_bn("input", 3, cin, 3, 2, auto_pad="SAME_UPPER")
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else conv_bn(x, cin, hidden, 1, 1)
            y = conv_bn(y, hidden, hidden, 3, stride, groups=hidden)
            y = conv_bn(y, hidden, cout, 1, 1, act=False)
            if stride == 1 and cin == cout:
                a = fresh("add")
                nodes.append(helper.make_node("Add", [x, y], [a]))
                y = a
            x, cin = y, cout
    last = max(1280, ch(1280))
    x = conv_bn(x, cin, last, 1, 1)
    g = fresh("gap")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [g]))
    f = fresh("flat")
    nodes.append(helper.make_node("Flatten", [g], [f], axis=1))
    fc = param("fc", (rng.standard_normal((classes, last)) * np.sqrt(1.0 / last)).astype(np.float32))
    fb = param("fcb", (rng.standard_normal(classes) * 0.05).astype(np.float32))
    nodes.append(helper.make_node("Gemm", [f, fc, fb], ["output"], transB=1))
    return make_model("mobilenetv2", nodes, inits, [3, side, side], classes)


def geometry_graph(rng, side=37):
    """Convolution and pooling settings of real exports in one small graph."""
    nodes, inits = [], []

    def param(name, v):
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        return name

    def conv(name, x, cin, cout, k, **attrs):
        w = param(f"{name}.w", kaiming(rng, (cout, cin // attrs.get("group", 1), *k)))
        b = param(f"{name}.b", rng.standard_normal(cout) * 0.1)
        nodes.append(helper.make_node("Conv", [x, w, b], [name], kernel_shape=list(k), **attrs))
        return name

    a = conv("dilated", "input", 3, 8, (3, 3), dilations=[2, 2], pads=[2, 2, 2, 2])
    nodes.append(helper.make_node("Relu", [a], ["a_relu"]))
    b = conv("asym", "a_relu", 8, 8, (3, 2), strides=[2, 1], pads=[0, 1, 1, 0])
    c = conv("same_lower", "a_relu", 8, 8, (4, 4), strides=[2, 2], auto_pad="SAME_LOWER")
    d = conv("same_upper", "a_relu", 8, 8, (3, 3), strides=[2, 2], auto_pad="SAME_UPPER", group=8)
    nodes.append(helper.make_node("MaxPool", [b], ["b_pool"], kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Concat", [c, d], ["cd"], axis=1))
    e = conv("pointwise", "cd", 16, 8, (1, 1))
    nodes.append(helper.make_node("MaxPool", [e], ["e_pool"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))
    nodes.append(helper.make_node("GlobalAveragePool", ["b_pool"], ["gap_b"]))
    bias = param("channel_bias", rng.standard_normal((1, 8, 1, 1)))
    f = conv("before_bias", "e_pool", 8, 8, (3, 3), pads=[1, 1, 1, 1])
    nodes.append(helper.make_node("Add", [f, bias], ["f_bias"]))
    # A shortcut Add that broadcasts ([N, 8, 1, 1] onto [N, 8, h, w]), then Relu.
    g = conv("broadcast_shortcut", "e_pool", 8, 8, (3, 3), pads=[1, 1, 1, 1])
    nodes.append(helper.make_node("Add", [g, "gap_b"], ["g_add"]))
    nodes.append(helper.make_node("Relu", ["g_add"], ["g_relu"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["f_bias"], ["gap"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["g_relu"], ["gap_g"]))
    nodes.append(helper.make_node("Concat", ["gap", "gap_g", "gap_b"], ["all"], axis=1))
    nodes.append(helper.make_node("Flatten", ["all"], ["output"], axis=1))
    return make_model("geometry", nodes, inits, [3, side, side], 24)


ONNX_ONLY = {"resnet50": (3, 224, 224), "squeezenet": (3, 224, 224), "mobilenetv2": (3, 224, 224),
             "geometry": (3, 37, 37)}


def onnx_only_model(name, rng, side=None):
    if name in ("resnet50", "squeezenet"):
        return light_random(name, rng)
    if name == "mobilenetv2":
        return mobilenet_v2_graph(rng, side=side or 224)
    return geometry_graph(rng)


def make_model(name, nodes, inits, chw, classes):
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *chw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def session(path, threads=2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--digits-weights", help="use these weights for digits instead of random ones")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", choices=["digits", "resnet18", *ONNX_ONLY])
    ap.add_argument("--side", type=int, help="mobilenetv2's input side (default 224)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    if args.only in ONNX_ONLY:
        model = onnx_only_model(args.only, rng, args.side)
        onnx_path = os.path.join(args.out, f"{args.only}.onnx")
        onnx.save(model, onnx_path)
        sess = session(onnx_path)
        inp = sess.get_inputs()[0]
        chw = (3, args.side, args.side) if args.only == "mobilenetv2" and args.side else ONNX_ONLY[args.only]
        x = rng.standard_normal((args.batch, *chw)).astype(np.float32)
        y = sess.run(None, {inp.name: x})[0]
        save_file({"input": x, "output": y.astype(np.float32)}, os.path.join(args.out, f"{args.only}_io.safetensors"))
        print(f"{args.only}: onnx and io for batch {args.batch} in {args.out}")
        return
    for name in ["digits", "resnet18"]:
        if args.only and args.only != name:
            continue
        if name == "digits":
            w = load_file(args.digits_weights) if args.digits_weights else digits_weights(rng)
            model, chw = digits_graph(w), (1, 28, 28)
        else:
            w = resnet_weights(rng)
            model, chw = resnet_graph(w), (3, 224, 224)
        save_file(w, os.path.join(args.out, f"{name}.safetensors"))
        onnx_path = os.path.join(args.out, f"{name}.onnx")
        onnx.save(model, onnx_path)
        x = rng.standard_normal((args.batch, *chw)).astype(np.float32)
        y = session(onnx_path).run(["output"], {"input": x})[0]
        save_file({"input": x, "output": y.astype(np.float32)}, os.path.join(args.out, f"{name}_io.safetensors"))
        print(f"{name}: weights, onnx and io for batch {args.batch} in {args.out}")


if __name__ == "__main__":
    main()
