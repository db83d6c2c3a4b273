"""Truncation sweep of a StyleGAN2 generator: the same z at several psi (report 004's figures).

w_psi = w_avg + psi (w - w_avg): psi 0 gives G's mean image for every z, psi 1 the untruncated
sample; the columns show how much of the variety the truncation trick trades for typicality.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.latent.truncation")


@torch.no_grad()
def truncation_sweep(sampler, psis: list[float], n_rows: int, seed: int) -> np.ndarray:
    """(n_rows, len(psis), S, S) images in [0, 1]: row r is one z, column c its image at psis[c]."""
    from pipeline.latent.invert import render

    z = torch.randn(n_rows, int(sampler.z_dim), generator=torch.Generator().manual_seed(seed))
    columns = [render(sampler, sampler.mapping(z, truncation_psi=float(psi)).cpu()) for psi in psis]
    return np.stack(columns, axis=1)


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.devices import resolve_device
    from pipeline.models.stylegan2_encoder import load_frozen_generator

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m pipeline.latent.truncation", description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path, required=True)
    parser.add_argument("--psis", type=float, nargs="+", required=True)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda: where G runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        generator = load_frozen_generator(args.generator, resolve_device(args.device))
        images = truncation_sweep(generator, args.psis, args.rows, args.seed)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    fig, axes = plt.subplots(args.rows, len(args.psis), figsize=(1.6 * len(args.psis), 1.7 * args.rows), squeeze=False)
    for r in range(args.rows):
        for c, psi in enumerate(args.psis):
            axes[r][c].imshow(images[r, c], cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(f"psi {psi:g}", fontsize=8)
    fig.suptitle("Truncation sweep: one z per row", fontsize=8)
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
