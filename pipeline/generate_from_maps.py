"""New anatomy: N images generated from perturbed label maps, with a recorded seed (report 003, 2.3).

The report grows an annotated set many-fold: every generated image comes with its map, and
perturbing the maps' boundaries (pipeline.preprocess.perturb_maps.perturb_map_checked, knobs from
params.yaml map_perturbation: smooth elastic deformation and per-organ dilation / erosion that
keep every organ present and connected; a map it cannot perturb so within its tries is kept as
it is, and counted) gives
anatomy no patient had. Source maps are taken in turn (map i mod M of the source set, i.e. the
training maps, the annotated set being grown), perturbed with one numpy Generator seeded with
``seed``, and sent through the trained generator in chunks of ``batch_size`` maps, chunk k with
seed ``seed + k`` (so the images do not depend on anything but the seed and the batch size).

The evaluation (pipeline.evaluate.tasks.map_to_image) calls these functions and writes the set it
scores (results/<experiment>/generated/perturbed.npz + a PNG sheet), so that a new style weight
reruns training and evaluation only; the CLI grows a set from any model and maps:

python -m pipeline.generate_from_maps --model models/seg2ct_style/model.pt \
    --maps data/slices/ct_thorax/train.npz --n-generated 100 --seed 0 --out grown.npz --sheet grown.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.generate_from_maps")


def perturbed_maps(source_maps: np.ndarray, n_maps: int, seed: int, knobs: dict
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_maps, H, W) uint8 perturbed maps, each one's source map index, and whether perturb_map fell
    back to the unperturbed map (no perturbation within its tries kept every organ)."""
    source_index = np.arange(n_maps) % len(source_maps)
    if n_maps == 0:
        return np.zeros((0, *source_maps.shape[1:]), np.uint8), source_index, np.zeros(0, bool)
    from pipeline.preprocess.perturb_maps import perturb_map_checked

    rng = np.random.default_rng(seed)
    results = [perturb_map_checked(source_maps[i].astype(np.uint8), rng, **knobs) for i in source_index]
    maps = np.stack([np.asarray(r.label_map, np.uint8) for r in results])
    return maps, source_index, np.array([r.fallback for r in results], bool)


def generate(model, maps: np.ndarray, seed: int, batch_size: int) -> np.ndarray:
    """(n, H, W) float32 images of ``model.generate`` for the maps, chunk k seeded with seed + k, checked."""
    chunks = []
    for k, start in enumerate(range(0, len(maps), batch_size)):
        batch = np.ascontiguousarray(maps[start : start + batch_size], np.uint8)
        images = np.asarray(model.generate(batch, seed=seed + k), np.float32)
        if images.shape != batch.shape:
            raise PipelineError(f"the generator returned shape {images.shape} for maps of shape {batch.shape}")
        chunks.append(images)
    images = np.concatenate(chunks) if chunks else np.zeros(maps.shape, np.float32)
    if images.size and (not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0):
        raise PipelineError("the generator returned values outside [0, 1] or not finite")
    return images


def write_generated(target: Path, images: np.ndarray, maps: np.ndarray, source_index: np.ndarray,
                    source_subjects: np.ndarray, seed: int, knobs: dict, hu_window: np.ndarray | None,
                    fallback: np.ndarray) -> None:
    """The grown set in the slices contract (images, label_maps, subject_ids = source patient), plus provenance."""
    arrays = {
        "images": images.astype(np.float32),
        "label_maps": maps.astype(np.uint8),
        "subject_ids": np.asarray(source_subjects).astype(str)[source_index],
        "slice_index": np.arange(len(images), dtype=np.int64),
        "source_index": source_index.astype(np.int64),
        "perturbation_fell_back": np.asarray(fallback, bool),
        "seed": np.array(seed, np.int64),
        "perturb": np.array(json.dumps(knobs, sort_keys=True)),
    }
    if hu_window is not None:
        arrays["hu_window"] = np.asarray(hu_window, np.float32)
    with atomic_path(target) as tmp:
        np.savez_compressed(tmp, **arrays)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.generate_from_maps", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="trained map-to-image model.pt")
    parser.add_argument("--maps", type=Path, required=True, help="slices npz whose label_maps are perturbed")
    parser.add_argument("--n-generated", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--perturb-json", default="{}", help="map_perturbation knobs as a JSON object")
    parser.add_argument("--out", type=Path, required=True, help="npz to write")
    parser.add_argument("--sheet", type=Path, help="PNG sheet of perturbed maps and their images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from pipeline.evaluate.measures.slices import load_map_slices
    from pipeline.models import load_trained

    try:
        knobs = json.loads(args.perturb_json)
        source = load_map_slices(args.maps)
        model = load_trained(args.model)
        maps, source_index, fallback = perturbed_maps(source["label_maps"], args.n_generated, args.seed, knobs)
        images = generate(model, maps, args.seed, args.batch_size)
        write_generated(args.out, images, maps, source_index, source["subject_ids"], args.seed, knobs,
                        source.get("hu_window"), fallback)
        if args.sheet is not None:
            from pipeline.evaluate.tasks.map_to_image_figures import perturbed_sheet
            from pipeline.preprocess.thorax_labels import GREY_VALUES

            perturbed_sheet(source["label_maps"][source_index], maps, images, GREY_VALUES, args.sheet)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    log.info("%d images from perturbed maps (seed %d; %d maps left unperturbed after perturb_map's tries) -> %s",
             len(images), args.seed, int(fallback.sum()), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
