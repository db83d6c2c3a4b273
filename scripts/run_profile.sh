#!/usr/bin/env bash
# Build each experiment's verdict from EMPTY data on one profile and time it, one experiment at a
# time, so each wall time is that experiment's whole chain (download -> ... -> verdict) alone:
#
#   scripts/run_profile.sh PROFILE [EXPERIMENT ...]     # PROFILE: default | proof | full (configs/<profile>.yaml)
#   make proof                                           # = scripts/run_profile.sh proof (all six)
#
# Before each experiment data/, models/<experiment>/ and results/<experiment>/ are removed (other
# experiments' results stay); MLflow runs accumulate in mlflow.db. Writes
# results/timings_<profile>.json ({experiment: {wall_seconds, load_before, cores, ...}}) and
# results/verdicts_<profile>.md (one table over the experiments' verdicts). Time on an idle
# machine: the load average before each run is recorded beside its time.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: scripts/run_profile.sh default|proof|full [EXPERIMENT ...]}
shift
cores=${CORES:-2}
snakemake=${SNAKEMAKE:-snakemake}
python=${PYTHON:-python}
configfile=()
if [ "$profile" != default ]; then
    [ -f "configs/$profile.yaml" ] || { echo "no configs/$profile.yaml" >&2; exit 2; }
    configfile=(--configfile "configs/$profile.yaml")
fi
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
    mapfile -t experiments < <("$python" -c 'import yaml; print("\n".join(yaml.safe_load(open("params.yaml"))["experiments"]))')
fi
timings="results/timings_$profile.json"
mkdir -p results logs
[ -f "$timings" ] || echo '{}' >"$timings"
for experiment in "${experiments[@]}"; do
    rm -rf data "models/$experiment" "results/$experiment"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    start=$(date +%s.%N)
    "$snakemake" --cores "$cores" "${configfile[@]}" "results/$experiment/verdict.json" \
        >"logs/run_profile_${profile}_$experiment.log" 2>&1 || {
        echo "$experiment: snakemake failed, see logs/run_profile_${profile}_$experiment.log" >&2; exit 1; }
    end=$(date +%s.%N)
    "$python" - "$timings" "$experiment" "$start" "$end" "$load_before" "$cores" <<'PY'
import json, os, platform, subprocess, sys
path, experiment, start, end, load_before, cores = sys.argv[1:]
timings = json.load(open(path))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
timings[experiment] = {
    "wall_seconds": round(float(end) - float(start), 1), "load_before": load_before,
    "load_after": " ".join(open("/proc/loadavg").read().split()[:3]), "cores": int(cores),
    "cpu": f"{platform.machine()} CPU, {os.cpu_count()} logical cores", "git_commit": commit,
}
json.dump(timings, open(path, "w"), indent=2)
print(f"{experiment}: {timings[experiment]['wall_seconds']} s (load before {load_before})")
PY
done
verdicts=()
for experiment in "${experiments[@]}"; do verdicts+=("results/$experiment/verdict.json"); done
"$python" -m pipeline.verdict table "${verdicts[@]}" --timings "$timings" >"results/verdicts_$profile.md"
cat "results/verdicts_$profile.md"
