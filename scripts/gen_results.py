#!/usr/bin/env python3
"""Writes a synthetic results file for memory and speed checks of `report`.

Usage: gen_results.py N OUT.jsonl

N result lines as the workers write them: 1 in 50 an error of a rotating
kind, the rest a digit with a random top-1 score and a true label that is
wrong 1 time in 100; completion times spread over N/300 seconds. Every URL
is distinct, so nothing in the report can be bounded by repetition.
"""
import json
import random
import sys

n, out = int(sys.argv[1]), sys.argv[2]
rnd = random.Random(7)
kinds = ["decode", "too_large", "fetch_not_found", "fetch_failed", "inference"]
start = 1_800_000_000.0
with open(out, "w") as f:
    for i in range(n):
        t = start + i / 300.0 + rnd.random()
        stamp = f"2027-01-15T08:{int(t // 60) % 60:02d}:{t % 60:06.3f}Z"
        base = {"v": 1, "job_id": f"{i:032x}", "run_id": "synthetic", "url": f"s3://archive/images/{i:08d}.png",
                "attempts": 1, "worker": f"w{i % 8}", "completed_at": stamp, "latency_ms": rnd.randint(5, 900)}
        if i % 50 == 0:
            base |= {"status": "error", "error": {"kind": kinds[(i // 50) % len(kinds)], "message": "synthetic"}}
        else:
            truth = rnd.randrange(10)
            label = truth if rnd.random() >= 0.01 else (truth + 1) % 10
            base |= {"status": "ok", "model": {"name": "digits", "version": "sha256:0"},
                     "top_k": [{"label": str(label), "score": round(rnd.random(), 4)}], "attrs": {"label": str(truth)}}
        f.write(json.dumps(base, separators=(",", ":")) + "\n")
