# Two commands on a fresh Python 3.11 machine:
#   make quickstart   set up .venv and run the headline target on the built-in phantoms
#   make test         run the test suite (what CI runs)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# pytest-xdist workers of `make test`: the long end-to-end builds overlap the short tests.
TEST_WORKERS ?= 2
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: setup quickstart verdicts proof test test-fast gpu-check full-smoke device-check lint clean pull report ui

$(BIN)/snakemake: requirements.txt requirements-slurm.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-slurm.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

setup: $(BIN)/snakemake

quickstart: setup
	$(BIN)/snakemake --cores $(CORES) results/cyclegan_ct_mri/metrics.json

# Test modules are the work units, the users of one shared build are one unit, the long builds
# start first (tests/conftest.py: work_unit); TEST_WORKERS=0 runs in one process.
test: setup
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# On a machine with a CUDA GPU: CUDA tests, step benchmark, recipe timing -> $(GPU_CHECK_OUT)/ (README, Benchmark).
# REFERENCE=path/to/reference_cyclegan.py times a reference-style step beside the engine's.
GPU_CHECK_OUT ?= gpu-check
gpu-check: setup
	PYTHON=$(abspath $(BIN)/python) REFERENCE=$(REFERENCE) scripts/gpu_check.sh $(GPU_CHECK_OUT)

# Every experiment's full profile cut to a couple of steps, at full size, end to end through Snakemake
# (configs/full_smoke.yaml; hours on a CPU): times and peak memory -> $(FULL_SMOKE_OUT)/results.md (docs/engine.md).
FULL_SMOKE_OUT ?= full-smoke
full-smoke: setup
	PYTHON=$(abspath $(BIN)/python) scripts/full_smoke.sh $(FULL_SMOKE_OUT) $(EXPERIMENTS)

# The device check of configs/full.yaml on a simulated GPU (what CI runs in tests/test_device_check.py).
device-check: setup
	$(BIN)/python -m pipeline.device_check check

# After `git clone`: outputs from the DVC remote, marked up to date for Snakemake (see README).
pull: setup
	$(BIN)/python -m pipeline.restore --cores $(CORES)

report: setup
	$(BIN)/snakemake --report report.html results/cyclegan_ct_mri/metrics.json

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# Every experiment's verdict from empty data, one at a time, timed (results/timings_<profile>.json,
# results/verdicts_<profile>.md): the default profile (each within 10 min on 2 idle cores) and the
# proof profile (configs/proof.yaml: each within 45 min on 2 idle cores). Run on an idle machine.
verdicts: setup
	PYTHON=$(abspath $(BIN)/python) SNAKEMAKE=$(abspath $(BIN)/snakemake) CORES=$(CORES) scripts/run_profile.sh default

proof: setup
	PYTHON=$(abspath $(BIN)/python) SNAKEMAKE=$(abspath $(BIN)/snakemake) CORES=$(CORES) scripts/run_profile.sh proof

lint: setup
	$(BIN)/snakemake --lint

clean:
	rm -rf data models results/*/ logs .snakemake mlflow.db
