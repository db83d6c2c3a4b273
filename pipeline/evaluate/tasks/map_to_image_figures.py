"""Figures of report 003's map-to-image generator, drawn from the evaluation's samples.npz.

- ``panels.png``: the report's Fig. 3: per example the map (report 003's grey values), the content
  image (the real slice of that map), the style image, the result, and zooms of the three images
  on the example's smallest organ (e.g. the spinal canal, which the report zooms on): its
  bounding box with a margin of half its size, never smaller than a quarter of the image side (a
  canal of 4 x 5 pixels alone would be a few blocks), in the style image the same organ's box; the
  box is drawn on the full images and the organ's outline in the zooms.
- ``perturbed.png``: source map, perturbed map, and the image generated from the perturbed map.
- ``z_draws.png``: several z for one map and one style (the diversity draws).
- ``organ_histograms.png``: per organ, the intensity histograms (HU when the slices carry their
  window) of the generated images, the style image and the real content images.
- ``style_pair.png``: the style test: the two style slices (first row), then per held-out map the
  map and the images of the generators for style patient A and B and of their style-weight-0
  twins, each with a zoom on the body and lungs' centre.
All PNGs are written atomically (pipeline.figures' helpers); titles carry no patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError
from pipeline.figures import PANEL_INCHES, _load_npz, _save, _show, outline_mask, plt

ZOOM_MARGIN = 0.5
"""Zoom box = the organ's bounding box grown by this fraction of its size on every side..."""
ZOOM_MIN_SIDE = 0.25
"""...and at least this share of the image side, square, so that the zoom shows the organ in its
surroundings (report 003's spinal canal is 4 x 5 pixels at 64 px)."""
ZOOM_COLOUR, OUTLINE_COLOUR = "yellow", "cyan"

FIGURES = ("panels", "perturbed", "z_draws", "organ_histograms", "style_pair")
PAIR_COLUMNS = ("styled_first", "styled_second", "control_first", "control_second")
PAIR_TITLES = ("style A's G", "style B's G", "control (A run)", "control (B run)")
ZOOM_SIDE = 0.4
"""style_pair's zoom: a square of this share of the side around the lungs' centre (body and lungs)."""


def _show_map(ax, label_map: np.ndarray, grey_values: np.ndarray) -> None:
    ax.imshow(np.asarray(grey_values)[label_map.astype(np.int64)], cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def smallest_organ(label_map: np.ndarray) -> int | None:
    """The class (>= 1) with the fewest pixels in the map, None when it holds no organ."""
    classes, counts = np.unique(label_map[label_map > 0], return_counts=True)
    return int(classes[np.argmin(counts)]) if classes.size else None


def zoom_box(label_map: np.ndarray, organ: int | None) -> tuple[slice, slice]:
    """Square box around ``organ`` in the map (module constants: margin, minimum side), inside the
    image; the whole image when the organ is absent."""
    if organ is None or not (label_map == organ).any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(label_map == organ)
    extents = [(lo, hi + 1) for lo, hi in ((ys.min(), ys.max()), (xs.min(), xs.max()))]
    grown = max(max(1, int(round((hi - lo) * (1 + 2 * ZOOM_MARGIN)))) for lo, hi in extents)
    side = min(max(grown, int(np.ceil(ZOOM_MIN_SIDE * max(label_map.shape)))), *label_map.shape)
    boxes = []
    for (lo, hi), size in zip(extents, label_map.shape):
        start = int(np.clip((lo + hi - side) // 2, 0, size - side))
        boxes.append(slice(start, start + side))
    return boxes[0], boxes[1]


def _mark_box(ax, box: tuple[slice, slice], shape: tuple[int, int]) -> None:
    """The zoom box as a rectangle on a full image."""
    from matplotlib.patches import Rectangle

    rows, cols = (range(*b.indices(n)) for b, n in zip(box, shape))
    ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), len(cols), len(rows), fill=False,
                           edgecolor=ZOOM_COLOUR, linewidth=0.8))


def panels(samples_npz: Path, out_png: Path) -> None:
    """Map | content | style | result | zoom content | zoom style | zoom result, one row per example."""
    s = _load_npz(samples_npz, ("example_maps", "example_content", "example_result", "grey_values"))
    has_style = "style_image" in s
    names = [str(n) for n in s.get("organ_names", [])]
    n = len(s["example_maps"])
    titles = ["map", "content (real)", "style", "result", "zoom: content", "zoom: style", "zoom: result"]
    fig, axes = plt.subplots(max(n, 1), len(titles), figsize=(len(titles) * PANEL_INCHES * 0.8,
                             max(n, 1) * PANEL_INCHES * 0.8 + 0.5), squeeze=False)
    for r in range(n):
        label_map = s["example_maps"][r]
        organ = smallest_organ(label_map)
        box = zoom_box(label_map, organ)
        style_box = zoom_box(s["style_map"], organ) if has_style else None
        full = [(1, s["example_content"][r], box, label_map), (3, s["example_result"][r], box, label_map)]
        if has_style:
            full.append((2, s["style_image"], style_box, s["style_map"]))
        _show_map(axes[r, 0], label_map, s["grey_values"])
        for c, image, where, organ_map in full:
            _show(axes[r, c], image)
            _mark_box(axes[r, c], where, image.shape)
            _show(axes[r, c + 3], image[where])
            if organ is not None:
                outline_mask(axes[r, c + 3], organ_map[where] == organ, colors=OUTLINE_COLOUR, linewidths=0.6)
        if not has_style:
            axes[r, 2].axis("off")
            axes[r, 5].axis("off")
        if organ is not None and names:
            axes[r, 4].set_xlabel(f"{names[organ]} (outlined)", fontsize=7)
    for c, title in enumerate(titles):
        axes[0, c].set_title(title if has_style or "style" not in title else f"{title}\n(drawn each step)",
                             fontsize=7)
    fig.suptitle("content + style = result; yellow box: the zoom on the map's smallest organ (in the style image "
                 "the same organ), outlined in cyan", fontsize=8)
    if names:
        _map_key(fig, names, s["grey_values"])
    _save(fig, out_png)


def _map_key(fig, names: list[str], grey_values: np.ndarray, columns: int | None = None) -> None:
    """Which grey of the maps is which class, below the figure (``columns`` per row, default all)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=str(float(grey) / 255.0), edgecolor="black", linewidth=0.5, label=name)
               for name, grey in zip(names, grey_values)]
    fig.subplots_adjust(bottom=0.02)  # the key takes the bottom margin's place
    fig.legend(handles=handles, loc="upper center", ncol=columns or len(handles), fontsize=7, frameon=False,
               title="map classes", title_fontsize=7, bbox_to_anchor=(0.5, 0.0))


def perturbed_sheet(source_maps: np.ndarray, maps: np.ndarray, images: np.ndarray, grey_values, out_png: Path,
                    organ_names: list[str] | None = None) -> None:
    """Source map | perturbed map | generated image, one row per perturbed map (a key of the map's
    classes below when ``organ_names`` are given)."""
    n = len(maps)
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(3 * PANEL_INCHES * 0.8, max(n, 1) * PANEL_INCHES * 0.8),
                             squeeze=False)
    for r in range(n):
        _show_map(axes[r, 0], source_maps[r], grey_values)
        _show_map(axes[r, 1], maps[r], grey_values)
        _show(axes[r, 2], images[r])
        if r == 0:
            for c, title in enumerate(("held-out map", "perturbed map", "generated")):
                axes[r, c].set_title(title, fontsize=7)
    if n == 0:
        axes[0, 0].axis("off")
    if organ_names:
        _map_key(fig, organ_names, grey_values, columns=3)
    _save(fig, out_png)


def z_draws(samples_npz: Path, out_png: Path) -> None:
    """One row per map: the map, then its images for different z (one style)."""
    s = _load_npz(samples_npz, ("diversity_maps", "diversity_images", "grey_values"))
    maps, images = s["diversity_maps"], s["diversity_images"]
    n_rows, n_draws = max(len(maps), 1), images.shape[1] if images.ndim == 4 else 0
    fig, axes = plt.subplots(n_rows, n_draws + 1, figsize=((n_draws + 1) * PANEL_INCHES * 0.7,
                             n_rows * PANEL_INCHES * 0.7), squeeze=False)
    for r in range(len(maps)):
        _show_map(axes[r, 0], maps[r], s["grey_values"])
        for k in range(n_draws):
            _show(axes[r, k + 1], images[r, k])
            if r == 0:
                axes[r, k + 1].set_title(f"z draw {k + 1}", fontsize=7)
    if len(maps) == 0:
        axes[0, 0].axis("off")
    fig.suptitle("several z for one map and one style", fontsize=8)
    if "organ_names" in s:
        _map_key(fig, [str(n) for n in s["organ_names"]], s["grey_values"])
    _save(fig, out_png)


def organ_histograms(samples_npz: Path, out_png: Path) -> None:
    """Per organ: density histograms of generated vs style vs content intensities."""
    s = _load_npz(samples_npz, ("organ_names", "intensity"))
    names = [str(n) for n in s["organ_names"]]
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(len(names) * 1.6, 5), squeeze=False)
    flat = axes.ravel()
    if "histograms" not in s:
        for ax in flat:
            ax.axis("off")
        flat[0].text(0, 0.5, "no fixed style image: the model draws its style each step", fontsize=8)
        _save(fig, out_png)
        return
    centres = (s["histogram_edges"][:-1] + s["histogram_edges"][1:]) / 2
    unit = "HU" if tuple(s["intensity"]) != (0.0, 1.0) else "[0,1]"
    for c, name in enumerate(names):
        for k, label in enumerate(s["histogram_sets"]):
            flat[c].plot(centres, s["histograms"][c, k], label=str(label), lw=1.2)
        flat[c].set_title(name, fontsize=8)
        flat[c].set_xlabel(unit, fontsize=7)
        flat[c].set_ylabel(f"density (1/{unit})" if c % axes.shape[1] == 0 else "", fontsize=7)
        flat[c].tick_params(labelsize=6)
    for ax in flat[len(names):]:
        ax.axis("off")
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.suptitle("intensities per organ: generated images (from the test maps), the style image, the real content "
                 "slices", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    _save(fig, out_png)


def _lung_zoom(label_map: np.ndarray) -> tuple[slice, slice]:
    ys, xs = np.nonzero(label_map == 2)
    side = max(4, int(round(label_map.shape[0] * ZOOM_SIDE)))
    cy, cx = (int(ys.mean()), int(xs.mean())) if ys.size else (label_map.shape[0] // 2, label_map.shape[1] // 2)
    top, left = np.clip([cy - side // 2, cx - side // 2], 0, np.array(label_map.shape) - side)
    return slice(top, top + side), slice(left, left + side)


def _show_windowed(ax, image: np.ndarray, window: tuple[float, float]) -> None:
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def style_pair(samples_npz: Path, out_png: Path) -> None:
    """Style slices A and B, then per map: map | each generator's image | zooms of the same."""
    s = _load_npz(samples_npz, ("example_maps", "grey_values"))
    if "pair_style_first" not in s:
        fig, ax = plt.subplots(1, 1, figsize=(4, 1))
        ax.axis("off")
        ax.text(0, 0.5, "no style test: the texture pair's generators were not trained", fontsize=8)
        _save(fig, out_png)
        return
    maps = s["example_maps"]
    zooms = [s[f"pair_style_{side}"][_lung_zoom(s[f"pair_style_map_{side}"])] for side in ("first", "second")]
    window = tuple(np.percentile(np.concatenate([z.ravel() for z in zooms]), [2, 98]))  # zooms: the style's own range
    n_cols = 1 + 2 * len(PAIR_COLUMNS)
    fig, axes = plt.subplots(len(maps) + 1, n_cols, figsize=(n_cols * PANEL_INCHES * 0.6,
                             (len(maps) + 1) * PANEL_INCHES * 0.6), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    for k, side in enumerate(("first", "second")):
        _show(axes[0, 1 + k], s[f"pair_style_{side}"])
        axes[0, 1 + k].set_title(f"style {'AB'[k]}", fontsize=7)
        _show_windowed(axes[0, 1 + len(PAIR_COLUMNS) + k], zooms[k], window)
        axes[0, 1 + len(PAIR_COLUMNS) + k].set_title(f"zoom: style {'AB'[k]}", fontsize=7)
    for r, label_map in enumerate(maps, start=1):
        _show_map(axes[r, 0], label_map, s["grey_values"])
        box = _lung_zoom(label_map)
        for k, (column, title) in enumerate(zip(PAIR_COLUMNS, PAIR_TITLES)):
            _show(axes[r, 1 + k], s[f"pair_{column}"][r - 1])
            _show_windowed(axes[r, 1 + len(PAIR_COLUMNS) + k], s[f"pair_{column}"][r - 1][box], window)
            if r == 1:
                axes[r, 1 + k].set_title(title, fontsize=7)
                axes[r, 1 + len(PAIR_COLUMNS) + k].set_title(f"zoom: {title}", fontsize=7)
    fig.suptitle("does each organ take its style patient's texture? (held-out maps; zooms windowed to the style "
                 f"zooms' 2-98% range, {window[0]:.2f}-{window[1]:.2f})", fontsize=8)
    _save(fig, out_png)


def draw_all(samples_npz: Path, generated_npz: Path, out_dir: Path) -> list[Path]:
    """Every figure of the module docstring into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in FIGURES}
    panels(samples_npz, paths["panels"])
    s = _load_npz(samples_npz, ("perturbed_source_maps", "perturbed_maps", "perturbed_images", "grey_values"))
    if not Path(generated_npz).is_file():
        raise InputDataError(Path(generated_npz), "generated images file not found")
    perturbed_sheet(s["perturbed_source_maps"], s["perturbed_maps"], s["perturbed_images"], s["grey_values"],
                    paths["perturbed"], [str(n) for n in s.get("organ_names", [])])
    style_pair(samples_npz, paths["style_pair"])
    z_draws(samples_npz, paths["z_draws"])
    organ_histograms(samples_npz, paths["organ_histograms"])
    return list(paths.values())
