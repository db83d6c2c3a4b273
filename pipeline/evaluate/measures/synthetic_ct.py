"""A synthetic CT scored against the real CT of the same anatomy in HU, as SynthRAD scores it.

SynthRAD (and the synthetic-CT literature it set the convention for) reports the MAE in HU over
the full HU range the data hold, inside a body mask, and PSNR over the same pixels with the
clip range as its data range. Here, per slice:

- both images are clipped to ``hu_clip`` (SynthRAD: [-1024, 3000]);
- the body mask is drawn on the real CT (``image_metrics.body_mask``: HU above the threshold,
  largest component, holes filled);
- ``mae_hu_body`` = mean |real - synthetic| over the mask; ``psnr_hu_body`` = 10 log10(range^2 /
  MSE over the mask), range = hu_clip[1] - hu_clip[0];
- when the synthetic CT can only hold a window's HU range (a translator trained on windowed
  slices), ``mae_hu_body_floor`` is the same MAE for the real CT clipped to that window: what a
  perfect translator in that window would still score, the part of ``mae_hu_body`` no windowed
  model can remove.

Per-slice values are summarised (mean over slices, subject-bootstrap interval) like every other
per-image metric; SynthRAD averages per patient volume, which weighs slices by their body area.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures.image_metrics import body_mask, mae_in_mask, psnr_in_mask
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.summary import summarise

SYNTHRAD_HU_CLIP = (-1024.0, 3000.0)
"""SynthRAD 2023 / 2025's fixed HU range: both CTs are clipped to it, PSNR's data range is its width."""


def body_mask_text(threshold_hu: float) -> str:
    return (f"per slice, on the real CT: HU > {threshold_hu:g}, the largest 4-connected component, "
            "holes filled (scipy.ndimage)")


def score_synthetic_ct(
    real_hu: np.ndarray,
    synthetic_hu: np.ndarray,
    subject_ids: np.ndarray,
    policy: IntervalPolicy,
    hu_clip: tuple[float, float],
    threshold_hu: float,
    synthetic_note: str,
    window_range_hu: tuple[float, float] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The block of metrics.json (module docstring) and its per-image values.

    real_hu, synthetic_hu: (N, H, W) in HU; synthetic_note: how the synthetic CT came to HU (and
    the range it can hold); window_range_hu: that range when it is a window's (gives the floor).
    """
    low, high = (float(v) for v in hu_clip)
    if not low < high:
        raise ValueError(f"hu_clip must be [low, high] with low < high, got {list(hu_clip)}")
    real = np.clip(np.asarray(real_hu, np.float64), low, high)
    synthetic = np.clip(np.asarray(synthetic_hu, np.float64), low, high)
    masks = body_mask(real, threshold_hu)
    has_body = masks.any(axis=(1, 2))
    subjects = np.asarray(subject_ids)[has_body]
    per_image = {  # one value per slice, NaN for a slice without body
        "mae_hu_body": mae_in_mask(real, synthetic, masks),
        "psnr_hu_body": psnr_in_mask(real, synthetic, masks, high - low),
        "body_fraction": masks.mean(axis=(1, 2)),
    }
    summary = lambda values: summarise(values[has_body], subjects, policy)
    block = {
        "compares": "synthetic CT vs the real CT of the same anatomy, in HU, inside the real CT's body mask",
        "synthetic_ct": synthetic_note,
        "hu_clip": [low, high],
        "body_mask": body_mask_text(threshold_hu),
        "body_threshold_hu": float(threshold_hu),
        "body_fraction": float(per_image["body_fraction"].mean()),
        "n_without_body": int((~has_body).sum()),
        "mae_hu_body": summary(per_image["mae_hu_body"])
        | {"definition": "per slice: mean |real - synthetic| HU over the body mask, both clipped to hu_clip"},
        "psnr_hu_body": summary(per_image["psnr_hu_body"])
        | {"data_range": high - low,
           "definition": "per slice, dB: 10 log10(data_range^2 / mean squared HU error over the body mask)"},
        "mae_hu_body_floor": None,
        "mae_hu_body_floor_reason": "the synthetic CT is not confined to a window",
    }
    if window_range_hu is not None:
        in_window = np.clip(real, *window_range_hu)
        per_image["mae_hu_body_floor"] = mae_in_mask(real, in_window, masks)
        block["mae_hu_body_floor"] = summary(per_image["mae_hu_body_floor"]) | {
            "window_range_hu": [float(v) for v in window_range_hu],
            "definition": "the same MAE for the real CT clipped to the window: what a perfect translator confined "
            "to the window would still score (bone, air and fat lie outside a brain window)",
        }
        block["mae_hu_body_floor_reason"] = None
    return block, per_image
