#!/usr/bin/env python3
"""Driver of bench/inference: interleaves rounds of the burn benchmark
(`scorefleet-model bench`, one process per round and model) and of
onnxruntime (in process, 2 intra-op threads), keeps the best images/s of each
(model, backend, batch) and prints the ratio burn/onnxruntime."""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHAPES = {"digits": (1, 28, 28), "resnet18": (3, 224, 224)}
CLASSES = {"digits": 10, "resnet18": 1000}


def prepare(model, work, max_batch, rng):
    """Weights, ONNX graph and a shared input batch for `model`."""
    weights = os.path.join(work, f"{model}.safetensors")
    onnx_path = os.path.join(work, f"{model}.onnx")
    if model == "digits":
        w = fixtures.load_file(os.path.join(ROOT, "models", "digits", "digits.safetensors"))
        g = fixtures.digits_graph(w)
    else:
        w = fixtures.resnet_weights(np.random.default_rng(7))
        g = fixtures.resnet_graph(w)
    fixtures.save_file(w, weights)
    fixtures.onnx.save(g, onnx_path)
    x = rng.standard_normal((max_batch, *SHAPES[model])).astype(np.float32)
    inp = os.path.join(work, f"{model}_input.safetensors")
    save_file({"input": x}, inp)
    return weights, onnx_path, inp, x


def ort_round(sess, x, batches, min_s):
    out = {}
    for b in batches:
        feed = {"input": np.ascontiguousarray(x[:b])}
        sess.run(["output"], feed)
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < min_s:
            sess.run(["output"], feed)
            calls += 1
        out[b] = calls * b / (time.perf_counter() - start)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--models", default="digits,resnet18")
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--default-backend", default="flex")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    models = args.models.split(",")
    work = os.path.join(ROOT, "target", "bench-inference")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(1)
    best = {}
    prepared = {m: prepare(m, work, max(batches), rng) for m in models}
    sessions = {m: fixtures.session(prepared[m][1], threads=2) for m in models}
    for r in range(args.rounds):
        for m in models:
            weights, _, inp, x = prepared[m]
            cmd = [args.bin, "bench", "--arch", m, "--weights", weights, "--input", inp,
                   "--classes", str(CLASSES[m]), "--batches", args.batches, "--min-seconds", str(args.min_seconds)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            for line in res.stdout.splitlines():
                row = json.loads(line)
                key = (m, row["backend"], row["batch"])
                best[key] = max(best.get(key, 0.0), row["images_per_s"])
            for b, v in ort_round(sessions[m], x, batches, args.min_seconds).items():
                key = (m, "onnxruntime", b)
                best[key] = max(best.get(key, 0.0), v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for (m, backend, b), v in sorted(best.items(), key=lambda kv: (models.index(kv[0][0]), kv[0][1] != "onnxruntime", kv[0][1], kv[0][2])):
        ort_v = best.get((m, "onnxruntime", b))
        rows.append({
            "model": m, "backend": backend, "default_backend": backend == args.default_backend,
            "batch": b, "images_per_s": round(v, 1),
            "ratio_vs_onnxruntime": round(v / ort_v, 3) if ort_v else None,
        })
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'model':<9} {'backend':<12} {'batch':>5} {'images/s':>10} {'burn/ort':>9}")
    for row in rows:
        star = "*" if row["default_backend"] else " "
        print(f"{row['model']:<9} {row['backend'] + star:<12} {row['batch']:>5} {row['images_per_s']:>10.1f} "
              f"{row['ratio_vs_onnxruntime']:>9.3f}")
    print("* default backend; onnxruntime: CPUExecutionProvider, intra_op_num_threads=2")


if __name__ == "__main__":
    main()
