#!/usr/bin/env bash
# Fuzzes each cargo-fuzz target in fuzz/ for a bounded time (libFuzzer).
#
#   scripts/fuzz.sh                         every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh        longer
#   scripts/fuzz.sh job_message manifest    some targets
#
# Needs the nightly toolchain (`rustup toolchain list`); installs cargo-fuzz
# when missing. Starts from the committed seeds (fuzz/seeds/<target>) plus
# whatever earlier runs found (fuzz/corpus/<target>, not committed). Prints
# runs and executions per second for each target; exits non-zero if any
# target crashed, leaked, timed out or ran out of memory, naming the input
# that did it and the command that replays it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_EACH="${FUZZ_SECONDS:-60}"
ALL_TARGETS=(job_message manifest image_decode)
if (($#)); then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
# The fuzz build has its own flags: keep it out of the shared target dir.
TARGET_DIR="$PWD/fuzz/target"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Per-target libFuzzer options. -max_len lets job_message inputs pass the
# 64 KiB body limit; image_decode's -malloc_limit_mb is explained in its
# source (any single allocation over it is a decompression bomb that got
# past the limits).
options() {
    case "$1" in
        job_message) echo "-max_len=70000 -dict=fuzz/dict/json.dict" ;;
        manifest) echo "-max_len=16384 -dict=fuzz/dict/json.dict" ;;
        image_decode) echo "-max_len=65536 -malloc_limit_mb=512" ;;
        *) echo "fuzz.sh: unknown target $1 (known: ${ALL_TARGETS[*]})" >&2; return 1 ;;
    esac
}

echo "== building fuzz targets (nightly, address sanitizer)"
cargo +nightly fuzz build --target-dir "$TARGET_DIR"

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    opts="$(options "$t")"
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/last-run.log"
    echo "== $t: ${SECONDS_EACH}s ($opts)"
    before="$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | sort)"
    # New finds go to the first corpus dir; the seeds stay as committed.
    # shellcheck disable=SC2086 # $opts is a list of options
    if cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 $opts >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    corpus="$(find "fuzz/corpus/$t" -type f | wc -l)"
    summary+=("$(printf '%-13s %-6s runs=%-10s exec/s=%-8s corpus=%s' "$t" "$status" "${runs:-?}" "${speed:-?}" "$corpus")")
    if [[ $status != ok ]]; then
        grep -E 'ERROR: |panicked at|SUMMARY: ' "$log" | head -5 >&2 || true
        new="$(comm -13 <(echo "$before") <(find "fuzz/artifacts/$t" -type f ! -name '*.log' | sort))"
        for f in $new; do
            echo "fuzz.sh: $t: failing input $f; replay with: cargo +nightly fuzz run $t $f" >&2
        done
        echo "fuzz.sh: $t: full log in $log" >&2
    fi
done

echo "== summary (${SECONDS_EACH}s per target)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "fuzz.sh: failed: ${failed[*]}" >&2
    exit 1
fi
