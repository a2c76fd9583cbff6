#!/usr/bin/env python3
"""bench/worker's driver (run inside scripts/with-stack.sh): one release
`scorefleet-worker` against the local emulator, three runs of MNIST digits.

  small  (2,000 jobs by default)   peak RSS, the baseline of the memory ratio
  cpu    (5,000 jobs)              worker CPU-seconds per image, AWS requests per image
  large  (20,000 jobs)             peak RSS, open file descriptors

Every run enqueues all its jobs first (the worker never waits for work and
the queue is as deep as it gets), then starts a fresh worker process, samples
its /proc entry twice a second and polls /metrics until every job is scored.
CPU is read at that moment, before SIGTERM, so shutdown is not counted; model
loading and start-up are. The emulator's CPU is not counted: only the worker
process is measured.

The denominator of the efficiency ratio comes from the `infer_cpu` example
(crates/worker/examples): the same model loading, Preprocessor and Predictor,
timed alone at the batch size the worker actually used (its mean batch fill).
"""
import argparse
import json
import os
import signal
import subprocess
import time

from common import ROOT, Worker, by_label, enqueue, finished, init_stack, log, metric, peak_rss, proc_sample, \
    upload_digits, bin_dir


def run_worker(args, env, name, jobs):
    """One fresh worker over `jobs` queued jobs; its figures and /proc samples."""
    w = Worker(args.bin_dir, env, f"bench-{name}", args.out,
               ["--infer-threads", str(args.infer_threads), *args.worker_arg])
    samples = []  # (t, cpu, rss, fds, finished)
    text, first_result = "", None
    deadline = w.started + args.timeout
    while True:
        time.sleep(0.5)
        if not w.alive():
            raise SystemExit(f"worker {name} exited early with {w.proc.returncode}; see {w.log.name}")
        cpu, rss, fds = proc_sample(w.pid)
        text = w.metrics()
        done = finished(text)
        samples.append((time.monotonic() - w.started, cpu, rss, fds, done))
        if done and first_result is None:
            first_result = time.monotonic() - w.started
        if done >= jobs:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {name}: only {int(done)} of {jobs} jobs after {args.timeout} s")
    wall = time.monotonic() - w.started
    cpu, rss, fds = proc_sample(w.pid)
    hwm = peak_rss(w.pid)
    w.signal(signal.SIGTERM)
    rc = w.wait(60)
    batches = metric(text, "scorefleet_batch_size_count")
    # File descriptors after warm-up (the first tenth of the run) against the end.
    warm = [s[3] for s in samples if s[0] >= wall / 10] or [fds]
    return {
        "jobs": jobs,
        "failed": int(metric(text, "scorefleet_jobs_failed_total")),
        "exit_code": rc,
        "wall_s": wall,
        "images_per_s": jobs / wall,
        "first_result_s": first_result,
        "cpu_s": cpu,
        "cpu_s_per_image": cpu / jobs,
        "peak_rss_mb": hwm / 2**20,
        "fds_after_warmup": warm[0],
        "fds_max": max(s[3] for s in samples),
        "mean_batch_fill": metric(text, "scorefleet_batch_size_sum") / batches if batches else 0.0,
        "aws_requests": by_label(text, "scorefleet_aws_requests_total", "api"),
        "samples": samples,
    }


def infer_cpu(args, batch, images):
    out = subprocess.run([f"{args.bin_dir}/examples/infer_cpu", "--batch", str(batch), "--images", str(images),
                          "--threads", str(args.infer_threads)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--small", type=int, default=2000, help="jobs of the memory baseline run")
    ap.add_argument("--cpu", type=int, default=5000, help="jobs of the CPU run")
    ap.add_argument("--large", type=int, default=20000, help="jobs of the memory run")
    ap.add_argument("--unique", type=int, default=2000, help="distinct images uploaded (jobs reuse them)")
    ap.add_argument("--bin-dir", help="release binaries (default: $CARGO_TARGET_DIR/release or target/release)")
    ap.add_argument("--out", default="out/bench-worker")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--infer-threads", type=int, default=1, help="the worker's --infer-threads, and infer_cpu's")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra worker flag (repeatable)")
    args = ap.parse_args()
    args.bin_dir = bin_dir(args.bin_dir)
    args.out = os.path.join(ROOT, args.out)
    os.makedirs(args.out, exist_ok=True)

    env = init_stack(args.bin_dir, f"wb-{os.getpid()}")
    os.environ.update(env)
    log("bench/worker", f"uploading {args.unique} digits")
    urls = upload_digits(env, args.unique)

    runs = {}
    for name, jobs in [("small", args.small), ("cpu", args.cpu), ("large", args.large)]:
        log("bench/worker", f"{name}: enqueueing {jobs} jobs")
        enqueue(args.bin_dir, env, args.out, name, jobs, urls)
        log("bench/worker", f"{name}: one worker scoring {jobs} jobs")
        runs[name] = run_worker(args, env, name, jobs)
        r = runs[name]
        log("bench/worker", f"{name}: {r['images_per_s']:.0f} images/s, {r['cpu_s_per_image'] * 1e3:.3f} ms CPU/image, "
            f"peak RSS {r['peak_rss_mb']:.1f} MiB, mean batch {r['mean_batch_fill']:.1f}")

    cpu = runs["cpu"]
    batch = max(1, round(cpu["mean_batch_fill"]))
    pure = infer_cpu(args, batch, args.cpu)
    ratio = cpu["cpu_s_per_image"] / pure["infer_cpu_s_per_image"]
    per_api = {api: n / cpu["jobs"] for api, n in sorted(cpu["aws_requests"].items()) if n}
    large, small = runs["large"], runs["small"]
    summary = {
        "bench": "worker",
        "model": "digits",
        "backend": pure["backend"],
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "cpu_run_jobs": cpu["jobs"],
        "images_per_s": cpu["images_per_s"],
        "mean_batch_fill": cpu["mean_batch_fill"],
        "worker_cpu_s_per_image": cpu["cpu_s_per_image"],
        "infer_cpu_s_per_image": pure["infer_cpu_s_per_image"],
        "preprocess_cpu_s_per_image": pure["preprocess_cpu_s_per_image"],
        "cpu_per_image_ratio": ratio,
        "aws_requests_per_image": sum(per_api.values()),
        "aws_requests_per_image_by_api": per_api,
        "peak_rss_mb_2k": small["peak_rss_mb"],
        "peak_rss_mb_20k": large["peak_rss_mb"],
        "rss_ratio_20k_vs_2k": large["peak_rss_mb"] / small["peak_rss_mb"],
        "fd_growth": large["fds_max"] - large["fds_after_warmup"],
        "failed_jobs": sum(r["failed"] for r in runs.values()),
        "exit_codes": [r["exit_code"] for r in runs.values()],
    }
    with open(os.path.join(args.out, "samples.json"), "w") as f:
        json.dump({k: v["samples"] for k, v in runs.items()}, f)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"worker benchmark: digits, {summary['backend']}, {summary['cores']} cores, {summary['date']}")
    print(f"  throughput (one worker, {cpu['jobs']} jobs)  {cpu['images_per_s']:.0f} images/s, "
          f"mean batch {cpu['mean_batch_fill']:.1f}")
    print(f"  worker CPU per image                  {cpu['cpu_s_per_image'] * 1e3:.3f} ms")
    print(f"  inference alone, batch {batch:<3}          {pure['infer_cpu_s_per_image'] * 1e3:.3f} ms")
    print(f"  PNG decode + preprocess alone         {pure['preprocess_cpu_s_per_image'] * 1e3:.3f} ms")
    print(f"  cpu_per_image_ratio                   {ratio:.2f}  (target <= 1.2)")
    print(f"  AWS requests per image                {summary['aws_requests_per_image']:.3f}")
    for api, n in per_api.items():
        print(f"    {api:<32}{n:.3f}")
    print(f"  peak RSS {small['jobs']} jobs / {large['jobs']} jobs    "
          f"{small['peak_rss_mb']:.1f} / {large['peak_rss_mb']:.1f} MiB, "
          f"ratio {summary['rss_ratio_20k_vs_2k']:.3f} (target <= 1.10)")
    print(f"  open fds after warm-up / max          {large['fds_after_warmup']} / {large['fds_max']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
