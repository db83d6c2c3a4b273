from __future__ import annotations

import sys
import types
from pathlib import Path

import matplotlib.image
import nibabel as nib
import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage
import pandas as pd
import pytest
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from pipeline import figures
from pipeline.errors import InputDataError


def assert_real_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.stat().st_size > min_bytes
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.05  # not a blank canvas
    assert not list(path.parent.glob(".*.tmp*"))  # nothing half-written left behind


def phantom_slices(n: int, size: int = 64) -> np.ndarray:
    base = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return np.stack([np.roll(base, shift, axis=1) for shift in range(n)]).astype(np.float32)


def test_triplets(tmp_path):
    slices = phantom_slices(3)
    samples = tmp_path / "samples.npz"
    np.savez(
        samples,
        a_to_b_source=slices,
        a_to_b_translated=1 - slices,
        a_to_b_reconstructed=slices,
        a_to_b_subject_ids=np.array(["ph1", "ph1", "ph2"]),
        b_to_a_source=slices[:2],
        b_to_a_translated=slices[:2] ** 2,
        b_to_a_reconstructed=slices[:2],
        b_to_a_subject_ids=np.array(["ixi1", "ixi2"]),
    )
    out = tmp_path / "figs" / "triplets.png"
    figures.triplets(samples, out, labels=("CT", "T2 MRI"))
    assert_real_png(out)
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > 1.5 * height  # six columns, three rows

    np.savez(samples, a_to_b_source=slices)
    with pytest.raises(InputDataError, match="missing arrays"):
        figures.triplets(samples, out)


def test_loss_curves(tmp_path):
    epochs = np.repeat(np.arange(1, 11), 4)
    history = pd.DataFrame(
        {
            "epoch": epochs,
            "step": np.arange(len(epochs)),
            "loss_g": 5.0 / epochs,
            "loss_d": 0.5 + 0.01 * np.sin(np.arange(len(epochs))),
            "loss_cycle_ssim": 0.001 * np.exp(-epochs / 3),
        }
    )
    csv = tmp_path / "history.csv"
    history.to_csv(csv, index=False)
    out = tmp_path / "loss_curves.png"
    figures.loss_curves(csv, out)
    assert_real_png(out)
    with pytest.raises(InputDataError, match="no loss columns"):
        history[["epoch", "step"]].to_csv(csv, index=False)
        figures.loss_curves(csv, out)


def test_log_scale_only_when_losses_span_orders_of_magnitude():
    assert figures.wants_log_scale(np.array([[5.0, 0.001], [1.0, 0.0005]]), log_ratio=100)
    assert not figures.wants_log_scale(np.array([[1.0, 0.5], [0.8, 0.4]]), log_ratio=100)
    assert not figures.wants_log_scale(
        np.array([[-1.0, 500.0], [0.1, 1.0]]), log_ratio=100
    )  # WGAN can go < 0


def ras_volume_with_markers(shape=(40, 48, 20)) -> np.ndarray:
    """RAS+ volume: bright at high i (patient right) + high j (anterior) on the mid axial slice."""
    volume = np.zeros(shape, np.float32)
    volume[30:, 38:, :] = 1.0  # right-anterior corner
    volume[:6, :6, :] = 0.5  # left-posterior corner
    return volume


def test_axial_display_puts_anterior_up_and_patient_left_on_the_right():
    shown = figures.axial_display(ras_volume_with_markers())
    assert shown.shape == (48, 40)  # rows = anterior-posterior, columns = right-left
    assert shown[0, 0] == 1.0  # top-left: anterior, patient right
    assert shown[-1, -1] == 0.5  # bottom-right: posterior, patient left


def test_preprocessing_panel_from_stage_files(tmp_path, monkeypatch):
    volume = ras_volume_with_markers()
    volume[10:30, 10:38, :] = 0.7
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    paths = {}
    for stage in ("windowed", "registered", "masked"):
        paths[stage] = tmp_path / f"{stage}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), paths[stage])
    hu = volume * 80.0 - 20.0  # 0 -> -20 HU, 1 -> 60 HU

    def load_ct_hu(subject_dir):
        assert subject_dir == tmp_path / "raw" / "CQ500-CT-1"
        return nib.Nifti1Image(hu, affine)

    window_stub = types.SimpleNamespace(load_ct_hu=load_ct_hu, load_mri=None)
    monkeypatch.setitem(sys.modules, "pipeline.preprocess.window", window_stub)
    stages = figures.subject_stages(
        "ct", raw=tmp_path / "raw" / "CQ500-CT-1", **paths, ct_display_window=(40, 80)
    )
    assert [name for name, _ in stages] == ["raw (HU, window 40/80)", "windowed", "registered", "masked"]
    raw = stages[0][1]
    assert raw.min() == 0.0 and raw[0, 0] == pytest.approx(0.75)  # 60 HU in the 0..80 HU window
    assert raw[-1, -1] == pytest.approx(0.25)  # 20 HU
    out = tmp_path / "panel.png"
    figures.preprocessing_panel(stages, out, title="CQ500-CT-1 (CT)")
    assert_real_png(out)
    with pytest.raises(InputDataError, match="masked image not found"):
        figures.subject_stages("ct", masked=tmp_path / "absent.nii.gz")


def test_raw_mr_stage_through_the_windowing_loader(tmp_path):
    """Raw MR is read by pipeline.preprocess.window.load_mri (RAS+), shown between its percentiles."""
    volume = ras_volume_with_markers() * 1000.0
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored LAS: the loader must reorient to RAS+
    raw = tmp_path / "IXI-T2" / "IXI001-T2.nii.gz"
    raw.parent.mkdir()
    nib.save(nib.Nifti1Image(volume[::-1].copy(), flipped_affine), raw)
    ((name, shown),) = figures.subject_stages("mr", raw=raw, mri_display_percentiles=(0.0, 100.0))
    assert name == "raw" and shown.shape == (48, 40)
    assert shown[0, 0] == 1.0 and shown[-1, -1] == 0.5  # anterior-right top-left after reorientation


def test_cli_triplets(tmp_path):
    slices = phantom_slices(2)
    samples = tmp_path / "samples.npz"
    arrays = {
        f"{way}_{key}": slices
        for way in ("a_to_b", "b_to_a")
        for key in ("source", "translated", "reconstructed")
    }
    np.savez(samples, **arrays)
    assert figures.main(["triplets", "--samples", str(samples), "--out", str(tmp_path / "t.png")]) == 0
    assert_real_png(tmp_path / "t.png")
    assert (
        figures.main(
            ["triplets", "--samples", str(tmp_path / "absent.npz"), "--out", str(tmp_path / "u.png")]
        )
        == 1
    )
    assert not (tmp_path / "u.png").exists()


def evaluation_samples(tmp_path, with_mask: bool) -> Path:
    slices = phantom_slices(3, size=32)
    edges = np.linspace(0, 1, 17)
    arrays = {"hist_edges": edges}
    for way in ("a_to_b", "b_to_a"):
        arrays |= {
            f"{way}_source": slices,
            f"{way}_translated": np.clip(slices * 0.7 + 0.1, 0, 1),
            f"{way}_real_target": slices[::-1],
            f"{way}_hist_real_target": np.histogram(slices, bins=edges)[0],
            f"{way}_hist_translated": np.histogram(slices * 0.7 + 0.1, bins=edges)[0],
        }
        if with_mask:
            mask = np.zeros(slices.shape, bool)
            mask[:, 8:24, 8:24] = True
            arrays[f"{way}_region_mask"] = mask
    path = tmp_path / "samples.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("with_mask", [False, True])
def test_difference_maps_are_upscaled_with_a_colour_bar(tmp_path, with_mask):
    samples = evaluation_samples(tmp_path, with_mask)
    out = tmp_path / "difference_maps.png"
    figures.difference_maps(samples, out, labels=("NORMAL", "PNEUMONIA"), upscale_size=128)
    assert_real_png(out)
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > height  # three examples in four columns (signed and absolute, both ways), colour bars below


@pytest.mark.parametrize("display_size", [None, 256])
def test_mask_outline_lands_on_the_mask_not_its_mirror_image(display_size):
    """An L-shaped mask in the top-left quarter of a 32x32 grid: every vertex of the drawn outline,
    mapped back to the mask's grid, lies on the mask's boundary (within half a native pixel), so an
    outline drawn upside down (over the bottom-left), mirrored or shifted fails."""
    mask = np.zeros((32, 32), bool)
    mask[2:14, 3:7] = True   # the L's stem, top left
    mask[10:14, 3:12] = True  # its foot
    fig, ax = plt.subplots()
    shown = display_size or 32
    ax.imshow(np.zeros((shown, shown)), cmap="gray")
    contours = figures.outline_mask(ax, mask, display_size)
    vertices = np.concatenate([path.vertices for path in contours.get_paths() if len(path.vertices)])
    plt.close(fig)
    # Shown-image pixel coordinates -> the mask's (row, col) grid: native centre i sits at (i + 0.5) * s / n - 0.5.
    scale = shown / 32
    cols, rows = (vertices[:, 0] + 0.5) / scale - 0.5, (vertices[:, 1] + 0.5) / scale - 0.5
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
    outside_edge = ndimage.binary_dilation(mask) & ~mask
    edge_rows, edge_cols = np.nonzero(boundary | outside_edge)
    nearest = np.min(np.hypot(rows[:, None] - edge_rows[None], cols[:, None] - edge_cols[None]), axis=1)
    assert nearest.max() <= 0.75
    assert rows.min() >= 1.0 and rows.max() <= 14.0 and cols.min() >= 2.0 and cols.max() <= 12.0
    # The foot (rows 10-13) reaches column 11; the stem alone (rows 2-9) does not pass column 7.
    assert cols[rows < 9].max() <= 7.0 and cols[(rows > 10) & (rows < 13)].max() >= 11.0


def test_sample_grid_and_histograms(tmp_path):
    samples = evaluation_samples(tmp_path, with_mask=False)
    figures.sample_grid(samples, tmp_path / "grid.png")
    figures.intensity_histograms(samples, tmp_path / "hist.png")
    assert_real_png(tmp_path / "grid.png")
    assert_real_png(tmp_path / "hist.png", min_bytes=5_000)
    np.savez(samples, a_to_b_source=np.zeros((1, 4, 4)))
    with pytest.raises(InputDataError, match="missing arrays"):
        figures.sample_grid(samples, tmp_path / "grid.png")


def test_metrics_table_shows_values_with_intervals():
    summary = lambda mean, ci: {"mean": mean, "ci95": ci}
    block = {
        "fid": {"value": None, "ci95": None},
        "kid": {"value": None, "ci95": None},
        "frd": {"value": 2.5, "ci95": [2.0, 3.25]},
        "ssim": summary(0.81, [0.8, 0.82]),
        "ssim_cycle": summary(0.9, None),
        "paired": None,
        "classifier": {"reason": "no classifier given"},
        "steganography": {"blur": {"drop": 0.2}, "noise": {"drop": 0.01}, "flagged": True},
        "regions": {"share_inside": 0.75, "ci95_inside": [0.7, 0.8], "excess_share": summary(0.25, [0.2, 0.3])},
        "floor": {"frd": {"value": 1.25, "ci95": [1.0, 1.5]}, "fid": {"value": None}},
    }
    header, rows = figures.metrics_rows({"direction_names": ["a_to_b"], "a_to_b": block})
    table = {row[0]: row[1] for row in rows}
    assert header == ["metric", "a_to_b"]
    assert table["FID"] == "n/a" and table["FRD (ln)"] == "2.50 [2.00, 3.25]"
    assert table["SSIM(x, G(x))"] == "0.810 [0.800, 0.820]" and table["cycle SSIM"] == "0.900"
    assert table["paired SSIM"] == "n/a" and table["classifier: share intended"] == "n/a"
    assert table["stego drop (blur / noise)"] == "0.200 / 0.010 FLAG"
    assert table["change inside region"] == "0.750 [0.700, 0.800]"
    assert table["  FRD floor (real vs real)"] == "1.25 [1.00, 1.50]" and table["  FID floor (real vs real)"] == "n/a"
    assert table["  inside share - area share"] == "0.250 [0.200, 0.300]"
