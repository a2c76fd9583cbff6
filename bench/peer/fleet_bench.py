#!/usr/bin/env python3
"""bench/fleet's driver (run inside scripts/with-stack.sh by bench/fleet):
scorefleet against the Python peer (bench/peer/worker.py), side by side, on
the same emulator, archive, weights, worker count and cores.

Protocol, per round, per model (digits, then photos), per fleet (the order
alternates between rounds):

 1. a fresh prefix: queues, DLQ, outcome table (`scorefleet-producer init`);
 2. the whole backlog is enqueued first (`scorefleet-producer enqueue`), and
    the input queue is checked to hold exactly N visible messages, none in
    flight, with an empty output queue, and no worker of the previous run
    alive: every fleet starts on a fully drained setup;
 3. W workers start at once, pinned to the worker CPUs (the emulator and this
    driver stay on the others); every process of every worker is sampled
    from /proc: CPU (utime + stime) and peak RSS (VmHWM), the emulator is
    never counted;
 4. when all N messages are deleted: CPU, RSS, AWS requests by API (scorefleet
    /metrics, the peer's own counters) and batch fill are read;
 5. latency probe: P more jobs are sent one at a time at a light, fixed rate,
    each carrying its enqueue time in `attrs`, and scored by the warm fleet;
 6. the workers get SIGTERM (SIGKILL after 5 s), the results are read back from
    the output queue, the prefix's queues and table are deleted.

Timings come from the result messages themselves (`completed_at`, written by
the worker when the outcome is known): images/s = N / (last backlog result −
first worker spawned); cold start = first result − spawn; job latency:
`latency_ms` (receive → outcome, under the backlog) and, for the probe,
completed_at − enqueue time (enqueue → result at light load).
"""
import argparse
import concurrent.futures
import csv
import hashlib
import io
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "bench", "python"))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "bench", "harness"))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

import common  # noqa: E402  (bench/harness: shared with bench/worker, soak and chaos)
import fleet_report  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
MODELS = {"digits": "digits", "photos": "resnet18"}  # archive → model


def per_image(r):
    """A result as one row per image: a v2 result's images, each with the job's fields; a v1 result as it is."""
    if not r.get("images"):
        return [r]
    job = {k: v for k, v in r.items() if k != "images"}
    return [{**job, "model": job.get("model") if i["status"] == "ok" else None, **i} for i in r["images"]]


def log(msg):
    common.log("bench/fleet", msg)


def parse_cpus(spec):
    out = set()
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return sorted(out)


def pin_tree(pid, cpus):
    """Pins every thread of `pid` and of its descendants."""
    for p in [pid] + descendants(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def proc_cpu_hwm(pid):
    """(cpu seconds incl. reaped children, VmHWM bytes) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    except OSError:
        return None
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
    return cpu, (int(m.group(1)) * 1024 if m else 0)


def get_text(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def prom(text, name):
    """{labels or '': value} of the samples of one metric."""
    out = {}
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def rfc3339_s(ts):
    """Seconds since the epoch of an RFC 3339 UTC time with any number of fraction digits."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", ts)
    if not m:
        raise ValueError(ts)
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + (float("0." + m.group(2)) if m.group(2) else 0.0)


# --- set-up ------------------------------------------------------------------

def snapshot_binaries(out):
    """Hard links to the release binaries, so a rebuild by someone else cannot swap them mid-run."""
    src = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
    dst = os.path.join(out, "bin")
    os.makedirs(dst, exist_ok=True)
    for name in ("scorefleet-worker", "scorefleet-producer"):
        target = os.path.join(dst, name)
        if os.path.exists(target):
            os.unlink(target)
        try:
            os.link(os.path.join(src, name), target)
        except OSError:
            shutil.copy2(os.path.join(src, name), target)
    return dst


def prepare_models(out):
    """digits: the committed weights (models/digits) exported to ONNX; resnet18: random weights in
    torchvision layout (bench/python/fixtures.py, seed 7) as safetensors + manifest for scorefleet and ONNX
    for the peer. Returns {model: (manifest, onnx)}."""
    import numpy as np
    import onnx
    from safetensors.numpy import load_file, save_file

    import fixtures

    d = os.path.join(out, "models")
    os.makedirs(os.path.join(d, "resnet18"), exist_ok=True)
    digits_onnx = os.path.join(d, "digits.onnx")
    if not os.path.exists(digits_onnx):
        onnx.save(fixtures.digits_graph(load_file(os.path.join(ROOT, "models/digits/digits.safetensors"))),
                  digits_onnx)
    weights = os.path.join(d, "resnet18", "resnet18.safetensors")
    manifest = os.path.join(d, "resnet18", "manifest.json")
    r_onnx = os.path.join(d, "resnet18.onnx")
    if not (os.path.exists(manifest) and os.path.exists(r_onnx)):
        w = fixtures.resnet_weights(np.random.default_rng(7))
        save_file(w, weights)
        onnx.save(fixtures.resnet_graph(w), r_onnx)
        with open(weights, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        with open(manifest, "w") as f:
            json.dump({"name": "resnet18", "architecture": "resnet18", "input_shape": [3, 224, 224],
                       "channels": "rgb", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "labels": [f"class_{i:03d}" for i in range(1000)], "weights": "resnet18.safetensors",
                       "sha256": sha, "notes": "random weights (bench/python/fixtures.py, seed 7): speed only"},
                      f, indent=1)
    return {"digits": (os.path.join(ROOT, "models/digits/manifest.json"), digits_onnx),
            "resnet18": (manifest, r_onnx)}


def warm_caches(setup, fleet, model):
    """Every run starts its workers from a warm page cache, as a worker restarted on a busy node
    does: just before the spawn, the fleet's files are read (scorefleet: binary, manifest, weights)
    or loaded in a throw-away process (the peer: its imports, boto3's service models, the ONNX
    session). Without it the figures measure the disk: on a machine whose page cache is reclaimed
    within minutes under I/O pressure, a cold start of either fleet can take tens of seconds."""
    manifest, onnx_path = setup["models"][model]
    if fleet == "scorefleet":
        with open(manifest) as f:
            weights = json.load(f)["weights"]
        for path in (os.path.join(setup["bin"], "scorefleet-worker"), manifest,
                     os.path.join(os.path.dirname(manifest), weights)):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        return
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import worker; "
            "worker.make_clients(worker.Counters(), 4); worker.Model(sys.argv[2], sys.argv[3], 1)")
    subprocess.run([sys.executable, "-c", code, HERE, manifest, onnx_path], check=True)


def digit_objects(n):
    from demo_archive import png, read_idx
    (count, h, w), pixels = read_idx(os.path.join(ROOT, "data/mnist/t10k-images.idx3-ubyte.gz"))
    _, labels = read_idx(os.path.join(ROOT, "data/mnist/t10k-labels.idx1-ubyte.gz"))
    if n > count:
        raise SystemExit(f"--digits {n}: the MNIST test set has {count}")
    for i in range(n):
        img = pixels[i * h * w:(i + 1) * h * w]
        yield f"digits/{i:05d}.png", png(w, h, [img[r * w:(r + 1) * w] for r in range(h)]), str(labels[i])


def photo_objects(n):
    """224×224 JPEGs (quality 90) cut from a real photograph that ships with matplotlib
    (grace_hopper.jpg, 512×600): random square crops of 35-100 % of the short side,
    random mirror, brightness/contrast/colour jitter, Lanczos resize. Seeded."""
    import matplotlib
    from PIL import Image, ImageEnhance, ImageOps
    src = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")
    rng = random.Random(2026)
    sw, sh = src.size
    for i in range(n):
        side = int(min(sw, sh) * rng.uniform(0.35, 1.0))
        x, y = rng.randint(0, sw - side), rng.randint(0, sh - side)
        img = src.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enh(img).enhance(rng.uniform(0.7, 1.3))
        img = img.resize((224, 224), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        yield f"photos/{i:04d}.jpg", buf.getvalue(), ""


# --broken: files each fleet must answer with a typed error (and the same one).
BROKEN = {"broken/truncated.png": "decode", "broken/notes.txt": "decode", "broken/bomb.png": "too_large",
          "broken/missing.png": "fetch_not_found"}


def broken_objects():
    """The demo's broken files (scripts/demo_archive.py), but the missing one."""
    from demo_archive import bomb
    good = next(digit_objects(1))[1]
    yield "broken/truncated.png", good[:len(good) // 2], ""
    yield "broken/notes.txt", b"this is not an image\n", ""
    yield "broken/bomb.png", bomb(), ""


def upload(bucket, objects, manifest, missing=()):
    """Uploads (key, body, label) objects; writes the CSV manifest (with `missing` keys, never uploaded).
    Returns the uploaded URLs and their mean size."""
    s3 = boto3.client("s3", config=Config(max_pool_connections=32, retries={"max_attempts": 8},
                                          s3={"addressing_style": "path"}))
    rows = []

    def put(o):
        s3.put_object(Bucket=bucket, Key=o[0], Body=o[1])
        return o

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for key, body, label in pool.map(put, objects):
            rows.append((f"s3://{bucket}/{key}", label, len(body)))
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "label"])
        w.writerows((u, l) for u, l, _ in rows)
        w.writerows((f"s3://{bucket}/{key}", "") for key in missing)
    return [u for u, _, _ in rows], sum(s for _, _, s in rows) / max(1, len(rows))


# --- one run -----------------------------------------------------------------

class RunFailed(Exception):
    """A run that produced no trustworthy figures (it is retried once, on a fresh prefix)."""


class Run:
    def __init__(self, args, fleet, archive, rnd, setup, retry=False):
        self.args, self.fleet, self.archive, self.rnd, self.setup = args, fleet, archive, rnd, setup
        self.model = MODELS[archive]
        self.n = args.digits if archive == "digits" else args.photos
        self.broken = len(BROKEN) if args.broken and archive == "digits" else 0
        self.n += self.broken
        # Jobs of several images are a scorefleet feature (v2 messages); the peer reads one URL a message.
        self.images_per_job = args.images_per_job if fleet == "scorefleet" else 1
        self.jobs = math.ceil(self.n / self.images_per_job)
        self.probes = args.probe_digits if archive == "digits" else args.probe_photos
        self.probe_rate = args.probe_rate_digits if archive == "digits" else args.probe_rate_photos
        self.prefix = f"fl{setup['stamp']}-r{rnd}-{archive[0]}-{fleet[0]}" + ("-again" if retry else "")
        self.dir = os.path.join(args.out, "runs", self.prefix)
        self.cpu_at_ready = None  # CPU-seconds of start-up: spawn → every worker ready
        os.makedirs(self.dir, exist_ok=True)

    def producer(self, *argv, env=None):
        out = subprocess.run([os.path.join(self.setup["bin"], "scorefleet-producer"), *argv],
                             env=env or self.env, check=True, capture_output=True, text=True)
        return out.stdout

    def provision(self):
        self.env = dict(os.environ)
        for line in self.producer("init", "--prefix", self.prefix, "--env", env=self.env).splitlines():
            m = re.match(r"export (\w+)='(.*)'$", line)
            if m:
                self.env[m.group(1)] = m.group(2)
        self.in_url = self.env["SCOREFLEET_INPUT_QUEUE_URL"]
        self.out_url = self.env["SCOREFLEET_OUTPUT_QUEUE_URL"]
        self.table = self.env["SCOREFLEET_TABLE"]
        rep = json.loads(self.producer("enqueue", "--manifest", self.setup["manifests"][self.archive],
                                       "--run-id", self.prefix, "--table", self.table,
                                       "--images-per-job", str(self.images_per_job), "--json").splitlines()[-1])
        if (rep["enqueued"], rep.get("images", rep["enqueued"])) != (self.jobs, self.n):
            raise SystemExit(f"{self.prefix}: enqueued {rep['enqueued']} jobs of {rep.get('images')} images, "
                             f"expected {self.jobs} of {self.n}")
        sqs = self.setup["sqs"]
        attrs = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        a_in = sqs.get_queue_attributes(QueueUrl=self.in_url, AttributeNames=attrs)["Attributes"]
        a_out = sqs.get_queue_attributes(QueueUrl=self.out_url, AttributeNames=attrs)["Attributes"]
        if (int(a_in[attrs[0]]), int(a_in[attrs[1]]), int(a_out[attrs[0]]) + int(a_out[attrs[1]])) != (self.jobs, 0, 0):
            raise SystemExit(f"{self.prefix}: not a drained setup: in {a_in}, out {a_out}")

    def spawn(self):
        a, cpus = self.args, self.setup["worker_cpus"]
        w = a.workers
        # Each worker its own slice of the worker CPUs when there are enough, else all share them.
        slices = [cpus[i * len(cpus) // w:(i + 1) * len(cpus) // w] for i in range(w)] if len(cpus) >= w \
            else [cpus] * w
        manifest, onnx_path = self.setup["models"][self.model]
        self.workers = []
        for i in range(w):
            wid = f"{self.prefix}-w{i}"
            logf = open(os.path.join(self.dir, f"worker-{i}.log"), "w")
            env = dict(self.env, SCOREFLEET_WORKER_ID=wid)
            if self.fleet == "scorefleet":
                port = common.free_port()
                cmd = [os.path.join(self.setup["bin"], "scorefleet-worker"), "--model", self.model,
                       "--model-manifest", manifest, "--http-addr", f"127.0.0.1:{port}",
                       "--model-cache", os.path.join(a.out, "model-cache")]
                state = {"port": port}
            else:
                # One single-threaded consumer process per CPU of the worker's slice (one when
                # workers share CPUs): never more threads than cores, as scorefleet sizes its pools.
                procs = len(slices[i]) if len(cpus) >= w else 1
                threads = 1
                stats = os.path.join(self.dir, f"stats-{i}")
                cmd = [sys.executable, os.path.join(HERE, "worker.py"), "--model-manifest", manifest,
                       "--onnx", onnx_path, "--procs", str(procs), "--ort-threads", str(threads),
                       "--stats-dir", stats]
                state = {"stats": stats, "procs": procs}
            cpuset = slices[i]
            t = time.time()
            extra = a.scorefleet_arg if self.fleet == "scorefleet" else a.peer_arg
            p = subprocess.Popen(cmd + extra, env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
                                 preexec_fn=lambda c=cpuset: os.sched_setaffinity(0, c))
            self.workers.append(dict(state, proc=p, spawned=t, log=logf, ready=None, pids={p.pid}, cpu={}, hwm={}))

    def sample(self, deep):
        """Progress (messages deleted) and readiness; with deep, CPU and RSS of every process."""
        deleted = 0
        for w in self.workers:
            if w["proc"].poll() is not None:
                raise RunFailed(f"{self.prefix}: a worker exited with {w['proc'].returncode}; see {w['log'].name}")
            if deep:
                w["pids"] |= set(descendants(w["proc"].pid))
                for pid in w["pids"]:
                    s = proc_cpu_hwm(pid)
                    if s:
                        w["cpu"][pid], w["hwm"][pid] = s
            if self.fleet == "scorefleet":
                if w["ready"] is None and get_text(f"http://127.0.0.1:{w['port']}/readyz", 1)[0] == 200:
                    w["ready"] = time.time()
                _, text = get_text(f"http://127.0.0.1:{w['port']}/metrics")
                w["metrics"] = text
                deleted += sum(prom(text, "scorefleet_messages_deleted_total").values())
                w["max_in_flight"] = max(w.get("max_in_flight", 0), sum(prom(text, "scorefleet_in_flight").values()))
            else:
                files = [f for f in os.listdir(w["stats"]) if f.endswith(".json")] if os.path.isdir(w["stats"]) else []
                docs = []
                for f in files:
                    try:
                        with open(os.path.join(w["stats"], f)) as fh:
                            docs.append(json.load(fh))
                    except (OSError, ValueError):
                        pass
                w["stats_docs"] = docs
                # Each process rewrites its file four times a second: a stale one means its counters
                # (and so this run's figures) cannot be trusted.
                ages = [time.time() - os.path.getmtime(os.path.join(w["stats"], f)) for f in files]
                if w["ready"] is not None and ages and max(ages) > 10:
                    raise RunFailed(f"{self.prefix}: a peer process stopped updating its counters in {w['stats']}")
                if w["ready"] is None and len(docs) == w["procs"] and all(d["ready_at"] for d in docs):
                    w["ready"] = max(d["ready_at"] for d in docs)
                deleted += sum(d["counters"].get("deleted", 0) for d in docs)
                w["max_in_flight"] = max(w.get("max_in_flight", 0), sum(d.get("in_flight", 0) for d in docs))
        return deleted

    def wait_deleted(self, target, timeout):
        deadline = time.monotonic() + timeout
        ticks = 0
        while True:
            ready = all(w["ready"] for w in self.workers)
            # Every tick until all are ready (start-up CPU), then every half second.
            deleted = self.sample(deep=not ready or ticks % 5 == 0)
            ticks += 1
            if self.cpu_at_ready is None and all(w["ready"] for w in self.workers):
                self.cpu_at_ready = sum(sum(w["cpu"].values()) for w in self.workers)
            if deleted >= target:
                return
            if time.monotonic() > deadline:
                raise RunFailed(f"{self.prefix}: {deleted} of {target} jobs done after {timeout} s")
            time.sleep(0.02 if not ready else 0.1)

    def counters(self):
        """AWS requests by API, batches, batch items, BatchWriteItem items, duplicates, items read by the
        dedup lookup, and the dedup mode(s) in use, summed over the fleet, now."""
        apis, batches, items, wru_items, dups, lookups, modes = {}, 0, 0, 0, 0, 0, set()
        for w in self.workers:
            if self.fleet == "scorefleet":
                text = w["metrics"]
                for labels, v in prom(text, "scorefleet_aws_requests_total").items():
                    api = labels.split('"')[1]
                    apis[api] = apis.get(api, 0) + v
                dups += sum(prom(text, "scorefleet_duplicates_skipped_total").values())
                batches += sum(prom(text, "scorefleet_batch_size_count").values())
                items += sum(prom(text, "scorefleet_batch_size_sum").values())
                lookups += sum(prom(text, "scorefleet_dedup_lookups_total").values())
                modes |= {labels.split('"')[1] for labels, v in prom(text, "scorefleet_dedup_mode").items() if v}
            else:
                for d in w["stats_docs"]:
                    for k, v in d["counters"].items():
                        if k.startswith("api:"):
                            apis[k[4:]] = apis.get(k[4:], 0) + v
                    batches += d["counters"].get("batches", 0)
                    items += d["counters"].get("batch_items", 0)
                    wru_items += d["counters"].get("ddb_items_written", 0)
                    dups += d["counters"].get("duplicates", 0)
                modes.add("claim")
        return apis, batches, items, wru_items, dups, lookups, ",".join(sorted(modes)) or None

    def emulator_cpu(self):
        """CPU-seconds of the emulator's processes so far: is the emulator what limits a run?"""
        pid = self.setup["emulator_pid"]
        return sum((proc_cpu_hwm(p) or (0, 0))[0] for p in [pid] + descendants(pid))

    def probe(self):
        """One job at a time at a light fixed rate, each with its enqueue time in attrs."""
        sqs, urls = self.setup["sqs"], self.setup["urls"][self.archive]
        for i in range(self.probes):
            t = time.time()
            body = {"v": 1, "job_id": f"probe-{i:04d}-{self.prefix}", "url": urls[(i * 7919) % len(urls)],
                    "run_id": self.prefix, "attrs": {"probe": "1", "enqueued_ms": int(t * 1000)}}
            sqs.send_message(QueueUrl=self.in_url, MessageBody=json.dumps(body))
            time.sleep(max(0.0, t + 1 / self.probe_rate - time.time()))

    def stop(self):
        t = time.monotonic()
        for w in self.workers:
            w["proc"].send_signal(signal.SIGTERM)
        exits = []
        for w in self.workers:
            try:
                w["proc"].wait(timeout=max(0.1, 5 - (time.monotonic() - t)))
                exits.append(time.monotonic() - t)
            except subprocess.TimeoutExpired:
                for pid in sorted(w["pids"], reverse=True):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                w["proc"].wait()
                exits.append(None)
            w["log"].close()
        return exits

    def drain_results(self, want):
        sqs = self.setup["sqs"]
        got, lock = {}, threading.Lock()

        def reader():
            empty = 0
            while empty < 3:
                with lock:
                    if len(got) >= want:
                        return
                msgs = sqs.receive_message(QueueUrl=self.out_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           VisibilityTimeout=900).get("Messages", [])
                empty = 0 if msgs else empty + 1
                with lock:
                    for m in msgs:
                        r = json.loads(m["Body"])
                        got.setdefault(r["job_id"], (r, len(m["Body"].encode())))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: reader(), range(4)))
        return list(got.values())

    def cleanup(self):
        sqs, ddb = self.setup["sqs"], self.setup["ddb"]
        for url in (self.in_url, self.out_url, self.env.get("SCOREFLEET_DLQ_URL")):
            if url:
                try:
                    sqs.delete_queue(QueueUrl=url)
                except Exception as e:  # noqa: BLE001 — best effort, the emulator dies at the end anyway
                    log(f"delete_queue {url}: {e}")
        try:
            self.setup["s3"].delete_bucket(Bucket=self.env["SCOREFLEET_BUCKET"])
        except Exception as e:  # noqa: BLE001
            log(f"delete_bucket: {e}")
        try:
            ddb.delete_table(TableName=self.table)
        except Exception as e:  # noqa: BLE001
            log(f"delete_table {self.table}: {e}")

    def execute(self):
        self.provision()
        log(f"{self.prefix}: {self.fleet} × {self.args.workers} on {self.model}, {self.n} images in {self.jobs} jobs queued")
        warm_caches(self.setup, self.fleet, self.model)
        emu0 = self.emulator_cpu()
        self.spawn()
        try:
            self.wait_deleted(self.jobs, self.args.timeout)
            self.sample(deep=True)
            done_wall = time.time()
            emu1 = self.emulator_cpu()
            cpu = sum(sum(w["cpu"].values()) for w in self.workers)
            rss = [sum(w["hwm"].values()) for w in self.workers]
            apis, batches, items, wru_items, duplicates, lookups, dedup = self.counters()
            if self.probes:
                self.probe()
                self.wait_deleted(self.jobs + self.probes, 120)
        finally:
            exits = self.stop()
        results = self.drain_results(self.jobs + self.probes)
        self.cleanup()
        with open(os.path.join(self.dir, "results.jsonl"), "w") as f:
            for r, _ in results:
                f.write(json.dumps(r) + "\n")
        backlog = [x for r, _ in results if not (r.get("attrs") or {}).get("probe") for x in per_image(r)]
        probes = [r for r, _ in results if (r.get("attrs") or {}).get("probe")]
        if len(backlog) != self.n:
            raise SystemExit(f"{self.prefix}: {len(backlog)} image results for {self.n} images")
        t0 = min(w["spawned"] for w in self.workers)
        done = sorted(rfc3339_s(r["completed_at"]) for r in backlog)
        ok = [r for r in backlog if r["status"] == "ok"]
        errors = {}
        for r in backlog:
            if r["status"] != "ok":
                errors[r["error"]["kind"]] = errors.get(r["error"]["kind"], 0) + 1
        labelled = [r for r in ok if (r.get("attrs") or {}).get("label")]
        error_by_key = {r["url"].split("/", 3)[3]: r["error"]["kind"] for r in backlog if r["status"] != "ok"}
        row = {
            "fleet": self.fleet, "model": self.model, "archive": self.archive, "round": self.rnd,
            "prefix": self.prefix,
            "workers": self.args.workers, "jobs": self.n, "messages": self.jobs,
            "images_per_job": self.images_per_job, "succeeded": len(ok), "errors": errors,
            "expected_errors": {k: v for k, v in BROKEN.items()} if self.broken else {},
            "error_by_key": error_by_key,
            "wall_s": done[-1] - t0,
            "images_per_s": self.n / (done[-1] - t0),
            "steady_images_per_s": (self.n - 1) / (done[-1] - done[0]) if done[-1] > done[0] else None,
            "cold_start_s": done[0] - t0,
            "ready_s": max(w["ready"] - w["spawned"] for w in self.workers) if all(w["ready"] for w in self.workers)
            else None,
            "latency_ms_p50": fleet_report.percentile([r["latency_ms"] for r in backlog], 50),
            "latency_ms_p99": fleet_report.percentile([r["latency_ms"] for r in backlog], 99),
            "probe_jobs": len(probes),
            "probe_latency_ms_p50": fleet_report.percentile(
                [rfc3339_s(r["completed_at"]) * 1000 - r["attrs"]["enqueued_ms"] for r in probes], 50),
            "probe_latency_ms_p99": fleet_report.percentile(
                [rfc3339_s(r["completed_at"]) * 1000 - r["attrs"]["enqueued_ms"] for r in probes], 99),
            "mean_batch_fill": items / batches if batches else None,
            "emulator_cpu_util": (emu1 - emu0) / (done_wall - t0),
            "max_in_flight_per_worker": max(w.get("max_in_flight", 0) for w in self.workers),
            "worker_cpu_util": cpu / (done_wall - t0) / len(self.setup["worker_cpus"]),
            "cpu_s": cpu,
            "cpu_s_per_image": cpu / self.n,
            "startup_cpu_s_per_worker": self.cpu_at_ready / len(self.workers) if self.cpu_at_ready is not None
            else None,
            "cpu_s_per_image_after_ready": (cpu - self.cpu_at_ready) / self.n if self.cpu_at_ready is not None
            else None,
            "duplicates": duplicates,
            "dedup": dedup,
            "dedup_lookups": lookups,
            "peak_rss_mb": max(rss) / 2 ** 20,
            "aws_requests": apis,
            "ddb_batch_items_written": wru_items,
            "aws_requests_per_image": sum(apis.values()) / self.n,
            "max_result_bytes": max(size for _, size in results),
            # DynamoDB bills a write per started KB of the item: the finished item holds the result.
            "finish_item_kb_mean": sum(math.ceil((size + fleet_report.ITEM_OVERHEAD_BYTES) / 1024)
                                       for r, size in results if not (r.get("attrs") or {}).get("probe")) / self.n,
            "accuracy": (sum(r["top_k"][0]["label"] == r["attrs"]["label"] for r in labelled) / len(labelled))
            if labelled else None,
            "top1": {r["url"]: r["top_k"][0]["label"] for r in ok},
            "exit_s": exits,
            "done_wall": done_wall,
        }
        log(f"{self.prefix}: {row['images_per_s']:.1f} images/s, cold start {row['cold_start_s']:.2f} s, "
            f"{row['cpu_s_per_image'] * 1e3:.2f} ms CPU/image, {row['aws_requests_per_image']:.2f} requests/image, "
            f"peak RSS {row['peak_rss_mb']:.0f} MiB, batch {row['mean_batch_fill'] or 0:.1f}")
        return row


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
        with open("/proc/meminfo") as f:
            mem = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 2 ** 20
    except (OSError, AttributeError):
        mem = 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    # The binaries are built from the work tree: say when it differs from the commit.
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        commit += f" + {len(dirty.splitlines())} uncommitted files under crates/"
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object per fleet and model only")
    ap.add_argument("--smoke", action="store_true",
                    help="50 digits + the broken files, no photos, 1 round, 5 probes; checks results")
    ap.add_argument("--broken", action="store_true",
                    help="add a truncated PNG, a text file, a decompression bomb and a missing key to the digits")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--digits", type=int, default=10000, help="MNIST test digits as PNG (≤ 10,000)")
    ap.add_argument("--photos", type=int, default=1000, help="224×224 JPEGs")
    ap.add_argument("--workers", type=int, default=2, help="workers per fleet")
    ap.add_argument("--images-per-job", type=int, default=1,
                    help="scorefleet's jobs carry this many images (enqueue --images-per-job); the peer's one")
    ap.add_argument("--fleets", default="scorefleet,peer")
    ap.add_argument("--worker-cpus", help="CPUs of the workers (default: all but the first)")
    ap.add_argument("--emulator-cpus", help="CPUs of the emulator and this driver (default: the first)")
    ap.add_argument("--probe-digits", type=int, default=100, help="latency probe jobs on digits")
    ap.add_argument("--probe-photos", type=int, default=20, help="latency probe jobs on photos")
    ap.add_argument("--probe-rate-digits", type=float, default=20, help="probe jobs per second")
    ap.add_argument("--probe-rate-photos", type=float, default=2, help="probe jobs per second")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench-fleet"))
    ap.add_argument("--docs", action="store_true", help="write fleet.md, fleet.png and fleet.json to --docs-dir")
    ap.add_argument("--docs-dir", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--scorefleet-arg", action="append", default=[],
                    help="extra flag for every scorefleet worker (repeatable), e.g. --scorefleet-arg=--max-batch=64")
    ap.add_argument("--peer-arg", action="append", default=[], help="extra flag for every peer worker (repeatable)")
    ap.add_argument("--vcpu-hour-price", type=float, default=fleet_report.VCPU_HOUR_USD,
                    help="$ per vCPU-hour the worker CPU is priced at (default: "
                         f"{fleet_report.VCPU_HOUR_USD}, {fleet_report.VCPU_PRICE_NOTE})")
    ap.add_argument("--note", help="a sentence on the run's conditions, written into fleet.md (e.g. other load)")
    ap.add_argument("--report-only", action="store_true",
                    help="no runs: rebuild the table (and with --docs the docs) from --out's rounds.json")
    args = ap.parse_args()
    if args.report_only:
        info, rows = load_rounds(args.out)
        if args.note:
            info["note"] = args.note
        if args.vcpu_hour_price != info.get("vcpu_hour_price", fleet_report.VCPU_HOUR_USD):
            info["vcpu_hour_price"], info["vcpu_price_note"] = args.vcpu_hour_price, "set by --vcpu-hour-price"
        report(args, info, rows)
        return
    if args.smoke:
        args.digits, args.photos, args.rounds, args.probe_digits, args.probe_photos = 50, 0, 1, 5, 0
        args.broken = True
    started = time.monotonic()
    # boto3 reads AWS_DEFAULT_REGION; scripts/stack.sh writes the AWS_REGION the Rust SDK reads.
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    os.makedirs(args.out, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    worker_cpus = parse_cpus(args.worker_cpus) if args.worker_cpus else (cpus[1:] or cpus)
    emu_cpus = parse_cpus(args.emulator_cpus) if args.emulator_cpus else ([c for c in cpus if c not in worker_cpus]
                                                                           or cpus)
    with open(os.path.join(os.environ["STACK_DIR"], "pid")) as f:
        stack_pid = int(f.read().strip())
    pin_tree(stack_pid, emu_cpus)
    os.sched_setaffinity(0, emu_cpus)
    log(f"emulator and driver on CPUs {emu_cpus}, workers on CPUs {worker_cpus}")

    setup = {"stamp": datetime.now(timezone.utc).strftime("%H%M%S"), "worker_cpus": worker_cpus,
             "bin": snapshot_binaries(args.out), "models": prepare_models(args.out), "emulator_pid": stack_pid}
    setup["sqs"] = boto3.client("sqs", config=Config(max_pool_connections=16))
    setup["ddb"] = boto3.client("dynamodb")
    setup["s3"] = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    env = dict(os.environ)
    init = subprocess.run([os.path.join(setup["bin"], "scorefleet-producer"), "init", "--prefix",
                           f"fl{setup['stamp']}-archive", "--env"], env=env, check=True, capture_output=True,
                          text=True).stdout
    bucket = re.search(r"SCOREFLEET_BUCKET='([^']+)'", init).group(1)
    setup["manifests"], setup["urls"], sizes = {}, {}, {}
    archives = [a for a, n in (("digits", args.digits), ("photos", args.photos)) if n > 0]
    for archive in archives:
        n = args.digits if archive == "digits" else args.photos
        t = time.monotonic()
        objects = digit_objects(n) if archive == "digits" else photo_objects(n)
        missing = ()
        if args.broken and archive == "digits":
            objects = itertools.chain(objects, broken_objects())
            missing = [k for k in BROKEN if k.endswith("missing.png")]
        path = os.path.join(args.out, f"{archive}.csv")
        setup["urls"][archive], sizes[archive] = upload(bucket, objects, path, missing)
        setup["urls"][archive] = [u for u in setup["urls"][archive] if "/broken/" not in u]
        setup["manifests"][archive] = path
        log(f"uploaded {n} {archive} to s3://{bucket}/{archive}/ (mean {sizes[archive]:.0f} bytes) "
            f"in {time.monotonic() - t:.0f} s")

    fleets = args.fleets.split(",")
    rows, retries = [], []
    for rnd in range(args.rounds):
        for archive in archives:
            order = fleets if rnd % 2 == 0 else fleets[::-1]
            for fleet in order:
                try:
                    rows.append(Run(args, fleet, archive, rnd, setup).execute())
                except RunFailed as e:
                    retries.append(str(e))
                    log(f"{e}; running it again")
                    rows.append(Run(args, fleet, archive, rnd, setup, retry=True).execute())

    info = dict(machine(), workers=args.workers, worker_cpus=worker_cpus, emulator_cpus=emu_cpus,
                rounds=args.rounds, digits=args.digits, photos=args.photos, mean_object_bytes=sizes,
                emulator=os.environ.get("SCOREFLEET_EMULATOR", "ministack"), runs_repeated=retries,
                vcpu_hour_price=args.vcpu_hour_price,
                vcpu_price_note=fleet_report.VCPU_PRICE_NOTE if args.vcpu_hour_price == fleet_report.VCPU_HOUR_USD
                else "set by --vcpu-hour-price",
                scorefleet_args=args.scorefleet_arg, note=args.note,
                runtime_s=round(time.monotonic() - started, 1))
    with open(os.path.join(args.out, "rounds.json"), "w") as f:
        json.dump({"info": info, "rows": [{k: v for k, v in r.items() if k != "top1"} for r in rows]}, f, indent=1)
    report(args, info, rows)


def load_rounds(out):
    """The rows of the last run under `out`, top-1 labels read back from each run's results."""
    with open(os.path.join(out, "rounds.json")) as f:
        saved = json.load(f)
    for r in saved["rows"]:
        with open(os.path.join(out, "runs", r["prefix"], "results.jsonl")) as f:
            results = [json.loads(line) for line in f]
        r["top1"] = {x["url"]: x["top_k"][0]["label"] for j in results for x in per_image(j)
                     if x["status"] == "ok" and not (x.get("attrs") or {}).get("probe")}
    return saved["info"], saved["rows"]


def report(args, info, rows):
    summary = fleet_report.summarise(rows, info)
    if args.docs:
        fleet_report.write_docs(summary, info, args.docs_dir)
    if args.json:
        for row in summary["rows"]:
            print(json.dumps(row))
    else:
        print(fleet_report.text_table(summary, info))
    if summary["problems"]:
        log("check failed: " + "; ".join(summary["problems"]))
        sys.exit(1)
    log(f"done; the runs took {info['runtime_s']:.0f} s")


if __name__ == "__main__":
    main()
