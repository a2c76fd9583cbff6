#!/usr/bin/env python3
"""bench/chaos's driver (run inside scripts/with-stack.sh): a run of digits
scored by 3 release workers while they are killed, stopped and cut off.

First a fault-free run of the same size and fleet (the baseline wall time),
then the chaos run on fresh queues and table. During the chaos run:

  * every --kill-every seconds a random worker gets SIGKILL and a new one starts;
  * every --term-every seconds a random worker gets SIGTERM mid-batch (it
    drains and exits 0) and a new one starts;
  * every --cut-every seconds the network between the workers and the
    emulator is cut for --cut-seconds: the workers reach AWS through a TCP
    proxy of this script, which then resets every open connection and every
    new one.

The faults stop when every job has a result; the fleet then runs on until the
queue is settled, and the script checks, against the emulator itself:

  lost               jobs with no result message or no finished outcome record
  double_outcomes    jobs scored more than once: result messages for one job
                     that differ in worker or completion time
  duplicate_results  result messages delivered beyond one per job (re-sends of
                     a stored result after a crash between send and delete);
                     must not exceed the crashes
  stranded           messages left in the input queue or the DLQ, and outcome
                     records left IN_PROGRESS, after the fleet settled

The output queue is a FIFO queue (`producer init --fifo-results`): workers
key each result by its job id, and SQS drops a re-send within five minutes.
--standard-results measures a standard output queue instead, where every
re-send is delivered.

--json prints one object with at least jobs, crashes, lost, double_outcomes,
duplicate_results, stranded.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import threading
import time
from urllib.parse import urlparse

from common import ROOT, Worker, bin_dir, client, enqueue, init_stack, log, upload_digits

TOOL = "bench/chaos"


class CutProxy:
    """A TCP proxy to the emulator that can cut the network: while cut, every
    open connection is reset and every new one is closed at once."""

    def __init__(self, upstream):
        u = urlparse(upstream)
        self.up_host, self.up_port = u.hostname, u.port or 80
        self.cut = False
        self.conns = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    async def _client(self, reader, writer):
        if self.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.up_host, self.up_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.conns.add(pair)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort() if self.cut else dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.conns.discard(pair)

    def set_cut(self, cut):
        def apply():
            self.cut = cut
            if cut:
                for a, b in list(self.conns):
                    a.transport.abort()
                    b.transport.abort()
                self.conns.clear()

        self.loop.call_soon_threadsafe(apply)


class Collector(threading.Thread):
    """Drains the output queue into memory, deleting what it has read."""

    def __init__(self, queue_url):
        super().__init__(daemon=True)
        self.sqs = client("sqs", retries={"max_attempts": 10})
        self.url = queue_url
        self.bodies = []
        self.ids = set()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            got = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            msgs = got.get("Messages", [])
            for m in msgs:
                r = json.loads(m["Body"])
                self.bodies.append(r)
                self.ids.add(r["job_id"])
            if msgs:
                self.sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])


def depth(sqs, url):
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def fifo_dedup_outlives_delete(prefix):
    """Whether the emulator keeps SQS's FIFO deduplication window after the
    first copy is deleted (AWS does, for five minutes; moto forgets an id once
    its message is gone). Where it does not, re-sent results reach the
    collector and duplicate_results measures the emulator, not the fleet."""
    sqs = client("sqs")
    url = sqs.create_queue(QueueName=f"{prefix}-probe.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    try:
        send = dict(QueueUrl=url, MessageBody="probe", MessageGroupId="probe", MessageDeduplicationId="probe")
        sqs.send_message(**send)
        first = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=2).get("Messages", [])
        if not first:
            raise RuntimeError("the FIFO probe message never arrived")
        sqs.delete_message(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"])
        sqs.send_message(**send)
        return not sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
    finally:
        sqs.delete_queue(QueueUrl=url)


def outcome_statuses(table, ids):
    ddb = client("dynamodb")
    out = {}
    for i in range(0, len(ids), 100):
        keys = [{"job_id": {"S": j}} for j in ids[i:i + 100]]
        while keys:
            got = ddb.batch_get_item(RequestItems={table: {"Keys": keys}})
            for item in got["Responses"].get(table, []):
                out[item["job_id"]["S"]] = item.get("status", {}).get("S")
            keys = got.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
    return out


def run(args, bins, urls_for, name, chaos):
    """One run on fresh resources; the fault loop when `chaos`."""
    env = init_stack(bins, f"{name}-{os.getpid()}", ["--visibility-timeout", str(args.lease),
                                                     "--max-receive-count", str(args.max_receive_count),
                                                     *([] if args.standard_results else ["--fifo-results"])])
    os.environ.update(env)
    urls = urls_for(env)
    ids = enqueue(bins, env, args.out, name, args.jobs, urls, args.images_per_job)
    proxy = CutProxy(os.environ["AWS_ENDPOINT_URL"]) if chaos else None
    worker_args = ["--lease-seconds", str(args.lease), "--drain-timeout-seconds", "10", "--wait-seconds", "2",
                   "--dedup", args.dedup]
    serial = iter(range(1, 1_000_000))

    def spawn():
        return Worker(bins, env, f"{name}-w{next(serial)}", args.out, worker_args,
                      endpoint=proxy.url if proxy else None)

    collector = Collector(env["SCOREFLEET_OUTPUT_QUEUE_URL"])
    collector.start()
    started = time.monotonic()
    fleet = [spawn() for _ in range(args.workers)]
    stopping = []  # SIGTERMed workers, draining
    crashes = terms = cuts = 0
    exit_codes = []
    rng = random.Random(args.seed)
    next_kill = started + args.kill_every
    next_term = started + args.term_every
    next_cut = started + args.cut_every
    cut_until = None
    deadline = started + args.timeout
    while len(collector.ids) < len(ids):
        time.sleep(0.2)
        now = time.monotonic()
        if now > deadline:
            break
        for w in list(stopping):
            if not w.alive():
                exit_codes.append(w.proc.returncode)
                stopping.remove(w)
        if not chaos:
            continue
        if cut_until and now >= cut_until:
            proxy.set_cut(False)
            cut_until = None
            log(TOOL, "network restored")
        if now >= next_kill:
            victim = fleet.pop(rng.randrange(len(fleet)))
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            crashes += 1
            fleet.append(spawn())
            next_kill = now + args.kill_every
            log(TOOL, f"kill -9 {victim.name}; {len(collector.ids)}/{len(ids)} results")
        if now >= next_term:
            victim = fleet.pop(rng.randrange(len(fleet)))
            victim.signal(signal.SIGTERM)
            stopping.append(victim)
            terms += 1
            fleet.append(spawn())
            next_term = now + args.term_every
            log(TOOL, f"SIGTERM {victim.name}")
        if now >= next_cut and cut_until is None:
            proxy.set_cut(True)
            cuts += 1
            cut_until = now + args.cut_seconds
            next_cut = now + args.cut_every
            log(TOOL, f"network cut for {args.cut_seconds} s")
    if proxy and cut_until:
        proxy.set_cut(False)
    wall = time.monotonic() - started

    # Settle: the fleet runs on (no more faults) until the input queue is
    # empty, in flight included, or a lease and a half has passed.
    sqs = client("sqs")
    settle_until = time.monotonic() + args.lease * 1.5 + 10
    while time.monotonic() < settle_until and depth(sqs, env["SCOREFLEET_INPUT_QUEUE_URL"]) != (0, 0):
        time.sleep(1)
    time.sleep(3)  # the last re-sends reach the collector
    for w in fleet + stopping:
        w.signal(signal.SIGTERM)
    for w in fleet + stopping:
        rc = w.wait(30)
        exit_codes.append(rc)
    collector.stop.set()
    collector.join(10)

    statuses = outcome_statuses(env["SCOREFLEET_TABLE"], ids)
    per_job = {}
    for r in collector.bodies:
        per_job.setdefault(r["job_id"], set()).add((r.get("worker"), r.get("completed_at")))
    lost = [j for j in ids if j not in collector.ids or statuses.get(j) not in ("COMPLETED", "FAILED")]
    double = [j for j, seen in per_job.items() if len(seen) > 1]
    in_queue = depth(sqs, env["SCOREFLEET_INPUT_QUEUE_URL"])
    in_dlq = depth(sqs, env["SCOREFLEET_DLQ_URL"]) if "SCOREFLEET_DLQ_URL" in env else (0, 0)
    in_progress = sum(1 for s in statuses.values() if s == "IN_PROGRESS")
    return {
        "jobs": len(ids),
        "wall_s": wall,
        "crashes": crashes,
        "sigterms": terms,
        "network_cuts": cuts,
        "results": len(collector.bodies),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "double_outcomes": len(double),
        "double_outcome_ids": double[:20],
        "duplicate_results": len(collector.bodies) - len(collector.ids),
        "stranded": sum(in_queue) + sum(in_dlq) + in_progress,
        "stranded_detail": {"input_queue": in_queue, "dlq": in_dlq, "in_progress_records": in_progress},
        "failed_results": sum(1 for r in collector.bodies if r.get("status") != "ok"),
        "worker_exit_codes": exit_codes,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--images-per-job", type=int, default=1,
                    help="jobs of several images (enqueue --images-per-job); lost/double/stranded count jobs")
    ap.add_argument("--unique", type=int, default=2000, help="distinct images uploaded (jobs reuse them)")
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds between kill -9s")
    ap.add_argument("--term-every", type=float, default=5.0, help="seconds between SIGTERMs")
    ap.add_argument("--cut-every", type=float, default=8.0, help="seconds between network cuts")
    ap.add_argument("--cut-seconds", type=float, default=3.0)
    ap.add_argument("--lease", type=int, default=10, help="queue visibility and worker lease, seconds")
    ap.add_argument("--max-receive-count", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dedup", choices=["claim", "finish-only", "auto"], default="auto",
                    help="the workers' --dedup mode (auto: finish-only on digits, after the first 64 images)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the fault-free run")
    ap.add_argument("--bin-dir", help="release binaries (default: $CARGO_TARGET_DIR/release or target/release)")
    ap.add_argument("--out", default="out/bench-chaos")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--standard-results", action="store_true",
                    help="a standard output queue (every re-sent result is delivered) instead of a FIFO one")
    ap.add_argument("--require-faults", action="store_true",
                    help="fail unless at least one kill -9, one SIGTERM and one cut happened (CI: a run too "
                         "short for its faults proves nothing)")
    args = ap.parse_args()
    bins = bin_dir(args.bin_dir)
    args.out = os.path.join(ROOT, args.out)
    os.makedirs(args.out, exist_ok=True)

    uploaded = {}

    def urls_for(env):
        # One upload serves both runs: the bucket of the first run stays.
        if "urls" not in uploaded:
            log(TOOL, f"uploading {args.unique} digits")
            uploaded["urls"] = upload_digits(env, args.unique)
        return uploaded["urls"]

    baseline = None
    if not args.no_baseline:
        log(TOOL, f"fault-free run: {args.jobs} jobs, {args.workers} workers")
        baseline = run(args, bins, urls_for, "calm", chaos=False)
        log(TOOL, f"fault-free: {baseline['wall_s']:.1f} s, lost {baseline['lost']}")
    log(TOOL, f"chaos run: {args.jobs} jobs, {args.workers} workers")
    chaos = run(args, bins, urls_for, "chaos", chaos=True)
    summary = {"bench": "chaos", "emulator": os.environ.get("SCOREFLEET_EMULATOR", "ministack"),
               "date": time.strftime("%Y-%m-%d"), "workers": args.workers, "dedup": args.dedup,
               "images_per_job": args.images_per_job,
               "output_queue": "standard" if args.standard_results else "fifo", **chaos}
    # duplicate_results <= crashes is the fleet's promise with a FIFO output
    # queue as SQS implements it; on an emulator whose deduplication forgets a
    # deleted message's id, the re-sends are delivered and counted anyway.
    # Probed only with a FIFO output queue (None: not probed).
    dedup_kept = None if args.standard_results else fifo_dedup_outlives_delete(f"probe-{os.getpid()}")
    summary["emulator_fifo_dedup_after_delete"] = dedup_kept
    duplicates_checked = bool(dedup_kept)
    summary["duplicate_results_checked"] = duplicates_checked
    if baseline:
        summary["baseline_wall_s"] = baseline["wall_s"]
        summary["baseline_lost"] = baseline["lost"]
        summary["wall_ratio_vs_fault_free"] = chaos["wall_s"] / baseline["wall_s"]
    ok = (chaos["lost"] == 0 and chaos["double_outcomes"] == 0 and chaos["stranded"] == 0
          and (not duplicates_checked or chaos["duplicate_results"] <= chaos["crashes"])
          and (baseline is None or baseline["lost"] == 0))
    if args.require_faults and min(chaos["crashes"], chaos["sigterms"], chaos["network_cuts"]) == 0:
        log(TOOL, "FAILED: the run ended before every kind of fault happened (--require-faults)")
        ok = False
    summary["ok"] = ok
    if not args.json:
        print(f"chaos: {chaos['jobs']} jobs, {args.workers} workers (--dedup {args.dedup}), "
              f"{summary['output_queue']} output queue, "
              f"{chaos['crashes']} kill -9, "
              f"{chaos['sigterms']} SIGTERM, {chaos['network_cuts']} network cuts of {args.cut_seconds} s")
        for k in ("lost", "double_outcomes", "duplicate_results", "stranded"):
            print(f"  {k:<20}{chaos[k]}")
        if not duplicates_checked:
            why = ("a standard output queue delivers every re-send" if args.standard_results else
                   "this emulator forgets a FIFO deduplication id once its message is deleted (SQS keeps it "
                   "five minutes), so re-sent results reach the collector")
            print(f"  duplicate_results not held to <= crashes: {why}")
        if baseline:
            print(f"  wall {chaos['wall_s']:.1f} s vs fault-free {baseline['wall_s']:.1f} s "
                  f"({summary['wall_ratio_vs_fault_free']:.2f}x)")
    print(json.dumps(summary))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
