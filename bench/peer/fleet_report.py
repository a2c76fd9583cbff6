"""bench/fleet's figures: medians over rounds, ratios, request cost, checks,
and the text table, docs/bench/fleet.md, fleet.png and fleet.json.

Request prices: AWS us-east-1 list prices as published since the DynamoDB
on-demand price cut of 2024-11-01 (SQS and S3 unchanged since long before),
as recalled when this file was written on 2026-11-27 — they could not be
re-checked online from this machine. Free tiers are ignored.
"""
import json
import math
import os
import statistics

PRICES_DATE = "list prices in force since 2024-11-01, recalled on 2026-11-27 and not re-checked online"
# Worker CPU: the default of --vcpu-hour-price, an on-demand x86 vCPU-hour in us-east-1 (Linux):
# c7i.large, 2 vCPUs at $0.08925 an hour, its list price since the c7i launch (2023-08), recalled on
# 2026-12-01 and not re-checked online. A vCPU here is a hyperthread, as the benchmark's cores are.
VCPU_HOUR_USD = 0.044625
VCPU_PRICE_NOTE = ("c7i.large on-demand, us-east-1 Linux, $0.08925/h for 2 vCPUs (list price since 2023-08, "
                   "recalled on 2026-12-01, not re-checked online)")
SQS_PER_M = 0.40  # standard queue, per million requests; each 64 KiB chunk of a payload is a request
DDB_WRU_PER_M = 0.625  # on-demand, per million write request units (1 KB each)
DDB_RRU_PER_M = 0.125  # on-demand, per million read request units (4 KB strongly consistent)
S3_GET_PER_M = 0.40  # S3 Standard GET, $0.0004 per 1,000

SQS_APIS = {"ReceiveMessage", "SendMessage", "SendMessageBatch", "DeleteMessage", "DeleteMessageBatch",
            "ChangeMessageVisibility", "ChangeMessageVisibilityBatch", "GetQueueAttributes", "GetQueueUrl"}
DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}
DDB_READS = {"GetItem"}  # strongly consistent: one read unit each (items < 4 KB)
S3_GETS = {"GetObject", "HeadObject"}
# Writes to the outcome table's global secondary index by_run, per job. scorefleet's index is sparse
# (docs/protocol.md): only a finish writes the index key (run_id), so a job costs one index write in
# either dedup mode; claims, renewals and releases write no indexed attribute. The peer's claim
# (PutItem) writes run_id and its finish rewrites the item: two, plus one per release by DeleteItem.
INDEX_WRITES_PER_IMAGE = {"scorefleet": 1, "peer": 2}
# scorefleet's finish-only mode reads each job's record once, in a BatchGetItem (eventually
# consistent: half a read unit per item under 4 KB); the worker counts the items it asked for.
EVENTUAL_READ_UNITS_PER_ITEM = 0.5
# Attributes of a finished item besides the result JSON (job_id, status, owner, attempt, lease, run_id,
# expiry, finish time, attribute names), in bytes: an upper estimate.
ITEM_OVERHEAD_BYTES = 200

METRICS = [  # (key, label, format)
    ("images_per_s", "end-to-end images/s", "{:.1f}"),
    ("steady_images_per_s", "images/s after the first result", "{:.1f}"),
    ("cold_start_s", "cold start: spawn → first result (s)", "{:.2f}"),
    ("ready_s", "spawn → ready (s)", "{:.2f}"),
    ("latency_ms_p50", "latency receive → result p50, backlog (ms)", "{:.0f}"),
    ("latency_ms_p99", "latency receive → result p99, backlog (ms)", "{:.0f}"),
    ("probe_latency_ms_p50", "latency enqueue → result p50, light load (ms)", "{:.0f}"),
    ("probe_latency_ms_p99", "latency enqueue → result p99, light load (ms)", "{:.0f}"),
    ("mean_batch_fill", "mean batch fill", "{:.1f}"),
    ("max_in_flight_per_worker", "most messages held by one worker", "{:.0f}"),
    ("worker_cpu_util", "worker CPUs busy (share of their cores)", "{:.2f}"),
    ("emulator_cpu_util", "emulator busy (cores)", "{:.2f}"),
    ("cpu_ms_per_image", "worker CPU per image (ms)", "{:.2f}"),
    ("cpu_ms_per_image_after_ready", "  of which after start-up (ms)", "{:.2f}"),
    ("startup_cpu_s_per_worker", "start-up CPU per worker (s)", "{:.2f}"),
    ("images_per_core_s", "images/s one core would give (1 / CPU per image after start-up)", "{:.0f}"),
    ("peak_rss_mb", "peak RSS per worker (MiB)", "{:.0f}"),
    ("aws_requests_per_image", "AWS requests per image", "{:.3f}"),
    ("request_cost_per_million_images", "AWS request cost per million images ($)", "{:.2f}"),
    ("cpu_cost_per_million_images", "worker CPU cost per million images ($)", "{:.2f}"),
    ("total_cost_per_million_images", "total cost per million images ($): CPU + requests", "{:.2f}"),
    ("accuracy", "top-1 accuracy (digits, vs MNIST labels)", "{:.4f}"),
    ("top1_agreement", "same top-1 as the other fleet", "{:.4f}"),
]


# Issue 8's targets: (model, metric, ratio bound or None, absolute bound on scorefleet or None, text).
TARGETS = [
    ("digits", "images_per_s", (">=", 2.0), None, "digits: end-to-end images/s ≥ 2× the peer"),
    ("resnet18", "images_per_s", (">=", 1.0), None, "photos (ResNet-18): images/s ≥ 1× the peer"),
    ("digits", "ready_s", ("<=", 1 / 3), ("<=", 1.0), "digits: cold start to ready ≤ 1 s and ≤ 1/3 of the peer's"),
    ("resnet18", "ready_s", ("<=", 1 / 3), ("<=", 1.0), "photos: cold start to ready ≤ 1 s and ≤ 1/3 of the peer's"),
    ("digits", "cpu_ms_per_image", ("<=", 1.0), None, "digits: worker CPU-seconds per image ≤ the peer's"),
    ("digits", "total_cost_per_million_images", ("<=", 0.6), None,
     "digits: total cost per million images ≤ 0.6× the peer's (issue 17)"),
    ("resnet18", "total_cost_per_million_images", ("<=", 0.8), None,
     "photos: total cost per million images ≤ 0.8× the peer's (issue 17)"),
    ("resnet18", "cpu_ms_per_image", ("<=", 1.0), None, "photos: worker CPU per image ≤ the peer's (issue 17)"),
    ("digits", "top1_agreement", (">=", 0.999), None, "digits: top-1 agreement ≥ 0.999 (issue 17)"),
    ("resnet18", "top1_agreement", (">=", 0.999), None, "photos: top-1 agreement ≥ 0.999 (issue 17)"),
]


def _holds(value, bound):
    op, limit = bound
    return value is not None and (value >= limit if op == ">=" else value <= limit)


def targets(rows):
    """(text, met, measured) per target whose model was run."""
    out = []
    for model, key, ratio_bound, abs_bound, text in TARGETS:
        sf = next((r for r in rows if r["fleet"] == "scorefleet" and r["model"] == model), None)
        if not sf or "ratio_vs_peer" not in sf:
            continue
        if key == "top1_agreement":
            value = sf.get(key)
            out.append((text, _holds(value, ratio_bound), f"{value:.4f}" if value is not None else "–"))
            continue
        if model == "digits" and key == "total_cost_per_million_images" and sf.get("images_per_job", 1) > 1:
            # Issue 17: with jobs of 10 images, ≤ 0.25× the peer (one image per message); the
            # one-image bounds above do not apply to such a run.
            n = sf["images_per_job"]
            ratio_bound, text = ("<=", 0.25), f"{model}: total cost per million images with {n} images per job ≤ 0.25× the peer's (issue 17)"
        ratio = sf["ratio_vs_peer"].get(key)
        met = _holds(ratio, ratio_bound) and (abs_bound is None or _holds(sf[key], abs_bound))
        measured = f"ratio {ratio:.2f}" if ratio is not None else "ratio –"
        if abs_bound:
            measured += f", scorefleet {sf[key]:.2f}"
        out.append((text, met, measured))
    return out


def percentile(values, p):
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def request_cost(fleet, per_image, batch_items_per_image, finish_kb_mean, lookups_per_image=0.0, jobs_per_image=1.0):
    """$ per million images from per-image request counts. `batch_items_per_image`: BatchWriteItem
    items per image (BatchWriteItem is billed per item, not per request); `finish_kb_mean`: write units
    of the finished items (result included), per image; `lookups_per_image`: items read by BatchGetItem
    (billed per item, not per request); `jobs_per_image`: 1, or 1/N for jobs of N images."""
    sqs = sum(v for k, v in per_image.items() if k in SQS_APIS)
    writes = sum(v for k, v in per_image.items() if k in DDB_WRITES) + batch_items_per_image
    # A table write is one unit per started KB: 1 for all but the finish (one per job), whose item holds
    # the result.
    table = writes + (finish_kb_mean - jobs_per_image)
    index = INDEX_WRITES_PER_IMAGE[fleet] * jobs_per_image + per_image.get("DeleteItem", 0)
    rru = sum(v for k, v in per_image.items() if k in DDB_READS) + lookups_per_image * EVENTUAL_READ_UNITS_PER_ITEM
    s3 = sum(v for k, v in per_image.items() if k in S3_GETS)
    parts = {"sqs": sqs * SQS_PER_M, "dynamodb": (table + index) * DDB_WRU_PER_M + rru * DDB_RRU_PER_M,
             "s3": s3 * S3_GET_PER_M}
    return sum(parts.values()), parts, (table, index)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_cost(cpu_s_per_image, vcpu_hour_usd):
    """$ per million images of worker CPU at `vcpu_hour_usd` per vCPU-hour."""
    return cpu_s_per_image * 1e6 * vcpu_hour_usd / 3600


def summarise(rows, info):
    """One row per fleet and model (medians over rounds), scorefleet rows with ratio_vs_peer; checks."""
    vcpu_hour = info.get("vcpu_hour_price", VCPU_HOUR_USD)
    problems = []
    agreement = {}
    for r in rows:
        if r["error_by_key"] != r["expected_errors"]:
            problems.append(f"{r['fleet']} {r['model']} round {r['round']}: {r['succeeded']} of {r['jobs']} "
                            f"scored, errors {r['error_by_key']}, expected {r['expected_errors']}")
        if r["accuracy"] is not None and r["accuracy"] < 0.98:
            problems.append(f"{r['fleet']} {r['model']} round {r['round']}: accuracy {r['accuracy']:.4f}")
        r["cpu_ms_per_image"] = r["cpu_s_per_image"] * 1e3
        after = r["cpu_s_per_image_after_ready"]
        r["cpu_ms_per_image_after_ready"] = after * 1e3 if after is not None else None
        r["images_per_core_s"] = 1 / after if after else None
        per_image = {k: v / r["jobs"] for k, v in r["aws_requests"].items()}
        r["aws_requests_per_image_by_api"] = per_image
        cost, parts, wru = request_cost(r["fleet"], per_image, r["ddb_batch_items_written"] / r["jobs"],
                                        r["finish_item_kb_mean"], r.get("dedup_lookups", 0) / r["jobs"],
                                        r.get("messages", r["jobs"]) / r["jobs"])
        r["request_cost_per_million_images"] = cost
        r["cpu_cost_per_million_images"] = cpu_cost(r["cpu_s_per_image"], vcpu_hour)
        r["total_cost_per_million_images"] = cost + r["cpu_cost_per_million_images"]
        r["request_cost_parts"] = parts
        r["ddb_wru_table_per_image"], r["ddb_wru_index_per_image"] = wru
    for model in sorted({r["model"] for r in rows}):
        for rnd in sorted({r["round"] for r in rows}):
            pair = {r["fleet"]: r for r in rows if r["model"] == model and r["round"] == rnd}
            if len(pair) == 2:
                a, b = pair.values()
                common = set(a["top1"]) & set(b["top1"])
                same = sum(a["top1"][u] == b["top1"][u] for u in common) / len(common) if common else None
                agreement.setdefault(model, []).append(same)
                if same is not None and same < 0.999:
                    problems.append(f"{model} round {rnd}: the fleets agree on the top-1 label of only "
                                    f"{same:.4f} of the images")
    out = []
    for fleet in ("scorefleet", "peer"):
        for model in ("digits", "resnet18"):
            rs = [r for r in rows if r["fleet"] == fleet and r["model"] == model]
            if not rs:
                continue
            row = {"fleet": fleet, "model": model, "rounds": len(rs), "jobs": rs[0]["jobs"],
                   "workers": rs[0]["workers"], "images_per_job": rs[0].get("images_per_job", 1)}
            for key, *_ in METRICS:
                if key == "top1_agreement":
                    row[key] = _median(agreement.get(model, []))
                else:
                    row[key] = _median([r.get(key) for r in rs])
            row["cpu_s_per_image"] = row["cpu_ms_per_image"] / 1e3 if row["cpu_ms_per_image"] is not None else None
            apis = sorted({k for r in rs for k in r["aws_requests_per_image_by_api"]})
            row["aws_requests_per_image_by_api"] = {
                k: _median([r["aws_requests_per_image_by_api"].get(k, 0) for r in rs]) for k in apis}
            for k in ("ddb_wru_table_per_image", "ddb_wru_index_per_image"):
                row[k] = _median([r[k] for r in rs])
            row["request_cost_parts"] = {k: _median([r["request_cost_parts"][k] for r in rs])
                                         for k in ("sqs", "dynamodb", "s3")}
            row["images_per_s_rounds"] = [round(r["images_per_s"], 1) for r in rs]
            row["cpu_ms_per_image_rounds"] = [round(r["cpu_ms_per_image"], 3) for r in rs]
            row["errors"] = {k: sum(r["errors"].get(k, 0) for r in rs) for r in rs for k in r["errors"]}
            row["exit_s_after_sigterm"] = [e for r in rs for e in r["exit_s"]]
            row["prices_date"] = PRICES_DATE
            row["vcpu_hour_price"] = vcpu_hour
            row["vcpu_price_note"] = info.get("vcpu_price_note", VCPU_PRICE_NOTE)
            row["dedup"] = _mode([r.get("dedup") for r in rs])
            row["date"] = info["date"]
            out.append(row)
    for row in out:
        if row["fleet"] != "scorefleet":
            continue
        peer = next((p for p in out if p["fleet"] == "peer" and p["model"] == row["model"]), None)
        if peer:
            row["ratio_vs_peer"] = {k: (row[k] / peer[k] if row[k] is not None and peer[k] else None)
                                    for k, *_ in METRICS if k != "top1_agreement"}
    return {"rows": out, "problems": problems, "info": info, "targets": targets(out)}


def _mode(values):
    values = sorted({v for v in values if v})
    return ",".join(values) if values else None


def _fmt(fmt, v):
    return "–" if v is None else fmt.format(v)


def table_lines(summary, md):
    rows = summary["rows"]
    models = [m for m in ("digits", "resnet18") if any(r["model"] == m for r in rows)]
    get = {(r["fleet"], r["model"]): r for r in rows}
    head = ["metric"]
    for m in models:
        head += [f"{m} scorefleet", f"{m} peer", f"{m} ratio"]
    body = []
    for key, label, fmt in METRICS:
        line = [label]
        for m in models:
            sf, pe = get.get(("scorefleet", m)), get.get(("peer", m))
            line.append(_fmt(fmt, sf and sf[key]))
            line.append(_fmt(fmt, pe and pe[key]))
            ratio = sf.get("ratio_vs_peer", {}).get(key) if sf else None
            line.append(_fmt("{:.2f}", ratio) if key not in ("accuracy", "top1_agreement") else "")
        body.append(line)
    if md:
        return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                + ["| " + " | ".join(line) + " |" for line in body])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    return ["  ".join(str(x[i]).ljust(widths[i]) for i in range(len(head))) for x in [head] + body]


def api_lines(summary):
    rows = summary["rows"]
    apis = sorted({k for r in rows for k, v in r["aws_requests_per_image_by_api"].items() if v})
    head = ["API"] + [f"{r['model']} {r['fleet']}" for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for api in apis:
        lines.append("| " + " | ".join([api] + [f"{r['aws_requests_per_image_by_api'].get(api, 0):.3f}"
                                                 for r in rows]) + " |")
    lines.append("| DynamoDB write units, table + by_run index (est.) | "
                 + " | ".join(f"{r['ddb_wru_table_per_image']:.2f} + {r['ddb_wru_index_per_image']:.2f}"
                              for r in rows) + " |")
    for part in ("sqs", "dynamodb", "s3"):
        lines.append(f"| $ per million images: {part} | "
                     + " | ".join(f"{r['request_cost_parts'][part]:.2f}" for r in rows) + " |")
    return lines


def describe(info):
    return (f"{info['date']}, commit {info['commit']}, {info['cpu']} ({info['cores']} cores, "
            f"{info['memory_gib']} GiB), Linux {info['kernel']}, Python {info['python']}, emulator "
            f"{info['emulator']}; {info['workers']} workers per fleet on CPU(s) {info['worker_cpus']}, emulator "
            f"and driver on {info['emulator_cpus']}; {info['digits']} digits, {info['photos']} photos, "
            f"{info['rounds']} round(s), medians over rounds; whole run {info['runtime_s']:.0f} s")


def text_table(summary, info):
    lines = [f"fleet benchmark: scorefleet vs Python peer — {describe(info)}", ""]
    lines += table_lines(summary, md=False)
    lines += ["", "images/s per round: " + "; ".join(
        f"{r['fleet']} {r['model']} {r['images_per_s_rounds']}" for r in summary["rows"]), "", "targets:"]
    lines += [f"  {'met   ' if met else 'MISSED'}  {text} ({measured})" for text, met, measured in summary["targets"]]
    return "\n".join(lines)


def chart(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = summary["rows"]
    models = [m for m in ("digits", "resnet18") if any(r["model"] == m for r in rows)]
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6.4), squeeze=False)
    colours = {"scorefleet": "#d9622b", "peer": "#4a78a8"}
    for j, m in enumerate(models):
        for i, (key, title) in enumerate((("images_per_s", "images/s (higher is better)"),
                                          ("cpu_ms_per_image", "worker CPU ms per image (lower is better)"))):
            ax = axes[i][j]
            fleets = [f for f in ("scorefleet", "peer") if any(r["fleet"] == f and r["model"] == m for r in rows)]
            vals = [next(r[key] for r in rows if r["fleet"] == f and r["model"] == m) for f in fleets]
            bars = ax.bar(fleets, vals, color=[colours[f] for f in fleets])
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:.1f}" if key == "images_per_s" else f"{v:.2f}", (b.get_x() + b.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=9)
            ax.set_title(f"{m}: {title}", fontsize=9)
            ax.margins(y=0.15)
    info = summary["info"]
    fig.suptitle(f"scorefleet vs Python peer, {info['workers']} workers, {info['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(summary, info, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    chart(summary, os.path.join(out_dir, "fleet.png"))
    with open(os.path.join(out_dir, "fleet.json"), "w") as f:
        json.dump({"info": info, "rows": summary["rows"], "problems": summary["problems"]}, f, indent=1)
    lines = ["# Fleet benchmark: scorefleet vs a Python boto3 + onnxruntime fleet", "",
             "Written by `bench/fleet --docs` (see [bench/peer/README.md](../../bench/peer/README.md) for the "
             "peer and the protocol). " + describe(info) + ".", "",
             "![throughput and CPU per image](fleet.png)", ""]
    if info.get("note"):
        lines += [f"Note on this run: {info['note']}", ""]
    lines += table_lines(summary, md=True)
    lines += ["", "Ratios are scorefleet / peer. Images/s per round: " + "; ".join(
        f"{r['fleet']} {r['model']} {r['images_per_s_rounds']}" for r in summary["rows"]) + ".", "",
        "How to read it: the emulator is one Python process on its own core(s). Where it is busy near its "
        "core(s) and the workers are not, images/s measures the emulator, not the workers: compare worker CPU "
        "per image and the images/s one core would give. `latency receive → result` under the backlog is "
        "mostly the wait behind the messages a worker holds; the light-load probe (single jobs at a fixed "
        "low rate, enqueue time carried in `attrs`) is the end-to-end latency of one job. Cold start is from "
        "the spawn of the worker processes with a warm page cache (their files read just before).", "",
        "Targets of issues 8 and 17 in this run:", ""]
    lines += [f"- {'met' if met else '**missed**'}: {text} ({measured})" for text, met, measured in summary["targets"]]
    lines += ["",
        "## AWS requests per image, by API, and request cost", "",
        f"Prices: us-east-1, {PRICES_DATE}: SQS ${SQS_PER_M} per million requests (standard; "
        f"every payload here is far below the 64 KiB chunk), DynamoDB on-demand ${DDB_WRU_PER_M} per million "
        f"write units and ${DDB_RRU_PER_M} per million read units, S3 GET ${S3_GET_PER_M} per million. "
        "Write units are estimated: one per table write and started KB of item (the finished item's size is "
        "its result message, measured, plus 200 bytes; BatchWriteItem is billed per item), plus the writes "
        "to the `by_run` index: scorefleet's index is sparse, only a finish writes its key, so one per job "
        "in either dedup mode; the peer's claim and finish both write it, two per job. Read units: one per "
        "GetItem (consistent), half per item of scorefleet's finish-only BatchGetItem (eventually "
        "consistent; the worker counts the items).", "",
        f"Worker CPU is priced at ${summary['info'].get('vcpu_hour_price', VCPU_HOUR_USD)} per vCPU-hour "
        f"({summary['info'].get('vcpu_price_note', VCPU_PRICE_NOTE)}): CPU cost per million images = worker "
        "CPU-seconds per image × 10⁶ × price / 3600; the total adds the request cost. scorefleet's dedup "
        "mode in this run: " + "; ".join(f"{r['model']} {r.get('dedup') or '–'}" for r in summary["rows"]
                                         if r["fleet"] == "scorefleet") + ".",
        ""]
    lines += api_lines(summary)
    if info.get("runs_repeated"):
        lines += ["", "Runs repeated on a fresh prefix after a failure (the failed attempt's figures are not "
                  "used): " + "; ".join(info["runs_repeated"])]
    if summary["problems"]:
        lines += ["", "Checks that failed in this run: " + "; ".join(summary["problems"])]
    with open(os.path.join(out_dir, "fleet.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
