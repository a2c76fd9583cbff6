#!/usr/bin/env python3
"""bench/producer's driver (run inside scripts/with-stack.sh): does a manifest
stream through the release scorefleet-producer in constant memory?

It writes two manifests of the same shape, a small one (--small lines,
default 100,000) and a large one (--lines, default 1,000,000), and enqueues
each, for real, on its own fresh input queue of the emulator. Every 100,000th
line is malformed, so the bad-line path runs too. For each it records the
producer's peak RSS (the kernel's ru_maxrss of that one child), wall time and
the input queue's depth afterwards (so nothing was silently dropped).

  rss_ratio    peak RSS of the large run / peak RSS of the small run
               (target <= 1.1: memory does not grow with the manifest)
  rss_growth   within the large run, RSS (sampled every 0.2 s) at its end
               over its peak in the first tenth of the run: flat is ~1.0
  lost         lines neither enqueued nor reported skipped, plus any
               difference between `enqueued` and the queue's depth (target 0)

--format chooses the manifest layout (csv, jsonl or lines).
"""
import argparse
import json
import os
import subprocess
import threading
import time

from common import ROOT, bin_dir, client, init_stack, log

TOOL = "bench/producer"
BAD_EVERY = 100_000


def write_manifest(path, lines, fmt):
    """`lines` data lines; every BAD_EVERY-th one is malformed. Returns the bad count."""
    bad = 0
    with open(path, "w") as f:
        if fmt == "csv":
            f.write("url,label,source\n")
        for i in range(lines):
            url = f"s3://bench-archive/photos/{i // 1000:04}/{i:08}.png"
            broken = i % BAD_EVERY == BAD_EVERY - 1
            bad += broken
            if fmt == "csv":
                f.write(f"{'not a url' if broken else url},{i % 10},batch-{i // 50000}\n")
            elif fmt == "jsonl":
                f.write('{"url": 17}\n' if broken else json.dumps({"url": url, "attrs": {"label": str(i % 10)}}) + "\n")
            else:
                f.write("ftp://nope\n" if broken else url + "\n")
    return bad


def depth(sqs, url):
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def sample_rss(pid, samples):
    """(seconds, RSS bytes, peak RSS bytes) every 0.2 s until the process exits (it stays a
    zombie until wait4, so /proc still answers; VmRSS is gone by then)."""
    started = time.monotonic()
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                text = f.read()
        except OSError:
            return
        kb = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()
              if line.startswith(("VmRSS:", "VmHWM:"))}
        if "VmRSS" not in kb:
            return
        samples.append((time.monotonic() - started, kb["VmRSS"] * 1024, kb["VmHWM"] * 1024))
        time.sleep(0.2)


def run_one(bins, lines, fmt, out_dir, concurrency):
    env = init_stack(bins, f"prod{lines}-{int(time.time())}")
    ext = {"csv": "csv", "jsonl": "jsonl", "lines": "txt"}[fmt]
    path = os.path.join(out_dir, f"manifest-{lines}.{ext}")
    bad = write_manifest(path, lines, fmt)
    cmd = [f"{bins}/scorefleet-producer", "enqueue", "--manifest", path, "--format", fmt,
           "--run-id", f"bench-{lines}", "--concurrency", str(concurrency), "--json"]
    log(TOOL, f"enqueue {lines:,} lines ({fmt}, {os.path.getsize(path) / 1e6:.0f} MB)")
    started = time.monotonic()
    with open(os.path.join(out_dir, f"producer-{lines}.log"), "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        samples = []
        sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples), daemon=True)
        sampler.start()
        out = proc.stdout.read()
        sampler.join()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    summary = json.loads(out.strip().splitlines()[-1])
    os.remove(path)  # up to 54 MB; the log stays
    queued = depth(client("sqs"), env["SCOREFLEET_INPUT_QUEUE_URL"])
    row = {
        "lines": lines,
        "bad_lines": bad,
        "enqueued": summary["enqueued"],
        "skipped": summary["skipped"],
        "failed": summary["failed"],
        "queue_depth": queued,
        "exit_code": proc.returncode,
        # VmHWM of the producer itself: ru_maxrss would also count the
        # copy of this Python process between fork and exec.
        "peak_rss_mb": round(samples[-1][2] / 2**20, 1) if samples else None,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "wall_s": round(wall, 1),
        "lines_per_s": round(lines / wall),
    }
    if len(samples) >= 10:
        early = max(r for _, r, _ in samples[: len(samples) // 10])
        row["rss_mb_early_peak"] = round(early / 2**20, 1)
        row["rss_mb_at_end"] = round(samples[-1][1] / 2**20, 1)
        row["rss_growth"] = round(samples[-1][1] / early, 3)
        row["rss_samples"] = len(samples)
    row["lost"] = (lines - row["enqueued"] - row["skipped"] - row["failed"]) + abs(row["enqueued"] - queued)
    log(TOOL, json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--format", choices=["csv", "jsonl", "lines"], default="csv")
    ap.add_argument("--concurrency", type=int, default=8, help="the producer's --concurrency")
    ap.add_argument("--bin-dir", help="release binaries (default: $CARGO_TARGET_DIR/release or target/release)")
    ap.add_argument("--out", default="out/bench-producer")
    args = ap.parse_args()

    bins = bin_dir(args.bin_dir)
    out_dir = os.path.join(ROOT, args.out)
    os.makedirs(out_dir, exist_ok=True)
    small = run_one(bins, args.small, args.format, out_dir, args.concurrency)
    large = run_one(bins, args.lines, args.format, out_dir, args.concurrency)
    result = {
        "bench": "producer",
        "format": args.format,
        "emulator": os.environ.get("SCOREFLEET_EMULATOR", "ministack"),
        "small": small,
        "large": large,
        "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "rss_growth": large.get("rss_growth"),
        "lost": small["lost"] + large["lost"],
    }
    if not args.json:
        print(f"{TOOL}: {args.format} manifest, peak RSS {small['peak_rss_mb']} MiB at {small['lines']:,} lines, "
              f"{large['peak_rss_mb']} MiB at {large['lines']:,} (ratio {result['rss_ratio']}; target <= 1.1); "
              f"within the large run, end / early peak {result['rss_growth']}; "
              f"{large['lines_per_s']:,} lines/s enqueued; lost {result['lost']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
