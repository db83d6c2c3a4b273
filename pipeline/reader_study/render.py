"""One rendering for every image of a study, and the page readers open.

Fairness: real and generated images take exactly the same path: the grey-level window
(``display_window``, on the stored [0, 1] values), one bilinear resampling to the display size
(height ``display_size``, width by the aspect ratio), rounding to 8 bits, and Pillow's PNG
encoder at one compression level with no ancillary chunk (no text, time, gamma or size
metadata). The page names images by random tokens and shows them in the shuffled order; it
is built only from (token, PNG) pairs, the counts and the display settings, so no truth can
reach it. The same inputs give the same bytes (PNG and HTML) with the same Pillow and zlib.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.reader_study import ANSWER_COLUMNS, CONFIDENCE_LEVELS

PAGE_TEMPLATE = Path(__file__).with_name("page.html")
#: zlib level of every PNG (one level for all images, so file sizes carry only content).
PNG_COMPRESS_LEVEL = 9
GREY_LEVELS = 255


def display_shape(native: tuple[int, int], display_size: int) -> tuple[int, int]:
    """(height, width) shown: height ``display_size``, width keeping the aspect ratio."""
    height, width = native
    return display_size, max(1, round(display_size * width / height))


def render_png(image: np.ndarray, display_size: int, window: tuple[float, float]) -> bytes:
    """One (H, W) image in [0, 1] as the PNG every reader sees."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ConfigError(f"reader_study.display_window must rise, got {list(window)}")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"an image is (H, W), got shape {image.shape}")
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0).astype(np.float32)
    height, width = display_shape(scaled.shape, display_size)
    resized = np.asarray(Image.fromarray(scaled).resize((width, height), Image.Resampling.BILINEAR))
    grey = np.clip(np.rint(resized * GREY_LEVELS), 0, GREY_LEVELS).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _item_html(position: int, n_images: int, token: str, png: bytes, shape: tuple[int, int], confidence: bool) -> str:
    token = html.escape(token, quote=True)
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    lines = [
        f'<section class="item" id="item-{position}" data-image-id="{token}" data-position="{position}">',
        f"  <h2>Image {position} of {n_images}</h2>",
        f'  <img src="{src}" width="{shape[1]}" height="{shape[0]}" alt="Image {position}">',
        '  <fieldset class="answer"><legend>Answer</legend>',
        f'    <label><input type="radio" name="answer-{token}" value="real"> real</label>',
        f'    <label><input type="radio" name="answer-{token}" value="fake"> generated</label>',
        "  </fieldset>",
    ]
    if confidence:
        lines.append('  <fieldset class="confidence"><legend>Confidence</legend>')
        for level in CONFIDENCE_LEVELS:
            hint = {CONFIDENCE_LEVELS[0]: " (guess)", CONFIDENCE_LEVELS[-1]: " (certain)"}.get(level, "")
            lines.append(f'    <label><input type="radio" name="confidence-{token}" value="{level}"> {level}{hint}</label>')
        lines.append("  </fieldset>")
    lines.append("</section>")
    return "\n".join(lines)


def render_page(study_id: str, images: Sequence[tuple[str, bytes]], n_real: int, n_fake: int,
                display_shape_px: tuple[int, int], window: tuple[float, float], confidence: bool) -> str:
    """study.html: ``images`` are (token, PNG) in the order shown; nothing else about them enters."""
    n_images = len(images)
    items = "\n".join(_item_html(position, n_images, token, png, display_shape_px, confidence)
                      for position, (token, png) in enumerate(images, start=1))
    data = json.dumps({"study_id": study_id, "confidence": confidence, "columns": list(ANSWER_COLUMNS)},
                      sort_keys=True).replace("<", "\\u003c")
    sentence = (", and how confident you are, from 1 (a guess) to 5 (certain)." if confidence else ".")
    size = f"{display_shape_px[1]} x {display_shape_px[0]}"
    replacements = {
        "@@STUDY_ID@@": html.escape(study_id), "@@N_IMAGES@@": str(n_images), "@@N_REAL@@": str(n_real),
        "@@N_FAKE@@": str(n_fake), "@@CONFIDENCE_SENTENCE@@": sentence, "@@DISPLAY_SIZE@@": size,
        "@@WINDOW@@": f"stored values {window[0]:g} to {window[1]:g} shown black to white",
        "@@DATA@@": data, "@@ITEMS@@": items,
    }
    page = PAGE_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in replacements.items():
        page = page.replace(placeholder, value)
    return page
