"""Shared parts of the benchmark drivers (bench/worker, bench/soak,
bench/chaos): a provisioned stack, MNIST digits in S3, jobs enqueued with the
producer, release worker processes and their /proc and /metrics samples.

Every driver runs inside scripts/with-stack.sh, so AWS_ENDPOINT_URL and the
region point at the local emulator.
"""
import concurrent.futures
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from demo_archive import png, read_idx  # noqa: E402  (the demo's MNIST → PNG)

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def log(tool, msg):
    print(f"{tool}: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir(arg):
    """The release binaries: `arg` relative to the repository root."""
    return os.path.join(ROOT, arg or os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release"))


def proc_sample(pid):
    """(cpu_s, rss_bytes, open_fds) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = int(fields[21]) * PAGE
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return cpu, rss, fds


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric(text, name):
    """Sum of every sample of `name`, whatever its labels."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            total += float(value)
    return total


def by_label(text, name, label):
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf'^{name}{{{label}="([^"]+)"}} (\S+)$', text, re.M)}


def finished(text):
    """Jobs a worker has finished (scored or failed), from its /metrics."""
    return metric(text, "scorefleet_jobs_succeeded_total") + metric(text, "scorefleet_jobs_failed_total")


def init_stack(bins, prefix, extra=()):
    """Provisions queues (with DLQ), table and bucket; returns the environment for the binaries."""
    env = dict(os.environ)
    out = subprocess.run([f"{bins}/scorefleet-producer", "init", "--prefix", prefix, "--env", *extra],
                         env=env, check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        m = re.match(r"export (\w+)='(.*)'$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def client(service, **config):
    """A boto3 client for the emulator (boto3 reads AWS_DEFAULT_REGION; the stack exports AWS_REGION)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(service, region_name=region, config=Config(**config) if config else None)


def upload_digits(env, unique, key_prefix="bench"):
    """Uploads the first `unique` MNIST test digits as PNG; returns their s3:// URLs."""
    s3 = client("s3", max_pool_connections=32, retries={"max_attempts": 8})
    (n, h, w), pixels = read_idx(os.path.join(ROOT, "data/mnist/t10k-images.idx3-ubyte.gz"))
    bucket = env["SCOREFLEET_BUCKET"]
    count = min(unique, n)

    def put(i):
        img = pixels[i * h * w:(i + 1) * h * w]
        s3.put_object(Bucket=bucket, Key=f"{key_prefix}/{i:05}.png",
                      Body=png(w, h, [img[r * w:(r + 1) * w] for r in range(h)]))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    return [f"s3://{bucket}/{key_prefix}/{i:05}.png" for i in range(count)]


def multi_job_id(run_id, urls):
    """The producer's default id of a job of several images (docs/protocol.md): SHA-256 over the run,
    a NUL and each URL after its length (8 bytes, little-endian), first 128 bits in hex."""
    h = hashlib.sha256(run_id.encode() + b"\0")
    for u in urls:
        h.update(len(u.encode()).to_bytes(8, "little") + u.encode())
    return h.hexdigest()[:32]


def enqueue(bins, env, out_dir, name, jobs, urls, images_per_job=1):
    """Enqueues `jobs` jobs with the producer; returns the ids. One image per job: explicit job ids
    `name-0000000`… (so one image may appear in several jobs). Several: `images_per_job` images a
    job, ids derived by the producer (and here, to know them), each job's first two images chosen so
    that no two jobs hold the same list."""
    manifest = os.path.join(out_dir, f"{name}.jsonl")
    run_id = f"{name}-{int(time.time())}"
    n = len(urls)
    with open(manifest, "w") as f:
        if images_per_job == 1:
            ids = [f"{name}-{i:07}" for i in range(jobs)]
            for i, job_id in enumerate(ids):
                f.write(json.dumps({"url": urls[i % n], "job_id": job_id}) + "\n")
        else:
            assert jobs <= n * n, f"{jobs} jobs of distinct image lists need more than {n} images"
            ids = []
            for g in range(jobs):
                group = [urls[g % n], urls[(g // n) % n]] + [urls[(g * 7 + k) % n] for k in range(2, images_per_job)]
                group = group[:images_per_job]
                ids.append(multi_job_id(run_id, group))
                for u in group:
                    f.write(json.dumps({"url": u}) + "\n")
            assert len(set(ids)) == jobs
    out = subprocess.run(
        [f"{bins}/scorefleet-producer", "enqueue", "--manifest", manifest, "--format", "jsonl",
         "--run-id", run_id, "--images-per-job", str(images_per_job), "--json"],
        env=env, check=True, capture_output=True, text=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["enqueued"] == jobs, f"enqueued {report['enqueued']} of {jobs}"
    return ids


class Worker:
    """One release scorefleet-worker process with its own metrics port and log."""

    def __init__(self, bins, env, name, out_dir, args=(), endpoint=None):
        self.name = name
        self.port = free_port()
        cmd = [f"{bins}/scorefleet-worker", "--model", "digits", "--http-addr", f"127.0.0.1:{self.port}",
               "--worker-id", name, "--model-cache", os.path.join(out_dir, "model-cache"), *args]
        env = dict(env)
        if endpoint:
            env["AWS_ENDPOINT_URL"] = endpoint
        self.log = open(os.path.join(out_dir, f"worker-{name}.log"), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def metrics(self):
        return scrape(self.port)

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.poll() is not None:
                self.log.close()
