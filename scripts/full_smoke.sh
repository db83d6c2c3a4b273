#!/usr/bin/env bash
# Each experiment's full profile end to end through Snakemake to results/<experiment>/metrics.json,
# with its step / epoch / kimg counts cut to a couple of steps and everything else at full size:
# configs/full.yaml, then configs/full_smoke.yaml (what is cut and why is written there). On a
# machine without CUDA a third overlay puts every device knob on the CPU (python -m
# pipeline.device_check overlay cpu). Each experiment's Snakemake run is timed with /usr/bin/time -v
# (wall, CPU, peak RSS of its largest process) beside the load average; every job's own wall / CPU
# time and peak memory are in WORK_DIR/repo/benchmarks/. The summary lands in WORK_DIR/results.md
# and results.json (python -m pipeline.device_check smoke-summary WORK_DIR).
#
#   make full-smoke                                    # all six into full-smoke/
#   scripts/full_smoke.sh WORK_DIR [EXPERIMENT...]     # PYTHON, CORES, DEVICE (cpu|cuda), NICE
#
# WORK_DIR/repo is a copy of the code (refreshed on every call) holding data/, models/, results/:
# a rerun continues where the last one stopped, as Snakemake does. Not a CI job: on 2 CPU cores the
# head CT / MRI registration at 1 mm and StyleGAN2 at 128 px take hours (docs/engine.md).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
work=${1:-full-smoke}
shift || true
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
    read -r -a experiments <<<"$("$py" -c 'import yaml; print(" ".join(yaml.safe_load(open("params.yaml"))["experiments"]))')"
fi
device=${DEVICE:-$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
cores=${CORES:-$(nproc)}
nice_level=${NICE:-$([ "$device" = cpu ] && echo 10 || echo 0)}
mkdir -p "$work/repo" "$work/runs"
work=$(cd "$work" && pwd)
# One smoke run per folder at a time: the unlock below would otherwise free another run's lock.
exec 9>"$work/.running"
flock -n 9 || { echo "full smoke: another run holds $work (.running)" >&2; exit 2; }
bin=$(dirname "$(command -v "$py")")
export PATH="$bin:$PATH" PYTHONUNBUFFERED=1 MEDGAN_PROGRESS=off DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true

git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/repo/"
configs=(configs/full.yaml configs/full_smoke.yaml)
if [ "$device" != cuda ]; then
    "$py" -m pipeline.device_check overlay "$device" --configfile "${configs[@]}" >"$work/repo/configs/full_smoke_device.yaml" || exit 2
    configs+=(configs/full_smoke_device.yaml)
fi

status=0
for experiment in "${experiments[@]}"; do
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    started=$(date -Is)
    echo "full smoke: $experiment on $device ($cores cores, load $load_before)"
    # a killed run (kill -9, the OOM killer, a lost session) leaves Snakemake's lock behind; the
    # flock above says none is running here, so it is stale; --rerun-incomplete redoes its jobs
    (cd "$work/repo" && "$bin/snakemake" --unlock --configfiles "${configs[@]}" -- "results/$experiment/metrics.json") \
        >/dev/null 2>&1
    (cd "$work/repo" && nice -n "$nice_level" /usr/bin/time -v -o "$work/runs/$experiment.time" \
        "$bin/snakemake" --cores "$cores" --rerun-incomplete --configfiles "${configs[@]}" -- "results/$experiment/metrics.json") \
        >"$work/runs/$experiment.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || { status=1; echo "  failed (exit $rc): $work/runs/$experiment.log"; }
    "$py" - "$work/runs/$experiment.json" "$experiment" "$device" "$cores" "$started" "$load_before" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" "$rc" "${configs[@]}" <<'EOF'
import json, sys
path, experiment, device, cores, started, before, after, rc, *configs = sys.argv[1:]
json.dump({"experiment": experiment, "device": device, "cores": int(cores), "started": started,
           "load_before": before, "load_after": after, "exit": int(rc), "configs": configs},
          open(path, "w"), indent=1)
EOF
done
"$py" -m pipeline.device_check smoke-summary "$work" --json "$work/results.json" | tee "$work/results.md"
exit $status
