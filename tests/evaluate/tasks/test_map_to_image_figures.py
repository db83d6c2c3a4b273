"""Report 003's figures: the zoom on the smallest organ shows it in its surroundings, and every
figure draws from a samples.npz as the evaluator writes it."""
from __future__ import annotations

import matplotlib.image
import numpy as np

from map_support import texture, thorax_map
from pipeline.evaluate.tasks import map_to_image_figures as figures
from pipeline.preprocess.thorax_labels import CLASS_NAMES, GREY_VALUES


def test_zoom_on_a_tiny_organ_is_a_quarter_of_the_image_around_it():
    label_map = np.zeros((64, 64), np.uint8)
    label_map[10:50, 8:56] = 1
    label_map[40:44, 30:35] = 5  # a 4 x 5 pixel spinal canal
    assert figures.smallest_organ(label_map) == 5
    rows, cols = figures.zoom_box(label_map, 5)
    assert rows.stop - rows.start == cols.stop - cols.start == 16  # a quarter of 64, square
    assert rows.start <= 40 and rows.stop >= 44 and cols.start <= 30 and cols.stop >= 35  # the organ inside
    assert abs((rows.start + rows.stop) / 2 - 42) <= 1 and abs((cols.start + cols.stop) / 2 - 32.5) <= 1  # centred


def test_zoom_stays_inside_the_image_and_grows_with_the_organ():
    label_map = np.zeros((64, 64), np.uint8)
    label_map[0:3, 60:64] = 2  # in a corner
    rows, cols = figures.zoom_box(label_map, 2)
    assert (rows.start, cols.stop) == (0, 64) and rows.stop - rows.start == 16
    label_map[:] = 0
    label_map[10:40, 10:30] = 3  # 30 x 20: the margin makes it 60 wide, more than the minimum
    rows, cols = figures.zoom_box(label_map, 3)
    assert rows.stop - rows.start == 60 and rows.start <= 10 and rows.stop >= 40
    assert figures.zoom_box(label_map, 4) == (slice(None), slice(None))  # absent: the whole image


def test_every_figure_draws_from_the_samples(tmp_path):
    rng = np.random.default_rng(0)
    maps = np.stack([thorax_map(32, rng) for _ in range(5)])
    images = np.stack([texture(m, rng) for m in maps])
    edges = np.linspace(-1000.0, 400.0, 17)
    np.savez(tmp_path / "samples.npz", organ_names=np.array(CLASS_NAMES), grey_values=np.array(GREY_VALUES),
             intensity=np.array([-1000.0, 400.0]), example_maps=maps[:2], example_content=images[:2],
             example_result=images[2:4], example_dice=np.ones((2, len(CLASS_NAMES))),
             perturbed_source_maps=maps[:2], perturbed_maps=maps[1:3], perturbed_images=images[1:3],
             diversity_maps=maps[:1], diversity_images=images[None, :3], style_image=images[4], style_map=maps[4],
             histogram_edges=edges, histograms=rng.random((len(CLASS_NAMES), 3, 16)),
             histogram_sets=np.array(["generated (test maps)", "style image", "content (real test)"]))
    (tmp_path / "generated.npz").write_bytes(b"")
    drawn = figures.draw_all(tmp_path / "samples.npz", tmp_path / "generated.npz", tmp_path / "figures")
    assert sorted(p.name for p in drawn) == sorted(f"{name}.png" for name in figures.FIGURES)
    for path in drawn:
        assert matplotlib.image.imread(path).std() > 0.05, path
