#!/usr/bin/env bash
# The local AWS stack for tests and the demo: a pinned emulator (ministack by
# default, moto with SCOREFLEET_EMULATOR=moto) from the project venv, on a free
# port of 127.0.0.1.
#
#   scripts/stack.sh [start]   install the venv if needed, start the emulator,
#                              write $STACK_DIR/env (source it) and its PID
#   scripts/stack.sh stop      stop the emulator started from $STACK_DIR
#   scripts/stack.sh venv      only create/refresh the venv
#
# STACK_DIR defaults to .stack; scripts/with-stack.sh gives each run its own so
# parallel runs in one checkout do not stop each other's emulator.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCOREFLEET_VENV:-$ROOT/.venv}"
REQS="$ROOT/requirements.txt"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
EMULATOR="${SCOREFLEET_EMULATOR:-ministack}"
START_TIMEOUT_S="${SCOREFLEET_STACK_TIMEOUT_S:-90}"

log() { echo "stack: $*" >&2; }

# Installs requirements.txt into the venv unless the venv already holds exactly
# this file's contents (a stamp of its hash), so a re-run costs nothing and an
# edit by anyone (onnxruntime, numpy, ...) is picked up.
ensure_venv() {
    local want have=""
    # Two runs starting at once must not install into one venv together.
    if command -v flock >/dev/null; then
        mkdir -p "$ROOT/.stack"
        exec 9>"$ROOT/.stack/venv.lock"
        flock 9
    fi
    want="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$REQS")"
    [[ -f "$VENV/.requirements.sha256" ]] && have="$(cat "$VENV/.requirements.sha256")"
    if [[ -x "$VENV/bin/python" && "$have" == "$want" ]]; then
        return 0
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    log "installing $REQS into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS"
    echo "$want" >"$VENV/.requirements.sha256"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Any HTTP answer (even an error status) means the server is up.
answers() {
    python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
PY
}

start() {
    ensure_venv
    # Release the install lock: the emulator started below would inherit fd 9
    # and hold it for its whole life, stalling every other stack's start.
    exec 9>&-
    mkdir -p "$STACK_DIR"
    if [[ -f "$STACK_DIR/pid" ]] && kill -0 "$(cat "$STACK_DIR/pid")" 2>/dev/null; then
        log "already running (pid $(cat "$STACK_DIR/pid")); source $STACK_DIR/env"
        return 0
    fi
    local port pid deadline
    port="$(free_port)"
    local logf="$STACK_DIR/emulator.log"
    # setsid: the emulator leads its own process group, so `stop` can end it
    # and any helper it forked by its PID alone.
    case "$EMULATOR" in
        ministack)
            # IoT mTLS and SFTP listen on fixed ports (8883, 2222): off, so two
            # stacks can run side by side.
            BIND_HOST=127.0.0.1 GATEWAY_PORT="$port" IOT_MTLS_ENABLED=0 SFTP_ENABLED=0 \
                setsid "$VENV/bin/ministack" >"$logf" 2>&1 </dev/null &
            ;;
        moto)
            setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logf" 2>&1 </dev/null &
            ;;
        *)
            log "unknown SCOREFLEET_EMULATOR=$EMULATOR (ministack or moto)"
            exit 2
            ;;
    esac
    pid=$!
    echo "$pid" >"$STACK_DIR/pid"
    deadline=$((SECONDS + START_TIMEOUT_S))
    until answers "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$EMULATOR exited during start-up; its log:"
            tail -n 40 "$logf" >&2 || true
            rm -f "$STACK_DIR/pid"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "$EMULATOR did not answer on port $port within ${START_TIMEOUT_S}s; its log:"
            tail -n 40 "$logf" >&2 || true
            stop
            exit 1
        fi
        sleep 0.2
    done
    cat >"$STACK_DIR/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export SCOREFLEET_S3_PATH_STYLE=1
export SCOREFLEET_EMULATOR=$EMULATOR
ENV
    log "$EMULATOR (pid $pid) answers on http://127.0.0.1:$port; source $STACK_DIR/env"
}

stop() {
    [[ -f "$STACK_DIR/pid" ]] || return 0
    local pid deadline
    pid="$(cat "$STACK_DIR/pid")"
    if kill -0 "$pid" 2>/dev/null; then
        # The whole group (-pid): the emulator was started as its leader.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$STACK_DIR/pid" "$STACK_DIR/env"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    venv) ensure_venv ;;
    *)
        echo "usage: $0 [start|stop|venv]" >&2
        exit 2
        ;;
esac
