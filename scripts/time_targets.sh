#!/usr/bin/env bash
# Time the two figures README and docs quote, each from a fresh clone of this repository's HEAD
# (commit first), with the machine's load beside them:
#   scripts/time_targets.sh headline   snakemake --cores 2 results/cyclegan_ct_mri/metrics.json
#                                      (the existing .venv is linked in: the target, not the install)
#   scripts/time_targets.sh ci         bash .ci/run (creates its own .venv, as CI does)
# Prints wall time, CPU seconds (user + sys of everything it started), peak memory, Snakemake's
# job count or pytest's summary, and `uptime` before and after. Clones go under $TIME_TARGETS_DIR
# (default: a new folder in /tmp), kept for inspection.
set -euo pipefail
what="${1:?usage: scripts/time_targets.sh headline|ci}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${TIME_TARGETS_DIR:-$(mktemp -d /tmp/time-targets.XXXXXX)}"
clone="$root/$what"
rm -rf "$clone"
git clone -q "$repo" "$clone"
cd "$clone"
export DVC_NO_ANALYTICS=1 MPLBACKEND=Agg
echo "clone: $clone ($(git rev-parse --short HEAD)); nproc $(nproc)"
echo "before: $(uptime)"
case "$what" in
headline)
    ln -s "$repo/.venv" .venv
    export PATH="$PWD/.venv/bin:$PATH"  # the rules call `python`, as under `make quickstart`
    command=(.venv/bin/snakemake --cores 2 results/cyclegan_ct_mri/metrics.json)
    ;;
ci)
    command=(bash .ci/run)
    ;;
*)
    echo "unknown target $what: headline or ci" >&2
    exit 2
    ;;
esac
status=0
/usr/bin/time -v -o "$root/$what.time" "${command[@]}" >"$root/$what.log" 2>&1 || status=$?
echo "after:  $(uptime)"
echo "exit status: $status (log: $root/$what.log)"
grep -E "Elapsed \(wall clock\)|User time|System time|Maximum resident" "$root/$what.time"
awk -F': ' '/User time|System time/ {cpu += $2} END {printf "CPU seconds (user + sys): %.0f\n", cpu}' "$root/$what.time"
if [ "$what" = headline ]; then
    grep -E "steps \([0-9]+%\) done" "$root/$what.log" | tail -1
    .venv/bin/python - <<'EOF'
import json
metrics = json.load(open("results/cyclegan_ct_mri/metrics.json"))
print("metrics keys:", sorted(metrics))
for direction in ("ct_to_mri", "mri_to_ct"):
    print(direction, "ssim ci95:", metrics[direction]["ssim"].get("ci95"))
EOF
else
    grep -E "passed|failed" "$root/$what.log" | tail -2
    grep -E "CI finished" "$root/$what.log" || true
fi
exit "$status"
