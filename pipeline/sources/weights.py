"""Pretrained weights as pipeline inputs: torchvision's ImageNet ResNet-18 / VGG-19 and the FID Inception.

Each file is checked before it is kept: against checksums.json's full SHA-256 when there is one,
else against the sum recorded in ``<out_dir>/.sha256`` at its first download, else against the
SHA-256 prefix embedded in its name (torch.hub's ``<name>-<hash prefix>.pth`` convention). Users
who already have the files point ``local_dir`` at them; they are verified, then copied.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.hashing import file_sha256
from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.http_fetch import (
    DEFAULT_SETTINGS,
    ChecksumError,
    FetchSettings,
    fetch,
    sha256_matches,
)
from pipeline.sources.real_datasets import SOURCE_URLS, SUMS_FILE, published_sha256, read_sums, write_sums

log = logging.getLogger(__name__)

# key -> (SOURCE_URLS entry, file name); the names are the ones torchvision / pytorch-fid use.
WEIGHT_FILES = {
    "resnet18": ("torchvision", "resnet18-f37072fd.pth"),
    "vgg19": ("torchvision", "vgg19-dcbb9e9d.pth"),
    "inception": ("pytorch_fid", "pt_inception-2015-12-05-6726825d.pth"),
}
PRETRAINED_CHOICES = ("imagenet", "none")
HUB_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def name_sha256_prefix(filename: str) -> str:
    """The SHA-256 prefix torch.hub file names carry (``resnet18-f37072fd.pth`` -> ``f37072fd``)."""
    match = HUB_HASH_PREFIX.search(filename)
    if match is None:
        raise ValueError(f"{filename!r} carries no SHA-256 prefix (<name>-<hex>.<ext>)")
    return match.group(1)


def fetch_weights(
    out_dir: str | Path,
    which: Sequence[str] = tuple(WEIGHT_FILES),
    *,
    pretrained: str = "imagenet",
    local_dir: str | Path | None = None,
    torchvision_base_url: str | None = None,
    fid_base_url: str | None = None,
    settings: FetchSettings = DEFAULT_SETTINGS,
) -> dict[str, Path]:
    """Put the verified weight files named by ``which`` in ``out_dir``; return key -> path.

    pretrained: "imagenet" fetches them; "none" fetches nothing (training starts from random
        initialisation and records it).
    local_dir: a folder already holding the files (same names); nothing is downloaded then.
    torchvision_base_url / fid_base_url: override SOURCE_URLS["torchvision"] / ["pytorch_fid"].
    """
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(f"pretrained must be one of {PRETRAINED_CHOICES}, got {pretrained!r}")
    unknown = sorted(set(which) - set(WEIGHT_FILES))
    if unknown:
        raise ConfigError(f"unknown weights {unknown}; choose from {sorted(WEIGHT_FILES)}")
    if pretrained == "none":
        log.info("pretrained: none, so no weights are fetched")
        return {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = read_sums(out_dir / SUMS_FILE)
    base_urls = {
        "torchvision": (torchvision_base_url or SOURCE_URLS["torchvision"]).rstrip("/"),
        "pytorch_fid": (fid_base_url or SOURCE_URLS["pytorch_fid"]).rstrip("/"),
    }
    paths = {}
    for key in which:
        origin, filename = WEIGHT_FILES[key]
        expected = published_sha256(filename) or record.get(filename) or name_sha256_prefix(filename)
        target = out_dir / filename
        if local_dir:
            record[filename] = _copy_verified(Path(local_dir) / filename, target, expected)
        else:
            record[filename] = fetch(
                f"{base_urls[origin]}/{filename}", target, sha256=expected, settings=settings
            )
        paths[key] = target
    write_sums(out_dir / SUMS_FILE, record)
    return paths


def _copy_verified(source: Path, target: Path, expected: str) -> str:
    if not source.is_file():
        raise InputDataError(source, "missing: put the weight file there, or unset local_dir to download it")
    digest = file_sha256(source)
    if not sha256_matches(digest, expected):
        raise ChecksumError(
            f"{source}: SHA-256 {digest} is not the expected {expected}; not the published file"
        )
    if source.resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    log.info("%s: verified (sha256 %s)", target, digest)
    return digest
