#!/usr/bin/env python3
"""bench/soak's driver (run inside scripts/with-stack.sh): 50,000 digits
through one release scorefleet-worker, its RSS and open file descriptors
sampled every second.

  rss_ratio   peak RSS over the whole run / peak RSS over its first 5,000 jobs
              (target <= 1.1: memory is set by configuration, not by load)
  fd_growth   most descriptors open after the first 5,000 jobs, minus those
              open at that point (target: flat, a handful at most)

The jobs are enqueued in chunks as the worker goes, so --backlog of them
(default 5,000) wait in the queue throughout: the worker never runs dry, and
the emulator is not slowed by a queue 50,000 deep (ministack's receive cost
grows with queue depth; it, not the worker, set the pace at 50,000). Writes the samples (JSON) and a PNG plot of both
curves against jobs done.
"""
import argparse
import json
import os
import signal
import threading
import time

from common import ROOT, Worker, bin_dir, enqueue, finished, init_stack, log, peak_rss, proc_sample, upload_digits

TOOL = "bench/soak"


def plot(samples, warmup, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s["done"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(done, [s["rss_mb"] for s in samples], color="tab:blue")
    ax1.axvline(warmup, color="grey", linestyle=":", label=f"{warmup:,} jobs")
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="lower right")
    ax1.set_title(title)
    ax2.plot(done, [s["fds"] for s in samples], color="tab:orange")
    ax2.axvline(warmup, color="grey", linestyle=":")
    ax2.set_ylabel("open file descriptors")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("jobs done")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--warmup", type=int, default=5000, help="jobs whose peak RSS is the baseline")
    ap.add_argument("--unique", type=int, default=2000, help="distinct images uploaded (jobs reuse them)")
    ap.add_argument("--backlog", type=int, default=5000, help="jobs kept waiting in the queue")
    ap.add_argument("--bin-dir", help="release binaries (default: $CARGO_TARGET_DIR/release or target/release)")
    ap.add_argument("--out", default="out/bench-soak")
    ap.add_argument("--plot", default="docs/bench/soak.png", help="PNG of RSS and fds against jobs done")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--worker-arg", action="append", default=[], help="extra worker flag (repeatable)")
    args = ap.parse_args()
    bins = bin_dir(args.bin_dir)
    out = os.path.join(ROOT, args.out)
    os.makedirs(out, exist_ok=True)
    assert 0 < args.warmup < args.jobs, "--warmup must be below --jobs"

    env = init_stack(bins, f"soak-{os.getpid()}")
    os.environ.update(env)
    log(TOOL, f"uploading {args.unique} digits; {args.jobs} jobs, {args.backlog} kept waiting")
    urls = upload_digits(env, args.unique)
    chunk = max(1, args.backlog // 2)
    enqueued = [0]
    failure = []
    done_now = [0.0]

    def feed():
        # Tops the queue up to `backlog` waiting jobs, `chunk` at a time, each
        # chunk with its own job-id prefix (explicit ids: one image, many jobs).
        try:
            k = 0
            while enqueued[0] < args.jobs:
                if enqueued[0] - done_now[0] <= args.backlog - chunk or enqueued[0] == 0:
                    n = min(chunk if enqueued[0] else args.backlog, args.jobs - enqueued[0])
                    enqueue(bins, env, out, f"soak{k:03}", n, urls)
                    enqueued[0] += n
                    k += 1
                else:
                    time.sleep(0.5)
        except Exception as e:  # surfaced by the sampling loop
            failure.append(e)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    while enqueued[0] == 0 and not failure:
        time.sleep(0.2)

    log(TOOL, "one worker scoring them; sampling RSS and fds every second")
    w = Worker(bins, env, "soak", out, args.worker_arg)
    samples = []
    last_log = time.monotonic()
    while True:
        time.sleep(1.0)
        if not w.alive():
            raise SystemExit(f"the worker exited early with {w.proc.returncode}; see {w.log.name}")
        if failure:
            raise SystemExit(f"enqueueing failed: {failure[0]}")
        _, rss, fds = proc_sample(w.pid)
        done = finished(w.metrics())
        done_now[0] = done
        samples.append({"t": round(time.monotonic() - w.started, 2), "done": int(done),
                        "rss_mb": rss / 2**20, "fds": fds})
        if time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            log(TOOL, f"{int(done)} / {args.jobs} jobs, RSS {rss / 2**20:.1f} MiB, {fds} fds")
        if done >= args.jobs:
            break
        if time.monotonic() - w.started > args.timeout:
            raise SystemExit(f"only {int(done)} of {args.jobs} jobs after {args.timeout} s")
    wall = time.monotonic() - w.started
    hwm = peak_rss(w.pid) / 2**20
    w.signal(signal.SIGTERM)
    rc = w.wait(60)

    warm = [s for s in samples if s["done"] <= args.warmup]
    after = [s for s in samples if s["done"] >= args.warmup] or samples[-1:]
    peak_warm = max(s["rss_mb"] for s in warm) if warm else samples[0]["rss_mb"]
    peak_all = max(s["rss_mb"] for s in samples)
    summary = {
        "bench": "soak",
        "date": time.strftime("%Y-%m-%d"),
        "jobs": args.jobs,
        "warmup_jobs": args.warmup,
        "wall_s": wall,
        "images_per_s": args.jobs / wall,
        "peak_rss_mb_warmup": peak_warm,
        "peak_rss_mb": peak_all,
        "vm_hwm_mb": hwm,
        "rss_ratio": peak_all / peak_warm,
        "fds_at_warmup": after[0]["fds"],
        "fds_max_after_warmup": max(s["fds"] for s in after),
        "fd_growth": max(s["fds"] for s in after) - after[0]["fds"],
        "exit_code": rc,
        "samples": len(samples),
    }
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(samples, f)
    if args.plot:
        path = os.path.join(ROOT, args.plot)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        plot(samples, args.warmup, path,
             f"soak: {args.jobs:,} digits, one worker ({summary['date']}, {os.cpu_count()} cores)")
        summary["plot"] = args.plot
    if not args.json:
        print(f"soak: {args.jobs} jobs in {wall:.0f} s ({summary['images_per_s']:.0f} images/s)")
        print(f"  peak RSS first {args.warmup} jobs / whole run   {peak_warm:.1f} / {peak_all:.1f} MiB, "
              f"rss_ratio {summary['rss_ratio']:.3f} (target <= 1.1)")
        print(f"  open fds at {args.warmup} jobs / max after        {summary['fds_at_warmup']} / "
              f"{summary['fds_max_after_warmup']}, fd_growth {summary['fd_growth']}")
        if args.plot:
            print(f"  plot: {args.plot}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
