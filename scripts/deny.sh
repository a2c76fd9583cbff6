#!/usr/bin/env bash
# The dependency audit (deny.toml; docs/security.md, "Dependency audit"), a
# step of .ci/run.
#
# bans, licenses and sources need no network. advisories need the RustSec
# advisory database, a git repository cargo-deny clones from GitHub, which the
# machines this project is built on cannot reach (they reach package
# registries only). So advisories are checked against, in this order:
#  1. the database fetched now, or fetched earlier and under 90 days old
#     (DENY_MAX_DB_AGE_DAYS), in $CARGO_HOME/advisory-dbs;
#  2. the snapshot committed in third_party/rustsec-advisory-db, unpacked into
#     a temporary directory and allowed its age. Past a year
#     (DENY_MAX_SNAPSHOT_AGE_DAYS) the audit fails until it is refreshed.
# Either way the database used, its commit and its age are printed; advisories
# are never skipped.
#
# cargo-deny: the one on PATH when it is at least the pinned minor version
# (deny.toml is in its format), else the one under the tool cache, installed
# there when missing. The cache defaults to $CARGO_TARGET_DIR/tools because CI
# keeps its target directory between runs (and maybe not ~/.cargo/bin);
# SCOREFLEET_TOOL_CACHE overrides it. The install's build directory is kept
# there too, so a reinstall (a new pin) rebuilds only what changed.
#
# DENY_MANIFEST_PATH audits another Cargo.toml against this deny.toml: how a
# throwaway crate with a known advisory was shown to fail the check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DENY_VERSION=0.20.2
MAX_DB_AGE_DAYS="${DENY_MAX_DB_AGE_DAYS:-90}"
MAX_SNAPSHOT_AGE_DAYS="${DENY_MAX_SNAPSHOT_AGE_DAYS:-365}"
SNAPSHOT_DIR=third_party/rustsec-advisory-db
# The directory cargo-deny derives, under its db-path, from the default
# database URL (https://github.com/rustsec/advisory-db).
DB_DIR_NAME=advisory-db-3157b0e258782691
TOOL_CACHE="${SCOREFLEET_TOOL_CACHE:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/tools}}"
TOOL_CACHE="${TOOL_CACHE:-$HOME/.cache/scorefleet-tools}"

die() {
    echo "deny.sh: FAILED: $*" >&2
    exit 1
}

# Whether $1 is a cargo-deny at least as new as DENY_VERSION's major.minor.
deny_is_usable() {
    local out major minor
    [[ $DENY_VERSION =~ ^([0-9]+)\.([0-9]+)\. ]] || return 1
    major=$((10#${BASH_REMATCH[1]})) minor=$((10#${BASH_REMATCH[2]}))
    out="$("$1" --version 2>/dev/null)" || return 1
    [[ $out =~ ^cargo-deny\ ([0-9]+)\.([0-9]+)\. ]] || return 1
    ((10#${BASH_REMATCH[1]} > major ||
        (10#${BASH_REMATCH[1]} == major && 10#${BASH_REMATCH[2]} >= minor)))
}

deny="$(command -v cargo-deny || true)"
if [[ -z $deny ]] || ! deny_is_usable "$deny"; then
    deny="$TOOL_CACHE/cargo-deny/bin/cargo-deny"
    if ! deny_is_usable "$deny"; then
        echo "deny.sh: installing cargo-deny $DENY_VERSION under $TOOL_CACHE/cargo-deny (minutes, once per cache)"
        # The crate's own release profile (fat LTO, one codegen unit) is most
        # of a cold build's 5-8 minutes on two cores; a CI tool does not need it.
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
            cargo install cargo-deny --locked --version "$DENY_VERSION" \
            --root "$TOOL_CACHE/cargo-deny" --target-dir "$TOOL_CACHE/cargo-deny/target"
        deny_is_usable "$deny" || die "cargo install did not leave a usable $deny"
    fi
fi
echo "deny.sh: $("$deny" --version) ($deny)"

# Run from a git hook, these would point the database's git commands (ours
# and cargo-deny's) at this repository.
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Writes deny.toml to $1 with [advisories] given a database path ($2; empty:
# cargo-deny's default) and the age in days the database may have ($3).
write_config() {
    awk -v db_path="$2" -v staleness="P${3}D" '
        { print }
        /^\[advisories\]/ {
            if (db_path != "") print "db-path = \"" db_path "\""
            print "maximum-db-staleness = \"" staleness "\""
            n++
        }
        END { exit n != 1 }' deny.toml >"$1"
}

# cargo-deny with the config $1, offline: the database is already in place.
run_deny() {
    local config=$1
    shift
    "$deny" --offline --locked ${DENY_MANIFEST_PATH:+--manifest-path "$DENY_MANIFEST_PATH"} \
        --config "$config" check --hide-inclusion-graph "$@"
}

# The value of the line "$1 = ..." in the snapshot's SNAPSHOT file.
field() { sed -n "s/^$1 = //p" "$SNAPSHOT_DIR/SNAPSHOT"; }

days_since() { echo $((($(date +%s) - $1) / 86400)); }

# The newest database cargo-deny has cached: "<commit time> <commit>".
cached_db() {
    local best="" d line
    for d in "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/; do
        [[ -e $d/.git ]] || continue
        line="$(git -C "$d" log -1 --format='%ct %H' 2>/dev/null)" || continue
        if [[ -z $best ]] || ((${line%% *} > ${best%% *})); then best=$line; fi
    done
    [[ -n $best ]] && echo "$best"
}

# A fetch refreshes the cached clone when the network allows; with no network
# it fails, or succeeds on an existing clone without updating it. Either way
# the clone's newest commit says how current the database really is. The
# timeout is for networks that drop packets rather than refuse them.
if command -v timeout >/dev/null; then
    fetch=(timeout 120 "$deny" fetch db)
else
    fetch=("$deny" fetch db)
fi
fetch_log="$("${fetch[@]}" 2>&1)" || true
cached="$(cached_db || true)"
cached_age=""
[[ -n $cached ]] && cached_age="$(days_since "${cached%% *}")"

if [[ -n $cached_age ]] && ((cached_age <= MAX_DB_AGE_DAYS)); then
    commit="${cached#* }"
    used="the fetched RustSec database ${commit:0:7} (${cached_age} days old)"
    write_config "$work/deny.toml" "" $((MAX_DB_AGE_DAYS + 1))
    echo "deny.sh: advisories checked against ${used}"
else
    # Why the fetch failed: git's first "fatal:" line, else the last line.
    why="$(grep -m1 '^fatal:' <<<"$fetch_log" || true)"
    why="${why:-${fetch_log##*$'\n'}}"
    [[ -n $cached_age ]] && why="the cached copy is ${cached_age} days old${why:+; $why}"
    [[ -f $SNAPSHOT_DIR/SNAPSHOT && -f $SNAPSHOT_DIR/crates.tar.xz ]] ||
        die "no RustSec advisory database could be fetched (${why:-no cached copy}) and $SNAPSHOT_DIR has no snapshot"
    commit="$(field commit)" date="$(field date)" date_unix="$(field date_unix)"
    [[ $commit =~ ^[0-9a-f]{40}$ && $date_unix =~ ^[0-9]+$ ]] ||
        die "$SNAPSHOT_DIR/SNAPSHOT lacks its commit or date_unix line"
    age="$(days_since "$date_unix")"
    used="the vendored RustSec snapshot ${commit:0:7} of ${date%%T*} (${age} days old)"
    if ((age > MAX_SNAPSHOT_AGE_DAYS)); then
        echo "deny.sh: checking bans, licenses and sources before failing:"
        run_deny deny.toml bans licenses sources || true
        die "advisories not checked: no RustSec advisory database could be fetched" \
            "(${why:-no cached copy}) and ${used} is over DENY_MAX_SNAPSHOT_AGE_DAYS=${MAX_SNAPSHOT_AGE_DAYS}." \
            "Refresh it: see $SNAPSHOT_DIR/README.md"
    fi

    db="$work/advisory-dbs/$DB_DIR_NAME"
    mkdir -p "$db"
    tar -xJf "$SNAPSHOT_DIR/crates.tar.xz" -C "$db"
    # cargo-deny dates a database without FETCH_HEAD by its HEAD commit, so the
    # commit carries the snapshot's own date.
    git -C "$db" -c init.defaultBranch=main init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" git -C "$db" \
        -c user.name=deny.sh -c user.email=deny.sh@localhost -c commit.gpgsign=false \
        commit -q --no-verify -m "rustsec/advisory-db $commit"
    write_config "$work/deny.toml" "$work/advisory-dbs" $((age + 1))
    echo "deny.sh: advisories checked against ${used}; no fresher database could be fetched (${why:-no cached copy})"
fi

# cargo-deny reads the crate graph of every target platform offline, so
# every crate of Cargo.lock must be in cargo's cache, not only those a build
# on this platform downloaded.
cargo fetch --locked --quiet ${DENY_MANIFEST_PATH:+--manifest-path "$DENY_MANIFEST_PATH"}
run_deny "$work/deny.toml"
echo "deny.sh: passed: advisories against ${used}, bans, licenses, sources"
