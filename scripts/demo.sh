#!/usr/bin/env bash
# The demo, run inside a local AWS stack (scripts/with-stack.sh starts and
# stops it; `make demo` calls this): provision queues, table and bucket,
# upload a sample archive (MNIST test digits as PNG plus broken files),
# enqueue it, run two workers, wait for the run to finish, collect the
# results, write the HTML report and print a summary. The last line printed is
# one JSON object.
#
# Environment: DEMO_COUNT (digits, default 2000), DEMO_WORKERS (default 2),
# DEMO_TIMEOUT_S (default 600), DEMO_OUT (default out/demo), DEMO_PROFILE
# (cargo profile directory of the binaries, default debug: the build
# `make test` shares), DEMO_CHECK (assert on the summary and the report).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${AWS_ENDPOINT_URL:?run through scripts/with-stack.sh (make demo does)}"
COUNT="${DEMO_COUNT:-2000}"
WORKERS="${DEMO_WORKERS:-2}"
TIMEOUT_S="${DEMO_TIMEOUT_S:-600}"
OUT="${DEMO_OUT:-out/demo}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/${DEMO_PROFILE:-debug}"
PREFIX="demo-$(date -u +%Y%m%d%H%M%S)-$$"
RUN_ID="demo-$(date -u +%Y-%m-%dT%H-%M-%S)"

log() { printf 'demo: %s\n' "$*" >&2; }

rm -rf "$OUT"
mkdir -p "$OUT"

log "provisioning queues (with DLQ), table (TTL) and bucket: $PREFIX"
"$BIN/scorefleet-producer" init --prefix "$PREFIX" --env >"$OUT/stack.env"
# shellcheck source=/dev/null
source "$OUT/stack.env"

log "uploading the sample archive ($COUNT digits + broken files)"
"$ROOT/.venv/bin/python" scripts/demo_archive.py --bucket "$SCOREFLEET_BUCKET" --prefix archive \
    --count "$COUNT" --manifest "$OUT/manifest.csv"

worker_pids=()
stop_workers() {
    local pid
    for pid in "${worker_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    worker_pids=()
}
trap stop_workers EXIT

started=$(date +%s.%N)
log "starting $WORKERS workers"
for i in $(seq 1 "$WORKERS"); do
    SCOREFLEET_WORKER_ID="demo-worker-$i" SCOREFLEET_HTTP_ADDR="127.0.0.1:0" \
        "$BIN/scorefleet-worker" --model digits --model-cache "$OUT/model-cache" \
        >"$OUT/worker-$i.log" 2>&1 &
    worker_pids+=("$!")
done

log "enqueueing run $RUN_ID"
"$BIN/scorefleet-producer" enqueue --manifest "$OUT/manifest.csv" --run-id "$RUN_ID" --table "$SCOREFLEET_TABLE" \
    --json >"$OUT/enqueue.json"
total=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["enqueued"])' "$OUT/enqueue.json")
log "enqueued $total jobs; collecting results as they arrive"

# Collect until every job has a result (or the time limit passes).
deadline=$(( $(date +%s) + TIMEOUT_S ))
collected=0
while (( collected < total )); do
    if (( $(date +%s) > deadline )); then
        log "timed out with $collected of $total results"
        break
    fi
    "$BIN/scorefleet-producer" collect --out "$OUT/results.jsonl" --wait-seconds 2 --idle-polls 1 --json >/dev/null
    collected=$(wc -l <"$OUT/results.jsonl")
    log "results: $collected / $total"
done
finished=$(date +%s.%N)
stop_workers

"$BIN/scorefleet-producer" report --in "$OUT/results.jsonl" --out "$OUT/report.html" \
    --title "scorefleet demo: $RUN_ID" --json >"$OUT/report.json"
"$BIN/scorefleet-producer" status --table "$SCOREFLEET_TABLE" --run-id "$RUN_ID" --json >"$OUT/status.json"

DEMO_COUNT_USED="$COUNT" python3 - "$OUT" "$started" "$finished" "$total" <<'PY'
import json, os, sys
out, started, finished, total = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
r = json.load(open(f"{out}/report.json"))
st = json.load(open(f"{out}/status.json"))
wall = finished - started
summary = {
    "jobs": total,
    "results": r["jobs"],
    "succeeded": r["succeeded"],
    "failed": r["failed"],
    "errors_by_kind": r["errors_by_kind"],
    "accuracy": r["accuracy"],
    "images_per_s": round(r["jobs"] / wall, 1) if wall > 0 else None,
    "wall_s": round(wall, 1),
    "stored_outcomes": st.get("completed", 0) + st.get("failed", 0),
    "report": r["report"],
    "thumbnails": r.get("thumbnails", 0),
}
print(f"jobs {total}: {r['succeeded']} succeeded, {r['failed']} failed {r['errors_by_kind']}", file=sys.stderr)
acc = r["accuracy"]
print(f"accuracy {acc * 100:.2f}% on {r['succeeded']} labelled digits" if acc is not None else "accuracy: n/a", file=sys.stderr)
print(f"{summary['images_per_s']} images/s end to end ({wall:.1f} s); report: {r['report']}", file=sys.stderr)
print(json.dumps(summary))
if os.environ.get("DEMO_CHECK"):
    # CI: every job has exactly one stored outcome and a result, the broken
    # files fail with their typed errors, and the digits score as offline.
    digits = int(os.environ["DEMO_COUNT_USED"])
    problems = []
    if r["jobs"] != total or summary["stored_outcomes"] != total:
        problems.append(f"{total} jobs but {r['jobs']} results and {summary['stored_outcomes']} stored outcomes")
    if r["succeeded"] != digits:
        problems.append(f"{r['succeeded']} of {digits} digits scored")
    want = {"decode": 2, "too_large": 2, "fetch_not_found": 1}
    if r["errors_by_kind"] != want:
        problems.append(f"errors {r['errors_by_kind']}, expected {want}")
    if acc is None or acc < 0.98:
        problems.append(f"accuracy {acc}")
    # The report shows the images: least confident, every misclassified cell,
    # and the oversized PNG (refused by the worker's byte cap, but an image).
    page = open(r["report"]).read()
    def section(marker):
        start = page.find(marker)
        if start < 0:
            return ""
        ends = [e for e in (page.find("</table>", start), page.find("</section>", start)) if e >= 0]
        return page[start:min(ends) if ends else len(page)]
    thumb = '<img class=thumb src="data:image/png;base64,'
    if section("id=least-confident").count(thumb) < 10:
        problems.append("fewer than 10 least-confident thumbnails in the report")
    mistakes = r["labelled"] - r["correct"] if r["labelled"] else 0
    if mistakes and section("id=thumbs-misclassified").count(thumb) < 1:
        problems.append(f"{mistakes} misclassified digits but no misclassified thumbnails")
    failed = section("id=thumbs-failed")
    if "oversized.png" not in failed or failed.count(thumb) != 1:
        problems.append("the failed-but-decodable oversized.png has no thumbnail (or others do)")
    if problems:
        print("demo check failed: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)
    print("demo check passed", file=sys.stderr)
PY
