"""Kermany et al. 2018 paediatric chest X-rays (Mendeley Data): ChestXRay2017.zip with
``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``.

Any chest X-ray set laid out as class folders (optionally inside split folders) is read the
same way by ``ingest_class_folders``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.sources.archives import is_junk
from pipeline.sources.real_datasets import (
    SOURCE_URLS,
    DownloadOptions,
    ImageEntry,
    build_image_folders,
    choose_subset,
    fetch_and_ingest,
    opened_source,
    safe_id,
    unique_entries,
)

KERMANY_REMOTE_NAME = "file_downloaded"  # Mendeley's download path under the file's URL
KERMANY_ARCHIVE = "ChestXRay2017.zip"
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def fetch_kermany_cxr(
    out_dir: str | Path, *, base_url: str | None = None, options: DownloadOptions = DownloadOptions()
) -> Path:
    """Download ChestXRay2017.zip (about 1.2 GB, 5,856 images) and lay out its NORMAL / PNEUMONIA
    images (``options.n_subjects`` counts images).

    base_url: the Mendeley file URL, without the trailing /file_downloaded
        (default SOURCE_URLS["kermany_cxr"]).
    """
    url = f"{(base_url or SOURCE_URLS['kermany_cxr']).rstrip('/')}/{KERMANY_REMOTE_NAME}"
    return fetch_and_ingest(out_dir, url, KERMANY_ARCHIVE, ingest_class_folders, options)


def ingest_class_folders(source: Path, out: Path, *, n_subjects: int | None = None, seed: int = 0) -> None:
    """Lay out images found as ``[<split>/]<label>/<image>`` in ``source`` (folder or archive)."""
    with opened_source(source, out) as (folder, movable):
        images = unique_entries(source, find_class_images(folder))
        if not images:
            raise InputDataError(
                source, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) inside class folders"
            )
        build_image_folders(out, [images[i] for i in choose_subset(images, n_subjects, seed)], move=movable)


def find_class_images(folder: Path) -> list[ImageEntry]:
    """Every image in a class folder; the folder above it names the split when it is train/val/test."""
    entries = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.suffix.lower() not in IMAGE_SUFFIXES or is_junk(relative) or len(relative.parts) < 2:
            continue
        split = SPLIT_NAMES.get(path.parent.parent.name.lower(), "") if len(relative.parts) >= 3 else ""
        image_id = safe_id(f"{split}_{path.stem}" if split else path.stem)
        entries.append(
            ImageEntry(image_id=image_id, label=safe_id(path.parent.name), split=split, source=path)
        )
    return entries
