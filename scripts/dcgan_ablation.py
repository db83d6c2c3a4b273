"""Short DCGAN ablations on the slices a target trains on: PRDC and diversity over training steps.

Each named variant trains the model of pipeline/models/dcgan.py (the engine's schedule: one D
update per step, G every n_critic-th, instance noise by epoch) for ``--steps`` steps, and every
``--every`` steps scores 200 samples of the exported sampler's G (eval mode, as the evaluator
draws them) against the real test slices in the evaluator's feature space (random VGG-16):
precision / recall / density / coverage (k = 5) and the diversity ratio (mean pairwise distance
of the samples over that of real slices of different patients). One CSV row per checkpoint on
stdout; the CPU seconds of training and D's mean accuracy since the last row beside it
(``--grids``: the samples' first twelve per class as a PNG per row, to look at). With ``--judge``
(a real-data classifier.pt of the experiment, e.g. models/cgan_ct_haemorrhage/classifier.pt) each
row of a cGAN also has, per class, the share of the samples asked for it that the judge calls it
(P > 0.5, as metrics.json's ``share_called_asked``). With ``--frd N`` (at most the 200 samples)
each row also has FRD (the evaluator's: frd-score's radiomic features z-scored by the real set's,
pipeline/evaluate/measures/frd.py) of N evenly spaced samples against N evenly spaced real test
slices, and a first row the real-vs-real floor picked as the evaluator picks it (the training
slices cut to as many as the evaluator generates, ``evaluate.n_generated`` x classes, then N evenly
spaced of those, against the same test slices: metrics.json's ``distribution/floor/frd``). Each row
is one draw without an interval (the evaluator's is about +-3 FRD on the proof data); one
radiomics process, ~0.15 CPU-s an image. What docs/experiment-dcgan-ct.md reports.

    python scripts/dcgan_ablation.py --slices data/slices/ct_haemorrhage --steps 600 \
        --variant batch '{"d_norm": "batch"}' --variant spectral '{"d_norm": "spectral"}'
    python scripts/dcgan_ablation.py --slices data/slices/ct_haemorrhage --checkpoints epoch_10.pt epoch_20.pt

A variant's JSON changes the experiment's own model knobs (``--experiment``'s in params.yaml, then
each ``--configfile`` overlay, as Snakemake resolves them; ``--conditional`` defaults to the cGAN),
never the code's defaults: those are the full profile's (ngf 64, a BatchNorm D), so a variant
written as ``{"ndf": 8}`` over them silently ran another network. The knobs each variant ran with
are printed to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_params
from pipeline.evaluate.measures import classifier, diversity, embedding, frd, prdc
from pipeline.evaluate.measures.floor import floor_rows
from pipeline.evaluate.measures.slices import fixed_sample_indices, load_labelled_slices
from pipeline.models.dcgan import ConditionalDCGAN, DCGAN

N_SAMPLES = 200


def save_grid(images: np.ndarray, labels: np.ndarray | None, path: Path, columns: int = 12) -> None:
    """The first ``columns`` samples of each class (one row per class; one row when unconditional)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [images[:columns]] if labels is None else [images[labels == c][:columns] for c in np.unique(labels)]
    figure, axes = plt.subplots(len(rows), columns, figsize=(columns, len(rows)), squeeze=False)
    for axis_row, row in zip(axes, rows):
        for axis, image in zip(axis_row, row):
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
        for axis in axis_row:
            axis.axis("off")
    figure.savefig(path, dpi=64, bbox_inches="tight")
    plt.close(figure)


def blind(network: torch.nn.Module) -> None:
    """Diagnostic: every label ``network`` sees is class 0, so it trains without the label (its
    label inputs stay: what they do apart from carrying the class is measured)."""
    forward = network.forward
    network.forward = lambda x, labels=None: forward(x, None if labels is None else torch.zeros_like(labels))


def score(model: DCGAN, real_features: np.ndarray, real_subjects: np.ndarray, network, seed: int,
          grid: Path | None = None, blind_g: bool = False, judge: tuple | None = None,
          frd_real: np.ndarray | None = None) -> dict:
    sampler = DCGAN.load_export(model.export() | {"image_size": [model.image_size] * 2}, "cpu") if not model.n_classes \
        else ConditionalDCGAN.load_export(model.export() | {"image_size": [model.image_size] * 2}, "cpu")
    labels = None if not model.n_classes else np.arange(N_SAMPLES) % model.n_classes
    images = sampler.sample(N_SAMPLES, labels=None if labels is None else labels * (not blind_g), seed=seed)
    if grid is not None:
        save_grid(images, labels, grid)
    features = embedding.embed(images, 64, network)
    measures = prdc.prdc(real_features, features)
    ids = np.array([f"g{i}" for i in range(N_SAMPLES)])
    measures["diversity_ratio"] = diversity.MeanPairwiseDistance(real_features, real_subjects, features, ids).ratio()
    measures["mean_intensity"] = float(images.mean())
    if frd_real is not None:
        rows = fixed_sample_indices(N_SAMPLES, len(frd_real))
        measures["frd"] = frd.frd_from_features(frd_real, radiomic_features(images[rows]))[0]
    if judge is not None and labels is not None:
        p_class_1 = classifier.probability_of_b(*judge, images)
        for c, name in enumerate(model.config["class_names"]):  # as the evaluator: P(class asked) > 0.5
            p_asked = p_class_1[labels == c] if c == 1 else 1.0 - p_class_1[labels == c]
            measures[f"called_asked_{name}"] = float((p_asked > 0.5).mean())
    return measures


def radiomic_features(images: np.ndarray) -> np.ndarray:
    """The evaluator's radiomic features of (N, H, W) slices in [0, 1], in this one process (the
    ablations run one thread each, side by side)."""
    return frd.radiomic_features(images, workers=1)[0]


def frd_reference(data: dict, test: dict, n_images: int, n_compared: int) -> tuple[np.ndarray, float | None]:
    """Radiomic features of ``n_images`` evenly spaced real test slices, and the real-vs-real floor as
    the evaluator computes it (pipeline/evaluate/tasks/generation.py): the training slices cut to the
    ``n_compared`` images the evaluator generates (``floor_rows``), ``n_images`` evenly spaced of
    those, their FRD against the test slices' (whose statistics z-score both)."""
    real = radiomic_features(test["images"][fixed_sample_indices(len(test["images"]), n_images)])
    floor_set = data["images"][floor_rows(len(data["images"]), n_compared)]
    floor = radiomic_features(floor_set[fixed_sample_indices(len(floor_set), n_images)])
    return real, frd.frd_from_features(real, floor)[0]


def experiment_knobs(experiment: str, config_files: list[Path]) -> tuple[type[DCGAN], dict]:
    """The experiment's model class and knobs as a Snakemake run resolves them (params.yaml + overlays)."""
    knobs = dict(load_params("params.yaml", config_files=config_files)["experiments"][experiment]["model"])
    return (ConditionalDCGAN if knobs.pop("name") == "cgan" else DCGAN), knobs


def run(name: str, cls: type[DCGAN], overrides: dict, data: dict, test: dict, steps: int, every: int, batch: int,
        seed: int, grids: Path | None = None, blind_networks: tuple[str, ...] = (),
        judge: tuple | None = None, frd_images: int = 0, frd_compared: int = 0) -> None:
    torch.manual_seed(seed)
    size = data["images"].shape[-1]
    model = cls(overrides, None, seed, image_size=(size, size))
    for name in blind_networks:
        blind(getattr(model, name))
    images = torch.from_numpy(data["images"]).float()[:, None] * 2 - 1
    labels = torch.from_numpy(data["labels"]).long()
    network = embedding.build_random_vgg()
    real_features = embedding.embed(test["images"], 64, network)
    real_subjects = test["subject_ids"].astype(str)
    frd_real = None
    if frd_images:
        frd_real, floor = frd_reference(data, test, frd_images, frd_compared)
        print(json.dumps({"variant": name, "step": 0, "frd_floor_real_vs_real": None if floor is None
                          else round(floor, 3), "frd_images": len(frd_real)}), flush=True)
    order_rng = torch.Generator().manual_seed(seed)
    per_epoch = len(images) // batch
    cpu = 0.0
    d_accuracies: list[float] = []
    for step in range(1, steps + 1):
        epoch, within = divmod(step - 1, per_epoch)
        if within == 0:
            model.start_epoch(epoch)
            order = torch.randperm(len(images), generator=order_rng)
        rows = order[within * batch:(within + 1) * batch]
        started = time.process_time()
        model.train()
        batch_data = {"images": images[rows], "images_labels": labels[rows]}
        for phase, period in model.phases.items():
            if step % period == 0:
                losses = model.train_phase(phase, batch_data)
                if "D_accuracy" in losses:
                    d_accuracies.append(float(losses["D_accuracy"]))
        cpu += time.process_time() - started
        if step % every == 0:
            model.eval()
            grid = None if grids is None else grids / f"{name}_step{step}.png"
            measures = score(model, real_features, real_subjects, network, seed, grid, "G" in blind_networks,
                             judge, frd_real)
            d_accuracy = float(np.mean(d_accuracies)) if d_accuracies else float("nan")
            d_accuracies = []
            print(json.dumps({"variant": name, "step": step, "epoch": epoch + 1, "cpu_s_train": round(cpu, 1),
                              **{k: None if v is None else round(v, 3) for k, v in measures.items()},
                              "d_accuracy_since_last": round(d_accuracy, 3)}), flush=True)


def score_checkpoints(paths: list[Path], experiment: str, config_files: list[Path], test: dict, seed: int) -> None:
    """The same scores for the engine's checkpoints of a target (copies of models/<exp>/checkpoint.pt):
    PRDC over training, the learning curve of a default run."""
    cls, knobs = experiment_knobs(experiment, config_files)
    network = embedding.build_random_vgg()
    real_features = embedding.embed(test["images"], 64, network)
    size = test["images"].shape[-1]
    for path in paths:
        state = torch.load(path, weights_only=False, map_location="cpu")
        model = cls(knobs, None, seed, image_size=(size, size))
        model.G.load_state_dict(state["networks"]["G"])
        model.eval()
        measures = score(model, real_features, test["subject_ids"].astype(str), network, seed)
        print(json.dumps({"experiment": experiment, "epoch": state["epoch"], "step": state["step"],
                          **{k: round(v, 3) for k, v in measures.items()}}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=Path, required=True, help="folder of train.npz and test.npz")
    parser.add_argument("--checkpoints", type=Path, nargs="+", help="score these engine checkpoints instead")
    parser.add_argument("--experiment", help="whose model knobs the variants change and the checkpoints hold "
                        "(default: cgan_ct_haemorrhage with --conditional, else dcgan_ct_brain)")
    parser.add_argument("--configfile", type=Path, nargs="*", default=[],
                        help="overlays on params.yaml, as snakemake --configfile (e.g. configs/proof.yaml)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditional", action="store_true", help="the cGAN (cgan_ct_haemorrhage's knobs by default)")
    parser.add_argument("--blind", choices=("D", "G"), action="append", default=[],
                        help="cGAN diagnostic: this network sees class 0 for every image (repeatable)")
    parser.add_argument("--grids", type=Path, help="save a sample grid per scored step here (one row per class)")
    parser.add_argument("--judge", type=Path,
                        help="cGAN: a real-data classifier.pt; rows get the share called as asked per class")
    parser.add_argument("--frd", type=int, default=0, metavar="N",
                        help=f"also FRD of N samples (at most {N_SAMPLES}) against N real test slices per row, and the "
                        "real-vs-real floor (variants only, not --checkpoints)")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), default=[])
    args = parser.parse_args(argv)
    args.experiment = args.experiment or ("cgan_ct_haemorrhage" if args.conditional else "dcgan_ct_brain")
    cls, base = experiment_knobs(args.experiment, args.configfile)
    if args.conditional != (cls is ConditionalDCGAN):
        parser.error(f"--experiment {args.experiment} is {'' if cls is ConditionalDCGAN else 'un'}conditional: "
                     f"{'add' if cls is ConditionalDCGAN else 'drop'} --conditional")
    if not 0 <= args.frd <= N_SAMPLES:
        parser.error(f"--frd takes 0 (off) to {N_SAMPLES} images (the samples scored per row), got {args.frd}")
    if args.frd and args.checkpoints:
        parser.error("--frd scores the variants' rows; --checkpoints rows have no FRD")
    settings = load_params("params.yaml", config_files=args.configfile)["experiments"][args.experiment]
    frd_compared = settings["evaluate"]["n_generated"] * (len(base["class_names"]) if cls is ConditionalDCGAN else 1)
    torch.set_num_threads(1)
    data = load_labelled_slices(args.slices / "train.npz")
    test = load_labelled_slices(args.slices / "test.npz")
    if args.judge and cls is not ConditionalDCGAN:
        parser.error("--judge scores a conditional GAN's labels: add --conditional")
    judge = classifier.load_classifier(args.judge) if args.judge else None
    if args.grids:
        args.grids.mkdir(parents=True, exist_ok=True)  # before hours of training, not at the first row
    if args.checkpoints:
        score_checkpoints(args.checkpoints, args.experiment, args.configfile, test, args.seed)
    for name, overrides in args.variant:
        knobs = {**base, **json.loads(overrides)}
        print(f"{name}: {json.dumps(knobs)}", file=sys.stderr, flush=True)
        run(name, cls, knobs, data, test, args.steps, args.every, args.batch, args.seed, args.grids,
            tuple(args.blind), judge, args.frd, frd_compared)
    return 0


if __name__ == "__main__":
    sys.exit(main())
