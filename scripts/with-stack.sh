#!/usr/bin/env bash
# Runs a command with the local AWS stack up and its environment exported,
# and always stops the stack afterwards (success, failure or Ctrl-C):
#
#   scripts/with-stack.sh cargo nextest run -p scorefleet-aws
#
# Each run gets its own stack directory, so several runs in one checkout
# (two engineers, or make test beside make demo) never share or stop each
# other's emulator.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARG...]" >&2
    exit 2
fi
own_dir=""
if [[ -z "${STACK_DIR:-}" ]]; then
    own_dir=1
    export STACK_DIR="$ROOT/.stack/run-$$"
fi
cleanup() {
    local rc=$?
    "$ROOT/scripts/stack.sh" stop
    # Keep the emulator's log when something failed; it often says why.
    if [[ -n "$own_dir" && $rc -eq 0 ]]; then
        rm -rf "$STACK_DIR"
    elif [[ $rc -ne 0 && -f "$STACK_DIR/emulator.log" ]]; then
        echo "with-stack: exit $rc; emulator log kept at $STACK_DIR/emulator.log" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$ROOT/scripts/stack.sh" start
# shellcheck source=/dev/null
source "$STACK_DIR/env"
"$@"
