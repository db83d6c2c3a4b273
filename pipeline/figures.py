"""Figures: translation triplets, loss curves, and the preprocessing chain of one subject.

All figures are PNGs (Agg backend, so they render on headless machines) written atomically.
Slices are shown in the project's display convention: anterior at the top, the patient's left
on the image's right. Titles carry subject ids only, never DICOM header fields.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError

DPI = 150
PANEL_INCHES = 2.2


def _save(fig: plt.Figure, out_png: Path) -> None:
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    """Grey image with [0, 1] mapped to black..white, the range every slice here lives in."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def triplets(samples_npz: Path, out_png: Path, labels: tuple[str, str] = ("CT", "T2 MRI")) -> None:
    """Original / translated / cycle-reconstructed, both ways side by side, one row per example.

    ``samples_npz`` is evaluate's samples.npz; labels name domain a and b.
    """
    samples_npz = Path(samples_npz)
    if not samples_npz.is_file():
        raise InputDataError(samples_npz, "samples file not found")
    with np.load(samples_npz, allow_pickle=False) as npz:
        samples = {key: npz[key] for key in npz.files}
    ways = {"a_to_b": labels, "b_to_a": labels[::-1]}
    missing = [
        f"{w}_{k}"
        for w in ways
        for k in ("source", "translated", "reconstructed")
        if f"{w}_{k}" not in samples
    ]
    if missing:
        raise InputDataError(samples_npz, f"missing arrays {missing}")
    n_rows = max(len(samples[f"{w}_source"]) for w in ways)
    fig, axes = plt.subplots(n_rows, 6, figsize=(6 * PANEL_INCHES, n_rows * PANEL_INCHES), squeeze=False)
    for block, (way, (src, tgt)) in enumerate(ways.items()):
        titles = (src, f"{src} \u2192 {tgt}", f"{src} \u2192 {tgt} \u2192 {src}")
        ids = samples.get(f"{way}_subject_ids")
        for row in range(n_rows):
            for col, (key, title) in enumerate(zip(("source", "translated", "reconstructed"), titles)):
                ax = axes[row, 3 * block + col]
                if row >= len(samples[f"{way}_{key}"]):
                    ax.axis("off")
                    continue
                _show(ax, samples[f"{way}_{key}"][row])
                if row == 0:
                    ax.set_title(title, fontsize=9)
                if col == 0 and ids is not None:
                    ax.set_ylabel(str(ids[row]), fontsize=8)
    _save(fig, out_png)


def wants_log_scale(values: np.ndarray, log_ratio: float) -> bool:
    """True when all finite values are positive and span more than ``log_ratio``."""
    values = values[np.isfinite(values)]
    return bool(values.size and values.min() > 0 and values.max() / values.min() > log_ratio)


def loss_curves(history_csv: Path, out_png: Path, log_ratio: float = 100.0) -> None:
    """One line per loss column (mean over the epoch's steps) against epoch.

    The y axis is logarithmic when every value is positive and they span more than
    ``log_ratio`` (default 100), so that small losses stay readable beside large ones.
    """
    import pandas as pd

    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise InputDataError(history_csv, "training history not found")
    history = pd.read_csv(history_csv)
    if "epoch" not in history.columns:
        raise InputDataError(history_csv, "no 'epoch' column")
    losses = [
        c for c in history.columns if c not in ("epoch", "step") and pd.api.types.is_numeric_dtype(history[c])
    ]
    if not losses or history.empty:
        raise InputDataError(history_csv, "no loss columns or no rows")
    per_epoch = history.groupby("epoch")[losses].mean()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for column in losses:
        ax.plot(per_epoch.index, per_epoch[column], marker="o" if len(per_epoch) < 20 else None, label=column)
    if wants_log_scale(per_epoch.to_numpy(dtype=float), log_ratio):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean over the epoch's steps)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    _save(fig, out_png)


def preprocessing_panel(stages: list[tuple[str, np.ndarray]], out_png: Path, title: str) -> None:
    """2-D slices in [0, 1] display range side by side, one titled panel per stage."""
    fig, axes = plt.subplots(1, len(stages), figsize=(len(stages) * 2.8, 3.2), squeeze=False)
    for ax, (name, image) in zip(axes[0], stages):
        _show(ax, image)
        ax.set_title(name, fontsize=9)
        for x, letter in ((0.02, "R"), (0.98, "L")):  # display convention: patient's left on the right
            ax.text(
                x, 0.5, letter, transform=ax.transAxes, color="yellow", fontsize=7, ha="center", va="center"
            )
    fig.suptitle(title, fontsize=10)
    _save(fig, out_png)


def contact_sheet(tiles: list[tuple[str, np.ndarray, bool]], out_png: Path, title: str | None = None) -> None:
    """A grid of (label, image in [0, 1], flagged) thumbnails; flagged labels are red.

    Shown on the fixed range [0, 1] so that an intensity problem stands out instead of being
    rescaled away; one glance finds the bad subject.
    """
    columns = max(1, int(np.ceil(np.sqrt(len(tiles)))))
    rows = max(1, int(np.ceil(len(tiles) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows + (0.4 if title else 0)),
                             squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (label, image, flagged) in zip(axes.ravel(), tiles):
        step = max(1, image.shape[0] // 128)
        axis.imshow(image[::step, ::step], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(label, fontsize=6, color="red" if flagged else "black")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def axial_display(volume: np.ndarray) -> np.ndarray:
    """Mid axial slice of a RAS+ volume in display convention.

    RAS+: i grows to the patient's right, j to anterior. Rows must run anterior -> posterior
    and columns patient right -> left, hence transpose then flip both axes.
    """
    axial = np.asarray(volume[:, :, volume.shape[2] // 2], dtype=np.float64)
    return np.flip(axial.T, axis=(0, 1))


def to_display_range(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((image - low) / max(high - low, np.finfo(float).eps), 0.0, 1.0)


def subject_stages(
    modality: str,
    raw: Path | None = None,
    windowed: Path | None = None,
    registered: Path | None = None,
    masked: Path | None = None,
    ct_display_window: tuple[float, float] = (40.0, 80.0),
    mri_display_percentiles: tuple[float, float] = (0.5, 99.5),
) -> list[tuple[str, np.ndarray]]:
    """The stage list of one subject for ``preprocessing_panel``, read from the stage files.

    Each stage is its mid axial slice (display convention) in [0, 1]. Windowed, registered and
    masked are [0, 1] already (on isotropic grids); raw is brought there for display only.
    raw: the subject's DICOM folder (modality "ct", read as HU) or NIfTI file ("mr" / "mri").
    ct_display_window: (center, width) HU shown for raw CT (default brain 40/80).
    mri_display_percentiles: grey range of raw MR, as percentiles of the slice (default 0.5/99.5).
    """
    import nibabel as nib

    stages = []
    if raw is not None:
        from pipeline.preprocess.window import load_ct_hu, load_mri

        image = load_ct_hu(Path(raw)) if modality == "ct" else load_mri(Path(raw))
        slice_2d = axial_display(np.asanyarray(image.dataobj))
        if modality == "ct":
            center, width = ct_display_window
            low, high = center - width / 2.0, center + width / 2.0
            name = f"raw (HU, window {center:g}/{width:g})"
        else:
            low, high = np.percentile(slice_2d, mri_display_percentiles)
            name = "raw"
        stages.append((name, to_display_range(slice_2d, low, high)))
    for name, path in (("windowed", windowed), ("registered", registered), ("masked", masked)):
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            raise InputDataError(path, f"{name} image not found")
        image = nib.as_closest_canonical(nib.load(path))
        stages.append((name, axial_display(np.asanyarray(image.dataobj))))
    if not stages:
        raise ValueError("no stage given")
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.figures", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("triplets", help="original / translated / reconstructed grid")
    cmd.add_argument("--samples", type=Path, required=True)
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--labels", nargs=2, default=["CT", "T2 MRI"], metavar=("A", "B"))
    cmd = commands.add_parser("loss-curves", help="training losses per epoch")
    cmd.add_argument("--history", type=Path, required=True)
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--log-ratio", type=float, default=100.0)
    cmd = commands.add_parser("preprocessing", help="raw / windowed / registered / masked of one subject")
    cmd.add_argument("--subject-id", "--subject", dest="subject_id", required=True, help="shown in the title")
    cmd.add_argument("--modality", type=str.lower, choices=["ct", "mr", "mri"], required=True)
    cmd.add_argument("--raw", type=Path)
    cmd.add_argument("--windowed", type=Path)
    cmd.add_argument("--registered", type=Path)
    cmd.add_argument("--masked", type=Path)
    cmd.add_argument(
        "--ct-display-window", nargs=2, type=float, default=[40.0, 80.0], metavar=("CENTER", "WIDTH")
    )
    cmd.add_argument(
        "--mri-display-percentiles", nargs=2, type=float, default=[0.5, 99.5], metavar=("LOW", "HIGH")
    )
    cmd.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "triplets":
            triplets(args.samples, args.out, labels=tuple(args.labels))
        elif args.command == "loss-curves":
            loss_curves(args.history, args.out, log_ratio=args.log_ratio)
        else:
            stages = subject_stages(
                args.modality,
                args.raw,
                args.windowed,
                args.registered,
                args.masked,
                ct_display_window=tuple(args.ct_display_window),
                mri_display_percentiles=tuple(args.mri_display_percentiles),
            )
            preprocessing_panel(stages, args.out, title=f"{args.subject_id} ({args.modality.upper()})")
    except InputDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
