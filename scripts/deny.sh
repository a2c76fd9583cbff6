#!/usr/bin/env bash
# The dependency audit (deny.toml; docs/security.md, "Dependency audit").
#
# bans, licenses and sources need no network and always run. advisories need
# the RustSec advisory database, a git repository cargo-deny clones on demand:
# when it can be fetched, every check runs against it; when it cannot (a
# machine that reaches only package registries), advisories are skipped with
# a message that says so, and the other three still decide the exit status.
# A database fetched earlier is used while it is under 90 days old
# (DENY_MAX_DB_AGE_DAYS).
#
# Installs cargo-deny when missing (CI keeps ~/.cargo/bin between runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo-deny >/dev/null || cargo install cargo-deny --locked

MAX_DB_AGE_DAYS="${DENY_MAX_DB_AGE_DAYS:-90}"

# The newest cached database's age in days, or nothing when there is none.
cached_db_age_days() {
    local newest=0 d t
    for d in "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/; do
        [[ -d $d/.git ]] || continue
        t="$(git -C "$d" log -1 --format=%ct 2>/dev/null)" || continue
        ((t > newest)) && newest=$t
    done
    ((newest > 0)) && echo $((($(date +%s) - newest) / 86400))
}

# A fetch refreshes the cached clone when the network allows; with no network
# it fails, or succeeds on an existing clone without updating it. Either way
# the clone's newest commit says how current the database really is.
fetch_log="$(cargo deny fetch db 2>&1)" || true
age="$(cached_db_age_days || true)"
if [[ -n $age ]] && ((age <= MAX_DB_AGE_DAYS)); then
    echo "deny.sh: advisory database ${age} days old; running every check"
    cargo deny --offline --locked check --hide-inclusion-graph
else
    why="${fetch_log##*$'\n'}"
    [[ -n $age ]] && why="the cached copy is ${age} days old${why:+; $why}"
    echo "deny.sh: advisories SKIPPED: no RustSec advisory database under ${MAX_DB_AGE_DAYS} days old" \
        "could be fetched (${why:-no cached copy})"
    cargo deny --locked check --hide-inclusion-graph bans licenses sources
fi
