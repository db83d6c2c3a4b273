"""Figures: translation triplets, sample grids, difference maps, histograms, metrics table, loss curves, preprocessing.

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


def _load_samples(samples_npz: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """evaluate's samples.npz, checked for ``{way}_{key}`` of both ways."""
    samples_npz = Path(samples_npz)
    if not samples_npz.is_file():
        raise InputDataError(samples_npz, "samples file not found")
    with np.load(samples_npz, allow_pickle=False) as npz:
        samples = {key: npz[key] for key in npz.files}
    missing = [f"{w}_{k}" for w in ("a_to_b", "b_to_a") for k in keys if f"{w}_{k}" not in samples]
    if missing:
        raise InputDataError(samples_npz, f"missing arrays {missing}")
    return samples


def sample_grid(samples_npz: Path, out_png: Path, labels: tuple[str, str] = ("CT", "T2 MRI")) -> None:
    """Per direction, real images of the target domain above translations into it: can you tell them apart?"""
    samples = _load_samples(samples_npz, ("real_target", "translated"))
    ways = {"a_to_b": labels, "b_to_a": labels[::-1]}
    n_cols = max(len(samples[f"{w}_{k}"]) for w in ways for k in ("real_target", "translated"))
    fig, axes = plt.subplots(4, n_cols, figsize=(n_cols * PANEL_INCHES, 4 * PANEL_INCHES), squeeze=False)
    for block, (way, (src, tgt)) in enumerate(ways.items()):
        for offset, (key, name) in enumerate((("real_target", f"real {tgt}"), ("translated", f"{src} \u2192 {tgt}"))):
            row = 2 * block + offset
            for col in range(n_cols):
                ax = axes[row, col]
                if col >= len(samples[f"{way}_{key}"]):
                    ax.axis("off")
                    continue
                _show(ax, samples[f"{way}_{key}"][col])
                if col == 0:
                    ax.set_ylabel(name, fontsize=9)
    _save(fig, out_png)


def outline_mask(ax: plt.Axes, mask: np.ndarray, display_size: int | None = None, **style):
    """Draw the outline of a boolean ``mask`` over an image shown by ``imshow`` on ``ax``.

    ``display_size``: the side of the shown image when it is the mask's image upscaled (the mask
    stays on its native grid); native pixel i's centre then sits at (i + 0.5) * size / n - 0.5 in
    the shown image's pixel coordinates. Row 0 of the mask is the image's top row, as in imshow.
    Returns the contour set (its paths are in the shown image's coordinates).
    """
    n_rows, n_cols = mask.shape
    size_y, size_x = (display_size, display_size) if display_size else (n_rows, n_cols)
    ys = (np.arange(n_rows) + 0.5) * size_y / n_rows - 0.5
    xs = (np.arange(n_cols) + 0.5) * size_x / n_cols - 0.5
    style = {"colors": "cyan", "linewidths": 0.8} | style
    return ax.contour(xs, ys, mask.astype(float), levels=[0.5], **style)


def difference_maps(
    samples_npz: Path, out_png: Path, labels: tuple[str, str] = ("CT", "T2 MRI"), upscale_size: int = 256
) -> None:
    """Per direction, the signed change G(x) - x (as report 000 shows it: red where the translation made
    the image lighter, blue where darker) and the absolute change |G(x) - x|, each over the input,
    after bicubic upscaling to ``upscale_size`` (default 256), with colour bars.

    One colour scale per kind over all panels, so that panels compare; the region mask's outline
    (e.g. the lung fields) is drawn where samples.npz carries one.
    """
    from pipeline.evaluate.measures.regions import difference_maps as make_maps

    samples = _load_samples(samples_npz, ("source", "translated"))
    ways = {"a_to_b": labels, "b_to_a": labels[::-1]}
    maps = {w: make_maps(samples[f"{w}_source"], samples[f"{w}_translated"], upscale_size) for w in ways}
    vmax = max(float(np.abs(diff).max()) for _, diff in maps.values()) or 1.0
    n_rows = max(len(samples[f"{w}_source"]) for w in ways)
    fig, axes = plt.subplots(n_rows, 4, figsize=(4 * 1.3 * PANEL_INCHES + 1.5, n_rows * 1.3 * PANEL_INCHES + 0.4),
                             squeeze=False)
    overlays = {}
    for way_index, (way, (src, tgt)) in enumerate(ways.items()):
        upscaled, diff = maps[way]
        masks = samples.get(f"{way}_region_mask")
        for kind_index, kind in enumerate(("signed", "absolute")):
            col = 2 * kind_index + way_index  # signed maps in the left pair of columns, absolute in the right
            for row in range(n_rows):
                ax = axes[row, col]
                if row >= len(upscaled):
                    ax.axis("off")
                    continue
                _show(ax, upscaled[row])
                shown = diff[row] if kind == "signed" else np.abs(diff[row])
                overlays[kind] = ax.imshow(
                    shown, cmap="RdBu_r" if kind == "signed" else "inferno", interpolation="nearest",
                    vmin=-vmax if kind == "signed" else 0.0, vmax=vmax, alpha=0.6,
                )
                if masks is not None:
                    outline_mask(ax, masks[row], upscale_size)
                if row == 0:
                    ax.set_title(f"{src}\u2192{tgt}\n" + ("G(x) \u2212 x" if kind == "signed" else "|G(x) \u2212 x|"),
                                 fontsize=8)
    fig.colorbar(overlays["signed"], ax=axes[:, :2].ravel().tolist(), shrink=0.8, location="bottom", pad=0.03,
                 label="G(x) \u2212 x ([0,1] units): red lighter, blue darker")
    fig.colorbar(overlays["absolute"], ax=axes[:, 2:].ravel().tolist(), shrink=0.8, location="bottom", pad=0.03,
                 label=f"|G(x) \u2212 x| ([0,1] units), bicubic to {upscale_size}px")
    _save(fig, out_png)


def intensity_histograms(samples_npz: Path, out_png: Path, labels: tuple[str, str] = ("CT", "T2 MRI")) -> None:
    """Intensity distribution of real target images vs translations, per direction (densities over [0, 1])."""
    samples = _load_samples(samples_npz, ("hist_real_target", "hist_translated"))
    edges = samples["hist_edges"]
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, (way, (src, tgt)) in zip(axes[0], {"a_to_b": labels, "b_to_a": labels[::-1]}.items()):
        for key, name, style in (("hist_real_target", f"real {tgt}", "-"), ("hist_translated", f"{src} \u2192 {tgt}", "--")):
            counts = samples[f"{way}_{key}"].astype(float)
            ax.plot(centres, counts / max(counts.sum(), 1.0) / widths, style, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("intensity ([0,1])")
        ax.set_ylabel("density (log)")
        ax.set_title(f"into {tgt}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, out_png)


def _with_interval(value: float | None, ci95: list[float] | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text if ci95 is None else f"{text} [{ci95[0]:.{digits}f}, {ci95[1]:.{digits}f}]"


def metrics_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Headline rows (metric, then one column per direction) of a metrics.json, value [95% CI]."""
    names = metrics["direction_names"]
    rows: list[list[str]] = []

    def row(label: str, pick) -> None:
        rows.append([label] + [pick(metrics[name]) for name in names])

    summary = lambda block, digits=3: _with_interval(block["mean"], block["ci95"], digits) if block else "n/a"
    floor = lambda b, key: (b.get("floor") or {}).get(key) or {}
    for label, key, digits in (("FID", "fid", 1), ("KID", "kid", 4), ("FRD (ln)", "frd", 2)):
        row(label, lambda b, key=key, digits=digits: _with_interval(b[key]["value"], b[key].get("ci95"), digits))
        row(f"  {key.upper()} floor (real vs real)", lambda b, key=key, digits=digits: _with_interval(
            floor(b, key).get("value"), floor(b, key).get("ci95"), digits))
    row("SSIM(x, G(x))", lambda b: summary(b["ssim"]))
    row("cycle SSIM", lambda b: summary(b["ssim_cycle"]))
    row("paired SSIM", lambda b: summary(b["paired"] and b["paired"]["ssim"]))
    row("paired SSIM gain over x", lambda b: summary(b["paired"] and b["paired"].get("ssim_gain")))
    row("paired PSNR (dB)", lambda b: summary(b["paired"] and b["paired"]["psnr"], 2))
    row("paired MAE (HU)", lambda b: summary(b["paired"] and b["paired"]["mae_hu"], 1))
    row("classifier: share intended", lambda b: summary(b["classifier"].get("share_intended")))
    row("classifier: mean P(intended)", lambda b: summary(b["classifier"].get("mean_probability_intended")))
    row("  classifier real-test AUC", lambda b: _with_interval(
        (b["classifier"].get("classifier_auc") or {}).get("value"), (b["classifier"].get("classifier_auc") or {}).get("ci95")))
    row("stego drop (blur / noise)", lambda b: f"{b['steganography']['blur']['drop']:.3f} / "
        f"{b['steganography']['noise']['drop']:.3f}" + (" FLAG" if b["steganography"]["flagged"] else ""))
    row("change inside region", lambda b: _with_interval(b["regions"]["share_inside"], b["regions"]["ci95_inside"])
        if b["regions"] else "n/a")
    row("  inside share - area share", lambda b: summary(b["regions"].get("excess_share")) if b["regions"] else "n/a")
    return ["metric"] + names, rows


def metrics_table(metrics_json: Path | dict, out_png: Path) -> None:
    """The headline numbers of metrics.json as a table image (value [95% CI over subjects] or n/a)."""
    import json

    metrics = metrics_json if isinstance(metrics_json, dict) else json.loads(Path(metrics_json).read_text())
    header, rows = metrics_rows(metrics)
    fig, ax = plt.subplots(figsize=(3 + 3.2 * (len(header) - 1), 0.4 * (len(rows) + 2)))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.3)
    accuracy = (metrics.get("classifier") or {}).get("test_accuracy")
    note = ("value [95% CI over subjects: bootstrap for per-image means, jackknife for FID / KID / FRD]; "
            "no interval with fewer than the minimum number of test subjects; floor: the same distance between\n"
            "real test and real training images (split by patient); n/a: not measured (classifier shares: null "
            "when the classifier fails its real-test check)")
    if accuracy:
        note += f"; classifier test accuracy {_with_interval(accuracy['mean'], accuracy['ci95'])}"
        balanced = (metrics["classifier"].get("real_test") or {}).get("balanced_accuracy")
        if balanced is not None:
            note += f", balanced {balanced:.3f}"
    ax.set_title(note, fontsize=8)
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


# -- generators (pipeline.evaluate.tasks.generation's samples.npz and the training history) ------------


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "samples file not found")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise InputDataError(path, f"missing arrays {missing}")
    return arrays


def generated_grid(samples_npz: Path, out_png: Path) -> None:
    """Per class (one block for an unconditional generator): a row of real test slices above a row
    of generated ones, on the fixed [0, 1] grey range, so that a reader compares like with like."""
    samples = _load_npz(samples_npz, ("row_names",))
    names = [str(name) for name in samples["row_names"]]
    rows = [row for i, name in enumerate(names) for row in (
        (f"real {name}" if len(names) > 1 else "real", samples[f"grid_real_{i}"]),
        (f"generated {name}" if len(names) > 1 else "generated", samples[f"grid_generated_{i}"]),
    )]
    n_cols = max(1, max(len(images) for _, images in rows))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * PANEL_INCHES * 0.7, len(rows) * PANEL_INCHES * 0.7),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(images):
                ax.axis("off")
                continue
            _show(ax, images[c])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    _save(fig, out_png)


def noise_walk(samples_npz: Path, out_png: Path) -> None:
    """Images along a spherical walk between two noise vectors (one row per class): a smooth
    change of anatomy suggests a generator that learnt a space, not a list of slices."""
    samples = _load_npz(samples_npz, ("row_names",))
    if "walk" not in samples:
        raise InputDataError(Path(samples_npz), "no 'walk' array: the generator exposes no noise / generate pair")
    walk, names = samples["walk"], [str(name) for name in samples["row_names"]]
    fig, axes = plt.subplots(len(walk), walk.shape[1], figsize=(walk.shape[1] * PANEL_INCHES * 0.6,
                             len(walk) * PANEL_INCHES * 0.6), squeeze=False)
    for r, row in enumerate(walk):
        for c, image in enumerate(row):
            _show(axes[r, c], image)
            if c == 0:
                axes[r, c].set_ylabel(names[r] if len(names) == len(walk) else "", fontsize=8)
            if r == 0:
                axes[r, c].set_title(f"t = {c / max(len(row) - 1, 1):.2f}", fontsize=7)
    _save(fig, out_png)


def nearest_pairs(samples_npz: Path, out_png: Path) -> None:
    """The generated images closest to a training slice (pixel RMS), each beside that training
    slice (mirrored when its flip was nearer) and its nearest held-out slice, with the distances
    and the memorisation threshold: near-copies of patients' anatomy are seen at a glance."""
    keys = ("pairs_generated", "pairs_train", "pairs_heldout", "pairs_train_distance", "pairs_heldout_distance",
            "pairs_train_flipped", "pairs_threshold")
    samples = _load_npz(samples_npz, keys)
    n = len(samples["pairs_generated"])
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(3 * PANEL_INCHES, max(n, 1) * PANEL_INCHES), squeeze=False)
    threshold = float(samples["pairs_threshold"])
    for r in range(n):
        d_train, d_heldout = samples["pairs_train_distance"][r], samples["pairs_heldout_distance"][r]
        flipped = " (mirrored)" if samples["pairs_train_flipped"][r] else ""
        panels = (("generated", samples["pairs_generated"][r], "red" if d_train < threshold else "black"),
                  (f"nearest training{flipped}\nRMS {d_train:.3f}", samples["pairs_train"][r], "black"),
                  (f"nearest held-out\nRMS {d_heldout:.3f}", samples["pairs_heldout"][r], "black"))
        for c, (title, image, colour) in enumerate(panels):
            _show(axes[r, c], image)
            axes[r, c].set_title(title, fontsize=7, color=colour)
    fig.suptitle(f"closest to training slices (flips, zooms and shifts searched); red: near copy, nearer than "
                 f"{threshold:.3f} (a share of new patients' median distance to training)", fontsize=8)
    _save(fig, out_png)


def gan_training_curves(history_csv: Path, out_png: Path) -> None:
    """Left: the losses per epoch; right: D's mean output on real (D(x)) and generated (D(G(z)))
    images per epoch, the curves report 002 read its training from."""
    import pandas as pd

    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise InputDataError(history_csv, "training history not found")
    history = pd.read_csv(history_csv)
    missing = [c for c in ("epoch", "d_real", "d_fake") if c not in history.columns]
    if missing or history.empty:
        raise InputDataError(history_csv, f"needs rows and the columns epoch, d_real, d_fake (missing {missing})")
    per_epoch = history.groupby("epoch").mean(numeric_only=True)
    outputs = ("d_real", "d_fake", "D_accuracy", "instance_noise_std")
    losses = [c for c in per_epoch.columns if c not in ("step", *outputs)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for column in losses:
        left.plot(per_epoch.index, per_epoch[column], label=column)
    left.set_title("losses", fontsize=9)
    for column, label in (("d_real", "D(x), real"), ("d_fake", "D(G(z)), generated")):
        right.plot(per_epoch.index, per_epoch[column], label=label)
    right.set_title("discriminator output (mean over the epoch)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, out_png)


if __name__ == "__main__":
    sys.exit(main())
