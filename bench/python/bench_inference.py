#!/usr/bin/env python3
"""Driver of bench/inference: interleaves rounds of the burn benchmark
(`scorefleet-model bench`, one process per round and model) and of
onnxruntime (in process, 2 intra-op threads), keeps the best images/s of each
(model, backend, path, batch) and prints the ratio burn/onnxruntime.
Paths: `nhwc` is what the predictor serves for the built-in digits and
resnet18; `reference` is the burn modules' own forward (burn conv2d); `onnx`
is the model's ONNX graph through scorefleet's runner with the CPU kernels it
gets by default (per-node overrides, folding); `onnx-burn` the same graph with
every node on burn's op; `nhwc-im2col` and `onnx-im2col` are `nhwc` and
`onnx` with Winograd off (every convolution on im2col + GEMM). resnet50, squeezenet and mobilenetv2 are ONNX-only
(bench/python/fixtures.py: the onnx wheel's light graphs with random weights,
and a MobileNetV2 built with the onnx helper API): only the onnx paths run."""
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
SHAPES = {"digits": (1, 28, 28), "resnet18": (3, 224, 224), **fixtures.ONNX_ONLY}
CLASSES = {"digits": 10, "resnet18": 1000, "resnet50": 1000, "squeezenet": 1000, "mobilenetv2": 1000}
ONNX_PATHS = {"onnx", "onnx-burn", "onnx-im2col"}


def prepare(model, work, max_batch, rng):
    """Weights, ONNX graph and a shared input batch for `model`."""
    weights = os.path.join(work, f"{model}.safetensors")
    onnx_path = os.path.join(work, f"{model}.onnx")
    if model in fixtures.ONNX_ONLY:
        fixtures.onnx.save(fixtures.onnx_only_model(model, np.random.default_rng(7)), onnx_path)
        weights = None
    elif model == "digits":
        w = fixtures.load_file(os.path.join(ROOT, "models", "digits", "digits.safetensors"))
        g = fixtures.digits_graph(w)
    else:
        w = fixtures.resnet_weights(np.random.default_rng(7))
        g = fixtures.resnet_graph(w)
    if weights:
        fixtures.save_file(w, weights)
        fixtures.onnx.save(g, onnx_path)
    x = rng.standard_normal((max_batch, *SHAPES[model])).astype(np.float32)
    inp = os.path.join(work, f"{model}_input.safetensors")
    save_file({"input": x}, inp)
    return weights, onnx_path, inp, x


def ort_round(sess, x, batches, min_s):
    """{batch: (images/s, images per CPU second)}"""
    out = {}
    name = sess.get_inputs()[0].name
    for b in batches:
        feed = {name: np.ascontiguousarray(x[:b])}
        sess.run(None, feed)
        calls, start, cpu = 0, time.perf_counter(), time.process_time()
        while calls < 2 or time.perf_counter() - start < min_s:
            sess.run(None, feed)
            calls += 1
        out[b] = (calls * b / (time.perf_counter() - start), calls * b / max(time.process_time() - cpu, 1e-9))
    return out


def served(model):
    """The path a worker serves this model on."""
    return "onnx" if model in fixtures.ONNX_ONLY else "nhwc"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--models", default="digits,resnet18")
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--default-backend", default="flex")
    ap.add_argument("--backends", help="comma-separated burn backends to run (default: every one compiled in)")
    ap.add_argument("--paths", default="nhwc",
                    help="comma-separated: nhwc (served), reference (burn modules), onnx (the graph through the "
                         "runner, CPU kernels on), onnx-burn (every node on burn's op), nhwc-im2col and onnx-im2col "
                         "(nhwc and onnx with Winograd off); ONNX-only models run the onnx paths of this list, or "
                         "onnx and onnx-burn when it has none")
    ap.add_argument("--threads", type=int, default=2,
                    help="onnxruntime intra-op threads and burn's rayon threads (RAYON_NUM_THREADS)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="rank by images per CPU second (load-independent cross-check; use with --threads 1)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    models = args.models.split(",")
    work = os.path.join(ROOT, "target", "bench-inference")
    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(1)
    best = {}
    prepared = {m: prepare(m, work, max(batches), rng) for m in models}
    sessions = {m: fixtures.session(prepared[m][1], threads=args.threads) for m in models}
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    metric = "images_per_cpu_s" if args.cpu_time else "images_per_s"
    for r in range(args.rounds):
        for m in models:
            weights, graph, inp, x = prepared[m]
            paths = args.paths.split(",")
            if weights is None:
                paths = [p for p in paths if p in ONNX_PATHS] or ["onnx", "onnx-burn"]
            cmd = [args.bin, "bench", "--arch", m, "--input", inp,
                   "--classes", str(CLASSES[m]), "--batches", args.batches, "--min-seconds", str(args.min_seconds),
                   "--paths", ",".join(paths), "--onnx", graph]
            if weights:
                cmd += ["--weights", weights]
            if args.backends:
                cmd += ["--backends", args.backends]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            for line in res.stdout.splitlines():
                row = json.loads(line)
                key = (m, row["backend"], row["path"], row["batch"])
                best[key] = max(best.get(key, 0.0), row[metric] or 0.0)
            for b, (wall, cpu) in ort_round(sessions[m], x, batches, args.min_seconds).items():
                key = (m, "onnxruntime", "", b)
                best[key] = max(best.get(key, 0.0), cpu if args.cpu_time else wall)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    order = lambda kv: (models.index(kv[0][0]), kv[0][1] != "onnxruntime", kv[0][1], kv[0][2], kv[0][3])
    for (m, backend, path, b), v in sorted(best.items(), key=order):
        ort_v = best.get((m, "onnxruntime", "", b))
        rows.append({
            "model": m, "backend": backend, "path": path or None,
            "default_backend": backend == args.default_backend and path == served(m),
            "batch": b, metric: round(v, 1), "threads": args.threads,
            "ratio_vs_onnxruntime": round(v / ort_v, 3) if ort_v else None,
        })
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'model':<11} {'backend':<12} {'path':<10} {'batch':>5} {'img/cpu-s' if args.cpu_time else 'images/s':>10} {'burn/ort':>9}")
    for row in rows:
        star = "*" if row["default_backend"] else " "
        print(f"{row['model']:<11} {row['backend'] + star:<12} {row['path'] or '':<10} {row['batch']:>5} "
              f"{row[metric]:>10.1f} {row['ratio_vs_onnxruntime']:>9.3f}")
    print(f"* default; onnxruntime: CPUExecutionProvider, intra_op_num_threads={args.threads}, "
          f"burn: RAYON_NUM_THREADS={args.threads}; "
          "path nhwc: served built-ins (NHWC kernels: Winograd for 3x3 stride 1, else im2col + GEMM), "
          "reference: burn modules' forward, onnx: the graph through scorefleet's ONNX runner with its CPU kernels, "
          "onnx-burn: every node on burn ops, *-im2col: Winograd off")


if __name__ == "__main__":
    main()
