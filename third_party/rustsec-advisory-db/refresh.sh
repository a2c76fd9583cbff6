#!/usr/bin/env bash
# Re-makes crates.tar.xz and SNAPSHOT from a clone of the RustSec advisory
# database, on any machine that can reach GitHub:
#
#   git clone https://github.com/rustsec/advisory-db /tmp/advisory-db
#   third_party/rustsec-advisory-db/refresh.sh /tmp/advisory-db
#
# Only the advisories (crates/) and the licence files are kept: that is all
# cargo-deny reads, and it keeps the file near 300 KB. `git archive` stamps
# every file with the commit's time, so the same commit gives the same bytes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${1:?usage: refresh.sh <advisory-db git directory> [commit]}"
rev="${2:-HEAD}"

commit="$(git -C "$repo" rev-parse --verify "$rev^{commit}")"
date="$(git -C "$repo" log -1 --format=%cI "$commit")"
date_unix="$(git -C "$repo" log -1 --format=%ct "$commit")"
git -C "$repo" archive --format=tar "$commit" crates/ LICENSE.txt LICENSES/ |
    xz -9 >"$here/crates.tar.xz.new"
mv "$here/crates.tar.xz.new" "$here/crates.tar.xz"

cat >"$here/SNAPSHOT" <<SNAP
# The RustSec advisory database in crates.tar.xz. scripts/deny.sh reads the
# commit, date and date_unix lines; written by refresh.sh (see README.md).
source = https://github.com/rustsec/advisory-db
commit = $commit
date = $date
date_unix = $date_unix
made = git archive --format=tar $commit crates/ LICENSE.txt LICENSES/ | xz -9
refresh = git clone https://github.com/rustsec/advisory-db /tmp/advisory-db && third_party/rustsec-advisory-db/refresh.sh /tmp/advisory-db
licence = CC0-1.0; advisories imported from GitHub's advisory database are CC-BY-4.0 (their own license field says so; LICENSE.txt in the archive)
SNAP
echo "refresh.sh: snapshot ${commit:0:7} of ${date%%T*}, $(wc -c <"$here/crates.tar.xz") bytes"
