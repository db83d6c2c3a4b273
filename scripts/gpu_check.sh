#!/usr/bin/env bash
# The GPU checks of the training engine, for a machine with a CUDA device:
#   tests   the CUDA tests (tests/test_gpu.py: no host sync in a step, CUDA graphs, resume, memory)
#   bench   the step benchmark at 256x256, batch 32 then batch 1 (CUDA graphs), beside the
#           reference-style step when $REFERENCE names its file
#   recipe  report 001's recipe (configs/full.yaml) timed through the engine, at its batch and at 32
#   device  the device check of every full profile on the real GPU (python -m pipeline.device_check
#           check --device cuda): one step per network at full size, model.pt reloaded, inversion
#   stylegan the StyleGAN2 step at 128 px, batch 32, stylegan2-ada's auto config (s/kimg)
#   smoke   the full-profile smoke run on CUDA (scripts/full_smoke.sh OUT_DIR/full-smoke, all six)
# Each stage takes a few minutes (mostly torch.compile; smoke: the data path, ~1 h on 16 cores).
# Everything lands in OUT_DIR; OUT_DIR/results.md collects the stages' tables in one file.
#
#   make gpu-check                                       # all stages, in the project's virtualenv
#   PYTHON=python3 scripts/gpu_check.sh OUT_DIR [STAGE...]   # any Python holding the requirements
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
shift || true
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests device bench stylegan recipe smoke)
py=${PYTHON:-python}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MEDGAN_PROGRESS=off MLFLOW_DISABLE_TELEMETRY=true
status=0
reference=()
if [ -n "${REFERENCE:-}" ]; then reference=(--reference "$REFERENCE"); fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$out/gpu.txt" 2>&1 || true
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >>"$out/gpu.txt" 2>&1

for stage in "${stages[@]}"; do
    start=$(date +%s)
    case $stage in
    tests)
        "$py" -m pytest -q -ra -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log" || status=1
        ;;
    bench)
        "$py" -m pipeline.bench --device cuda --sizes 256 --batches 32 --steps 30 --warmup 10 "${reference[@]}" \
            --json "$out/bench_batch32.json" 2>"$out/bench_batch32.log" | tee "$out/bench_batch32.md" || status=1
        "$py" -m pipeline.bench --device cuda --sizes 256 --batches 1 --steps 100 --warmup 20 \
            --compile-mode reduce-overhead "${reference[@]}" \
            --json "$out/bench_batch1.json" 2>"$out/bench_batch1.log" | tee "$out/bench_batch1.md" || status=1
        ;;
    recipe)
        for run in "as_configured {}" 'batch32 {"batch_size": 32}'; do
            name=${run%% *}
            "$py" -m pipeline.bench --recipe cyclegan_ct_mri --configfile configs/full.yaml --recipe-epochs 3 \
                --recipe-train-json "${run#* }" --json "$out/recipe_$name.json" \
                2>"$out/recipe_$name.log" | tee "$out/recipe_$name.txt" || status=1
        done
        ;;
    device)
        "$py" -m pipeline.device_check check --device cuda --json "$out/device_check.json" 2>&1 \
            | tee "$out/device_check.log" || status=1
        ;;
    stylegan)
        "$py" -m pipeline.bench --stylegan2 --device cuda --sizes 128 --batches 32 --steps 20 --warmup 5 \
            --json "$out/bench_stylegan2.json" 2>"$out/bench_stylegan2.log" | tee "$out/bench_stylegan2.md" || status=1
        ;;
    smoke)
        DEVICE=cuda PYTHON="$py" scripts/full_smoke.sh "$out/full-smoke" 2>&1 | tee "$out/full_smoke.log" || status=1
        ;;
    *)
        echo "unknown stage $stage (tests, device, bench, stylegan, recipe, smoke)" >&2
        exit 2
        ;;
    esac
    echo "stage $stage: $(( $(date +%s) - start )) s" | tee -a "$out/stages.txt"
done
{
    echo "# GPU check $(date -Is)"
    cat "$out/gpu.txt"
    for part in stages.txt tests.log device_check.log bench_batch32.md bench_batch1.md bench_stylegan2.md \
                recipe_as_configured.txt recipe_batch32.txt full-smoke/results.md; do
        [ -f "$out/$part" ] && printf '\n## %s\n\n```\n%s\n```\n' "$part" "$(tail -n 60 "$out/$part")"
    done
} >"$out/results.md"
exit $status
