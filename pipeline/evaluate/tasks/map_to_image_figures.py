"""Figures of report 003's map-to-image generator, drawn from the evaluation's samples.npz.

- ``panels.png``: the report's Fig. 3: per example the map (report 003's grey values), the content
  image (the real slice of that map), the style image, the result, and zooms of the three images
  on the example's smallest organ (e.g. the spinal canal, which the report zooms on): its
  bounding box with a margin of half its size, in the style image the same organ's box.
- ``perturbed.png``: source map, perturbed map, and the image generated from the perturbed map.
- ``z_draws.png``: several z for one map and one style (the diversity draws).
- ``organ_histograms.png``: per organ, the intensity histograms (HU when the slices carry their
  window) of the generated images, the style image and the real content images.
All PNGs are written atomically (pipeline.figures' helpers); titles carry no patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError
from pipeline.figures import PANEL_INCHES, _load_npz, _save, _show, plt

ZOOM_MARGIN = 0.5
"""Zoom box = the organ's bounding box grown by this fraction of its size on every side."""

FIGURES = ("panels", "perturbed", "z_draws", "organ_histograms")


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
    """Bounding box (grown by ZOOM_MARGIN) of ``organ`` in the map; the whole image when it is absent."""
    if organ is None or not (label_map == organ).any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(label_map == organ)
    boxes = []
    for lo, hi, size in ((ys.min(), ys.max() + 1, label_map.shape[0]), (xs.min(), xs.max() + 1, label_map.shape[1])):
        margin = max(1, int(round((hi - lo) * ZOOM_MARGIN)))
        boxes.append(slice(max(0, lo - margin), min(size, hi + margin)))
    return boxes[0], boxes[1]


def panels(samples_npz: Path, out_png: Path) -> None:
    """Map | content | style | result | zoom content | zoom style | zoom result, one row per example."""
    s = _load_npz(samples_npz, ("example_maps", "example_content", "example_result", "grey_values"))
    has_style = "style_image" in s
    n = len(s["example_maps"])
    titles = ["map", "content (real)", "style", "result", "zoom: content", "zoom: style", "zoom: result"]
    fig, axes = plt.subplots(max(n, 1), len(titles), figsize=(len(titles) * PANEL_INCHES * 0.8,
                             max(n, 1) * PANEL_INCHES * 0.8), squeeze=False)
    for r in range(n):
        organ = smallest_organ(s["example_maps"][r])
        box = zoom_box(s["example_maps"][r], organ)
        style = s["style_image"] if has_style else None
        style_zoom = None if style is None else style[zoom_box(s["style_map"], organ)]
        images = [None, s["example_content"][r], style, s["example_result"][r],
                  s["example_content"][r][box], style_zoom, s["example_result"][r][box]]
        _show_map(axes[r, 0], s["example_maps"][r], s["grey_values"])
        for c in range(1, len(titles)):
            if images[c] is None:
                axes[r, c].axis("off")
            else:
                _show(axes[r, c], images[c])
        for c, title in enumerate(titles):
            if r == 0:
                axes[r, c].set_title(title if has_style or "style" not in title else f"{title}\n(drawn each step)",
                                     fontsize=7)
    fig.suptitle("content + style = result (zoom: the smallest organ of the map, in the style image the same organ)",
                 fontsize=8)
    _save(fig, out_png)


def perturbed_sheet(source_maps: np.ndarray, maps: np.ndarray, images: np.ndarray, grey_values, out_png: Path) -> None:
    """Source map | perturbed map | generated image, one row per perturbed map."""
    n = len(maps)
    fig, axes = plt.subplots(max(n, 1), 3, figsize=(3 * PANEL_INCHES * 0.8, max(n, 1) * PANEL_INCHES * 0.8),
                             squeeze=False)
    for r in range(n):
        _show_map(axes[r, 0], source_maps[r], grey_values)
        _show_map(axes[r, 1], maps[r], grey_values)
        _show(axes[r, 2], images[r])
        if r == 0:
            for c, title in enumerate(("training map", "perturbed map", "generated")):
                axes[r, c].set_title(title, fontsize=7)
    if n == 0:
        axes[0, 0].axis("off")
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
        flat[c].tick_params(labelsize=6)
    for ax in flat[len(names):]:
        ax.axis("off")
    flat[0].legend(fontsize=6)
    fig.tight_layout()
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
                    paths["perturbed"])
    z_draws(samples_npz, paths["z_draws"])
    organ_histograms(samples_npz, paths["organ_histograms"])
    return list(paths.values())
