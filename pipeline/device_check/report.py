"""Tables and files of the device work: the H100 projection, the device overlay of a profile and
the summary of a full smoke run (scripts/full_smoke.sh)."""
from __future__ import annotations

import copy
import csv
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

from pipeline.device_check import projection
from pipeline.device_check.profiles import experiments

#: What a CPU run of a GPU profile changes besides the devices: bf16 autocast and torch.compile
#: (the GPU's speed knobs; the device check covers bf16 at full size) off, and every ``threads``
#: knob at 0 (torch's default: as many threads as the job's rule reserves, which Snakemake passes on
#: as OMP_NUM_THREADS). The train rule then reserves every core (``train_job_threads``); the other
#: network rules keep their own ``threads:`` (the encoder 8, the segmenters 2, seg2ct's style
#: variants 1, all capped at --cores). The default profile's ``threads: 1`` (StyleGAN2's until
#: 2f43039, map -> CT's still) had StyleGAN2's full-size step (32 images at 128 px) on one thread of two.
CPU_KNOBS = {"bf16": False, "compile": False, "threads": 0}


def device_overlay(cfg: Mapping[str, Any], device: str) -> dict[str, Any]:
    """An overlay of ``cfg``'s experiments with every ``device`` knob set to ``device`` (and, for
    the CPU, ``CPU_KNOBS``)."""

    def walk(node: Any) -> Any:
        if not isinstance(node, Mapping):
            return None
        out = {}
        for key, value in node.items():
            if key == "device":
                out[key] = device
            elif isinstance(value, Mapping):
                inner = walk(value)
                if inner:
                    out[key] = inner
        if device == "cpu" and "device" in node:
            out.update({k: v for k, v in CPU_KNOBS.items() if k in node})
        return out

    return {"experiments": {name: walk(exp) for name, exp in cfg["experiments"].items() if walk(exp)}}


def _stylegan_generator_file(exp, folder: Path) -> Path:
    """model.pt of the experiment's G at full size (fake tensors, no data) for its encoder."""
    from pipeline.device_check.cost import CPU, fake_cpu
    from pipeline.device_check.steps import build_model, export_model

    with fake_cpu():
        model, _ = build_model(exp.networks[0], CPU)
        return export_model(model, exp.networks[0], folder)


def projection_rows(cfg: Mapping[str, Any], names: list[str] | None = None,
                    per_subject_cpu_s: Mapping[str, float] | None = None) -> tuple[list[dict], dict[str, Any]]:
    """One row per trained network (and StyleGAN2's inversion), and notes (assumptions, checks)."""
    from pipeline.device_check.cost import inversion_step_cost, training_step_cost
    from pipeline.latent.invert import DEFAULT_SETTINGS

    rows, notes = [], {"throughput": {str(b): list(v) for b, v in projection.H100_REFERENCE.items()},
                       "reference_tflop_per_pair": projection.REFERENCE_TFLOP_PER_PAIR,
                       "reported": projection.REPORTED}
    with tempfile.TemporaryDirectory() as folder:
        for exp in experiments(cfg, names):
            for run in exp.networks:
                if run.role == "encoder":
                    run = copy.deepcopy(run)
                    run.config["model"]["generator"] = str(_stylegan_generator_file(exp, Path(folder)))
                cost = training_step_cost(run)
                steps, why = projection.training_steps(cfg, run)
                name = run.config["model"].get("name", "cyclegan")
                rows.append(projection.row(exp.name, f"train {name}", cost, steps, why, run.batch_size,
                                           bool(run.train.get("bf16"))))
                if "lazy" in cost:
                    notes["stylegan2_lazy_tflop"] = {k: v / 1e12 if isinstance(v, float) else v
                                                     for k, v in cost["lazy"].items()}
                    notes["stylegan2_ada_implied_tflops"] = projection.stylegan2_check(
                        cost["flops_per_step"] / 1e12, run.batch_size)
            if exp.kind == "stylegan":
                settings = {**DEFAULT_SETTINGS, **exp.section["inversion"]}
                cost = inversion_step_cost(exp.networks[0], settings, cfg["weights"]["pretrained"])
                steps, why = projection.inversion_steps(cfg, exp)
                rows.append(projection.row(exp.name, "inversion (latent optimisation)", cost, steps, why,
                                           cost["batch"], False))
    if per_subject_cpu_s:
        notes["preprocessing_cpu_hours"] = projection.preprocessing_hours(cfg, per_subject_cpu_s)
        notes["preprocessing_cpu_s_per_subject"] = dict(per_subject_cpu_s)
    return rows, notes


def projection_table(rows: list[dict], notes: Mapping[str, Any]) -> str:
    lines = ["| experiment | network | TFLOP / step | steps | PFLOP | assumed TFLOP/s | H100 hours (at 68 ms a "
             "step) | peak GB (weights + grads + Adam / activations) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        memory = r["memory_gb"]
        persistent = sum(memory.get(k, 0) for k in ("weights", "gradients", "optimiser_state"))
        floor = r.get("h100_hours_at_reference_step_time")
        lines.append(f"| {r['experiment']} | {r['what']} | {r['tflop_per_step']:.3g} | {r['steps']:,} "
                     f"({r['steps_from']}) | {r['pflop']:.3g} | {r['assumed_tflops']:.0f} ({r['assumed_from']}) | "
                     f"{r['h100_hours']:.2g}" + (f" ({floor:.2g})" if floor is not None else "") +
                     f" | {r['peak_memory_gb']:.1f} ({persistent:.1f} / {memory['activations_and_temporaries']:.1f}) |")
    totals: dict[str, list[float]] = {}
    for r in rows:
        low = r["h100_hours"]
        high = max(low, r.get("h100_hours_at_reference_step_time") or 0.0)
        totals[r["experiment"]] = [sum(x) for x in zip(totals.get(r["experiment"], [0.0, 0.0]), (low, high))]
    lines += ["", "| experiment | projected H100 hours, all networks (FLOP-bound - at 68 ms a batch-1 step) | "
              "the reports' own figures |", "|---|---|---|"]
    lines += [f"| {name} | {low:.2g}" + (f" - {high:.2g}" if high > low * 1.05 else "") +
              f" | {notes['reported'].get(name, '-')} |" for name, (low, high) in totals.items()]
    if "stylegan2_ada_implied_tflops" in notes:
        implied = ", ".join(f"{gpu} {v:.0f} TFLOP/s" for gpu, v in notes["stylegan2_ada_implied_tflops"].items())
        lines += ["", f"stylegan2-ada's published s/kimg, with this step's FLOPs, means {implied} achieved."]
    if "preprocessing_cpu_hours" in notes:
        hours = ", ".join(f"{rule} {h:.1f}" for rule, h in notes["preprocessing_cpu_hours"].items())
        lines += ["", f"Per-subject preprocessing of the head CT / MRI (CPU hours over the profile's subjects): {hours}"]
    return "\n".join(lines)


def _benchmark_rows(path: Path) -> list[dict[str, float]]:
    """The numeric columns of a Snakemake benchmark file (s, max_rss in MB, cpu_time in s, ...)."""
    def number(value: str) -> float | None:
        try:
            return float(value)
        except ValueError:
            return None

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [{k: n for k, v in row.items() if (n := number(v)) is not None} for row in rows]


def smoke_preprocessing(workdir: Path) -> dict[str, float]:
    """Mean CPU seconds per subject of the per-subject rules (window, register) in a smoke run."""
    bench = Path(workdir) / "repo" / "benchmarks"
    out = {}
    for rule in ("window", "register"):
        values = [row["cpu_time"] for path in sorted(bench.glob(f"{rule}/*/*.tsv")) for row in _benchmark_rows(path)
                  if "cpu_time" in row]
        if values:
            out[rule] = sum(values) / len(values)
    return out


def _time_v(path: Path) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) from a GNU ``/usr/bin/time -v`` report."""
    text = path.read_text()
    found = dict(re.findall(r"^\s*([^:\n]+?):\s+(.+)$", text, flags=re.M))
    # The wall-clock key holds colons itself ("... (h:mm:ss or m:ss): 26:11.02"): read its line alone.
    elapsed = re.search(r"^\s*Elapsed \(wall clock\) time \([^)]*\):\s+(\S+)$", text, flags=re.M)
    wall = [float(p) for p in (elapsed.group(1) if elapsed else "0").split(":")]
    seconds = sum(value * 60 ** i for i, value in enumerate(reversed(wall)))
    return {"wall_s": round(seconds, 1),
            "cpu_s": round(float(found.get("User time (seconds)", 0)) + float(found.get("System time (seconds)", 0)), 1),
            "peak_rss_mb": round(float(found.get("Maximum resident set size (kbytes)", 0)) / 1024, 1),
            "exit_status": int(found.get("Exit status", -1))}


def smoke_summary(workdir: Path) -> dict[str, Any]:
    """Per experiment of a smoke run: its Snakemake invocation's wall / CPU time and peak RSS (the
    largest single process), the load around it, and its jobs' benchmarks (CPU time per rule)."""
    from pipeline.config import load_params

    workdir = Path(workdir)
    repo = workdir / "repo"
    bench = repo / "benchmarks"
    out = {}
    for meta_path in sorted((workdir / "runs").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        name = meta["experiment"]
        entry = {**meta, **_time_v(meta_path.with_suffix(".time"))}
        cfg = load_params(repo / "params.yaml", config_files=[repo / c for c in meta["configs"]])
        datasets = set(experiments(cfg, [name])[0].networks[0].inputs.values())
        datasets |= {cfg["datasets"][d]["raw"] for d in datasets if "raw" in cfg["datasets"][d]}
        meta["datasets"] = sorted(datasets)
        entry["datasets"] = meta["datasets"]
        jobs: dict[str, dict[str, float]] = {}
        for path in sorted(bench.rglob("*.tsv")):
            rel = path.relative_to(bench)
            if name in rel.parts or rel.stem == name or any(d in rel.parts or rel.stem == d
                                                             for d in meta.get("datasets", [])):
                for row in _benchmark_rows(path):
                    job = jobs.setdefault(rel.parts[0], {"jobs": 0, "cpu_s": 0.0, "wall_s": 0.0, "max_rss_mb": 0.0})
                    job["jobs"] += 1
                    job["cpu_s"] += row.get("cpu_time", 0.0)
                    job["wall_s"] += row.get("s", 0.0)
                    job["max_rss_mb"] = max(job["max_rss_mb"], row.get("max_rss", 0.0))
        entry["rules"] = {rule: {k: round(v, 1) for k, v in job.items()} for rule, job in sorted(jobs.items())}
        out[name] = entry
    return out


def smoke_table(summary: Mapping[str, Any]) -> str:
    lines = ["| experiment | exit | wall (this invocation) | CPU s | peak RSS MB | load before / after | "
             "jobs: CPU s per rule (all runs of its jobs) |", "|---|---|---|---|---|---|---|"]
    for name, e in summary.items():
        rules = ", ".join(f"{rule} {job['cpu_s']:.0f}" for rule, job in e["rules"].items())
        lines.append(f"| {name} | {e['exit_status']} | {e['wall_s']:.0f} s | {e['cpu_s']:.0f} | {e['peak_rss_mb']:.0f} "
                     f"| {e.get('load_before', '?')} / {e.get('load_after', '?')} | {rules} |")
    return "\n".join(lines)
