#!/usr/bin/env python3
"""The peer: the Python SQS worker a competent engineer writes, scorefleet's
baseline in bench/fleet. boto3 + onnxruntime + Pillow + numpy.

One worker = this command. It runs --procs consumer processes (default: one
per CPU it may use; one process runs in place, more are forked after the
imports), each of them:

  2 receiver threads   long-poll SQS (20 s, 10 messages), while fewer than
                       --max-in-flight messages are held (the lease is the
                       visibility timeout, never renewed, so holding is bounded)
  16 I/O threads       parse the job strictly, claim it in DynamoDB (one
                       conditional PutItem), GetObject from S3, decode and
                       preprocess with Pillow + numpy
  the main thread      gathers preprocessed images into batches across
                       messages (up to 32, waiting at most 20 ms) and runs
                       onnxruntime on each batch
  2 emitter threads    per group of up to 50 finished jobs: BatchWriteItem of
                       the outcomes (×25), SendMessageBatch of the results
                       (×10), then DeleteMessageBatch (×10)

Same message formats as scorefleet (job JSON v1 parsed with the same rules,
result JSON of the same shape, typed error results), same outcome table
semantics (bench/peer/dedup.py), same model weights (ONNX export of the
safetensors scorefleet loads) and scorefleet's manifest for preprocessing.
Options read the same SCOREFLEET_* variables as scorefleet-worker.

With --stats-dir each process writes its counters (AWS requests by API,
jobs, batches) as JSON there, four times a second: bench/fleet reads them.
"""
import argparse
import faulthandler
import json
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

# numpy's OpenBLAS would start a thread per core in every process; the
# consumers are single-threaded by design (onnxruntime has its own pool).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import boto3  # noqa: E402
import numpy as np  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dedup import Claims  # noqa: E402
from jobs import InvalidJob, error_result, ok_result, parse_job  # noqa: E402
from model import JobFailure, Model  # noqa: E402

RETRYABLE = {"fetch_failed", "internal"}
# The outcome table's by_run index refuses an empty key: unparsable jobs are
# filed under this run (as scorefleet does).
INVALID_RUN = "invalid-messages"


def log(msg):
    print(f"peer[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def snapshot(self):
        with self.lock:
            return dict(self.values)


def make_clients(counters, pool):
    """SQS, DynamoDB and S3 clients sharing one session; every API call is counted."""
    path_style = os.environ.get("SCOREFLEET_S3_PATH_STYLE", "1" if os.environ.get("AWS_ENDPOINT_URL") else "0")
    # A read timeout above the 20 s long poll, so a silent connection is retried rather than waited on.
    cfg = Config(max_pool_connections=pool, retries={"mode": "standard", "max_attempts": 4},
                 connect_timeout=5, read_timeout=40,
                 s3={"addressing_style": "path" if path_style in ("1", "true") else "auto"})
    # AWS_REGION as the Rust SDK reads it (boto3 alone reads only AWS_DEFAULT_REGION).
    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
    out = []
    for service in ("sqs", "dynamodb", "s3"):
        client = session.client(service, config=cfg)
        # One count per API call (SDK retries of a call are not counted), as scorefleet's ApiCounters.
        client.meta.events.register("before-call", lambda model, **_: counters.add("api:" + model.name))
        out.append(client)
    return out


class Consumer:
    def __init__(self, args, worker_id):
        self.args = args
        self.worker_id = worker_id
        self.counters = Counters()
        self.sqs, self.ddb, self.s3 = make_clients(self.counters, args.io_threads + 8)
        self.model = Model(args.model_manifest, args.onnx, args.ort_threads, args.max_image_bytes, args.max_pixels)
        self.claims = Claims(self.ddb, args.table, worker_id, args.lease_seconds, counters=self.counters)
        self.stop = threading.Event()
        self.cv = threading.Condition()
        self.in_flight = 0
        self.pool = ThreadPoolExecutor(args.io_threads, thread_name_prefix="io")
        self.ready_q = queue.Queue()  # (ctx, job, tensor): bounded by --max-in-flight
        self.emit_q = queue.Queue()  # ("finish" | "resend", ctx, job_or_None, result_json, status)
        self.ready_at = None

    # -- bookkeeping -------------------------------------------------------
    def _done(self, n=1):
        with self.cv:
            self.in_flight -= n
            self.cv.notify_all()

    def _write_stats(self):
        if not self.args.stats_dir:
            return
        path = os.path.join(self.args.stats_dir, f"{self.worker_id}-{os.getpid()}.json")
        body = {"worker_id": self.worker_id, "pid": os.getpid(), "ready_at": self.ready_at,
                "in_flight": self.in_flight, "counters": self.counters.snapshot()}
        with open(path + ".tmp", "w") as f:
            json.dump(body, f)
        os.replace(path + ".tmp", path)

    def _stats_loop(self):
        # bench/fleet reads progress from these files: a failed write is reported and retried, never
        # the end of the thread (a bench run once waited on a writer that had vanished).
        while not self.stop.wait(0.25):
            try:
                self._write_stats()
            except Exception:  # noqa: BLE001
                log("stats write failed:\n" + traceback.format_exc())

    # -- receive -----------------------------------------------------------
    def _receive_loop(self):
        backoff = 0.1
        while not self.stop.is_set():
            with self.cv:
                while self.in_flight > self.args.max_in_flight - 10 and not self.stop.is_set():
                    self.cv.wait(0.5)
            if self.stop.is_set():
                return
            try:
                resp = self.sqs.receive_message(
                    QueueUrl=self.args.input_queue_url, MaxNumberOfMessages=10,
                    WaitTimeSeconds=self.args.wait_seconds, MessageSystemAttributeNames=["ApproximateReceiveCount"])
                backoff = 0.1
            except (ClientError, BotoCoreError) as e:
                log(f"receive failed: {e}; retrying in {backoff:.1f} s")
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            msgs = resp.get("Messages", [])
            now = time.monotonic()
            with self.cv:
                self.in_flight += len(msgs)
            self.counters.add("received", len(msgs))
            for m in msgs:
                self.pool.submit(self._handle, m, now)

    # -- claim, fetch, decode (I/O threads) ---------------------------------
    def _handle(self, msg, received):
        ctx = {"receipt": msg["ReceiptHandle"], "received": received,
               "attempts": int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "1"))}
        job = None
        try:
            try:
                job = parse_job(msg["Body"])
            except InvalidJob as e:
                if e.job_id is None:
                    # Nothing to answer: the queue's redrive policy takes it to the DLQ.
                    self.counters.add("left_for_redrive")
                    self._done()
                    return
                job = {"job_id": e.job_id, "url": "", "run_id": "", "attrs": None}
                self._fail(ctx, job, "invalid_message", str(e))
                return
            state, stored = self.claims.claim(job["job_id"], job["run_id"], ctx["attempts"])
            if state == "busy":
                self.counters.add("busy")
                self._done()
                return
            if state == "done":
                self.counters.add("duplicates")
                self.emit_q.put(("resend", ctx, None, stored, None))
                return
            data = self._fetch(job)
            tensor = self.model.preprocess(data)
            self.ready_q.put((ctx, job, tensor))
        except JobFailure as f:
            self._fail(ctx, job, f.kind, str(f))
        except Exception as e:  # a bug or an outage: retryable, never a lost message
            self._fail(ctx, job, "internal", f"{type(e).__name__}: {e}")

    def _fetch(self, job):
        kind, bucket, key = job["source"]
        if kind != "s3":
            raise JobFailure("blocked_url", "this worker fetches s3:// objects only")
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
            if obj.get("ContentLength", 0) > self.args.max_image_bytes:
                obj["Body"].close()
                raise JobFailure("too_large", f"{obj['ContentLength']} bytes, limit {self.args.max_image_bytes}")
            return obj["Body"].read()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NoSuchBucket", "404") or status == 404:
                raise JobFailure("fetch_not_found", f"s3://{bucket}/{key}: {code}") from None
            if code in ("AccessDenied", "403") or status == 403:
                raise JobFailure("fetch_denied", f"s3://{bucket}/{key}: {code}") from None
            raise JobFailure("fetch_failed", f"s3://{bucket}/{key}: {code or e}") from None
        except BotoCoreError as e:
            raise JobFailure("fetch_failed", f"s3://{bucket}/{key}: {e}") from None

    def _fail(self, ctx, job, kind, message):
        if job is None:
            job = {"job_id": "", "url": "", "run_id": ""}
        if kind in RETRYABLE:
            # Leave the message: it returns after its visibility timeout, and
            # the redrive policy ends a failure that persists.
            self.counters.add("retryable:" + kind)
            try:
                if job["job_id"]:
                    self.claims.release(job["job_id"])
            except (ClientError, BotoCoreError) as e:
                log(f"release of {job['job_id']} failed: {e}")
            self._done()
            return
        self.counters.add("failed:" + kind)
        result = error_result(job, ctx["attempts"], self.worker_id, ctx["received"], kind, message)
        self.emit_q.put(("finish", ctx, job, json.dumps(result, separators=(",", ":"), ensure_ascii=False),
                         "FAILED"))

    # -- inference (main thread) ----------------------------------------------
    def _infer_loop(self):
        a = self.args
        while True:
            try:
                first = self.ready_q.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set() and self.in_flight == 0:
                    return
                continue
            batch = [first]
            deadline = time.monotonic() + a.max_wait_ms / 1000
            while len(batch) < a.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.ready_q.get_nowait() if left <= 0 else self.ready_q.get(timeout=left))
                except queue.Empty:
                    break
            self.counters.add("batches")
            self.counters.add("batch_items", len(batch))
            try:
                tops = self.model.predict(np.stack([t for _, _, t in batch]), a.top_k)
            except Exception as e:
                for ctx, job, _ in batch:
                    self._fail(ctx, job, "inference", f"{type(e).__name__}: {e}")
                continue
            for (ctx, job, _), top in zip(batch, tops):
                r = ok_result(job, ctx["attempts"], self.worker_id, ctx["received"], self.model.ref, top)
                self.counters.add("succeeded")
                self.emit_q.put(("finish", ctx, job, json.dumps(r, separators=(",", ":"), ensure_ascii=False),
                                 "COMPLETED"))

    # -- record, send, delete (emitter threads) ----------------------------------
    def _emit_loop(self):
        while True:
            try:
                items = [self.emit_q.get(timeout=0.2)]
            except queue.Empty:
                if self.stop.is_set() and self.in_flight == 0:
                    return
                continue
            deadline = time.monotonic() + 0.01
            while len(items) < 50:
                try:
                    items.append(self.emit_q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._emit(items)
            except Exception as e:  # the messages return after their visibility timeout
                log(f"emit of {len(items)} jobs failed: {type(e).__name__}: {e}")
                self.counters.add("emit_failures")
            self._done(len(items))

    def _emit(self, items):
        finished = [(job["job_id"], job["run_id"] or INVALID_RUN, ctx["attempts"], status, body)
                    for kind, ctx, job, body, status in items if kind == "finish"]
        if finished:
            self.claims.finish_many(finished)
        bodies = [body for _, _, _, body, _ in items if body]
        for i in range(0, len(bodies), 10):
            entries = [{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i:i + 10])]
            for attempt in range(3):
                failed = self.sqs.send_message_batch(QueueUrl=self.args.output_queue_url,
                                                     Entries=entries).get("Failed", [])
                ids = {f["Id"] for f in failed if not f.get("SenderFault")}
                entries = [e for e in entries if e["Id"] in ids]
                if not entries:
                    break
                time.sleep(0.05 * 2 ** attempt)
            if entries or any(f.get("SenderFault") for f in failed):
                raise RuntimeError("results not sent")
        self.counters.add("results_sent", len(bodies))
        handles = list(dict.fromkeys(ctx["receipt"] for _, ctx, _, _, _ in items))
        for i in range(0, len(handles), 10):
            entries = [{"Id": str(j), "ReceiptHandle": h} for j, h in enumerate(handles[i:i + 10])]
            failed = self.sqs.delete_message_batch(QueueUrl=self.args.input_queue_url,
                                                   Entries=entries).get("Failed", [])
            self.counters.add("deleted", len(entries) - len(failed))

    def run(self):
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        # Ready only once the queues answer, as scorefleet's /readyz.
        for url in (self.args.input_queue_url, self.args.output_queue_url):
            self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        self.ready_at = time.time()
        self._write_stats()
        log(f"ready: {self.model.name}, {self.args.receivers} receivers, {self.args.io_threads} I/O threads")
        threads = [threading.Thread(target=self._stats_loop, daemon=True)]
        threads += [threading.Thread(target=self._receive_loop, daemon=True) for _ in range(self.args.receivers)]
        emitters = [threading.Thread(target=self._emit_loop) for _ in range(2)]
        for t in threads + emitters:
            t.start()
        self._infer_loop()
        for t in emitters:
            t.join()
        self.pool.shutdown(wait=True)
        self._write_stats()


def consume(args, worker_id):
    Consumer(args, worker_id).run()


def env(name, default=None):
    return os.environ.get(f"SCOREFLEET_{name}", default)


def main():
    faulthandler.enable()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-queue-url", default=env("INPUT_QUEUE_URL"))
    ap.add_argument("--output-queue-url", default=env("OUTPUT_QUEUE_URL"))
    ap.add_argument("--table", default=env("TABLE"))
    ap.add_argument("--model-manifest", required=True, help="scorefleet's manifest.json of the model")
    ap.add_argument("--onnx", required=True, help="the same weights as ONNX")
    ap.add_argument("--procs", type=int, default=0, help="consumer processes (0: one per usable CPU)")
    ap.add_argument("--ort-threads", type=int, default=0, help="onnxruntime intra-op threads (0: CPUs / procs)")
    ap.add_argument("--receivers", type=int, default=2)
    ap.add_argument("--wait-seconds", type=int, default=20)
    ap.add_argument("--io-threads", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=20)
    ap.add_argument("--max-in-flight", type=int, default=128, help="messages held per process")
    ap.add_argument("--lease-seconds", type=int, default=60, help="claim lease: the queue's visibility timeout")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--max-image-bytes", type=int, default=20 << 20)
    ap.add_argument("--max-pixels", type=int, default=40_000_000)
    ap.add_argument("--worker-id", default=env("WORKER_ID"))
    ap.add_argument("--stats-dir", help="write per-process counters here (bench/fleet)")
    args = ap.parse_args()
    for name in ("input_queue_url", "output_queue_url", "table"):
        if not getattr(args, name):
            ap.error(f"--{name.replace('_', '-')} (or SCOREFLEET_{name.upper()}) is required")
    cpus = len(os.sched_getaffinity(0))
    args.procs = args.procs or cpus
    args.ort_threads = args.ort_threads or max(1, cpus // args.procs)
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    if args.stats_dir:
        os.makedirs(args.stats_dir, exist_ok=True)
    if args.procs == 1:
        consume(args, worker_id)
        return
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=consume, args=(args, f"{worker_id}-{i}")) for i in range(args.procs)]
    for p in procs:
        p.start()

    def forward(sig, _frame):
        for p in procs:
            if p.pid:
                os.kill(p.pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    sys.exit(max((p.exitcode or 0) for p in procs))


if __name__ == "__main__":
    main()
