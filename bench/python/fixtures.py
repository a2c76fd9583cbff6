#!/usr/bin/env python3
"""Weights, ONNX graphs and reference outputs for scorefleet-model's import
test and bench/inference.

For each network (digits, resnet18) this writes into OUT:
  <name>.safetensors   PyTorch-layout weights (numpy; random unless --digits-weights)
  <name>.onnx          the same network built with the onnx helper API
                       (resnet18 keeps real BatchNormalization nodes: the Rust
                       side folds them, so the comparison checks the folding)
  <name>_io.safetensors  "input" [N,C,H,W] float32 and onnxruntime's "output" logits

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
    ap.add_argument("--only", choices=["digits", "resnet18"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
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
