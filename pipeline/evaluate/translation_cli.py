"""Translation evaluator CLI: python -m pipeline.evaluate --model M --test-a A --test-b B --out metrics.json ...

(``python -m pipeline.evaluate`` hands a translator's model.pt here, see pipeline/evaluate/__main__.py.)
Evaluates a trained translator on both test sets and validates the metrics; optionally draws
the figures (triplets, sample grid, difference maps, histograms, metrics table, loss curves);
writes metrics.json last (so asking for it builds the rest); then optionally logs the finite
metrics and the files to the training's MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.evaluate import flatten_metrics, validate_metrics, write_metrics
from pipeline.hashing import file_sha256
from pipeline.evaluate.intervals import IntervalPolicy
from pipeline.evaluate.translation import evaluate_translation

log = logging.getLogger("pipeline.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="trained model.pt (pipeline.models.load_trained)"
    )
    parser.add_argument("--test-a", type=Path, required=True, help="test.npz of domain a")
    parser.add_argument("--test-b", type=Path, required=True, help="test.npz of domain b")
    parser.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    parser.add_argument(
        "--inception-weights", type=Path, required=True, help="pt_inception-2015-12-05-6726825d.pth"
    )
    parser.add_argument(
        "--samples-out", type=Path, help="samples.npz (fixed examples) for the triplet figure"
    )
    parser.add_argument("--per-image-out", type=Path, help="npz of every per-image value (bootstrap input)")
    parser.add_argument(
        "--direction-names", nargs=2, default=["ct_to_mri", "mri_to_ct"], metavar=("A_TO_B", "B_TO_A")
    )
    parser.add_argument(
        "--modalities", nargs=2, default=["ct", "mri"], metavar=("A", "B"), help="modality of a and b"
    )
    parser.add_argument(
        "--ct-window",
        nargs=2,
        type=float,
        metavar=("CENTER", "WIDTH"),
        help="HU window the CT slices were made with; omit when each series used its own (no MAE in HU then)",
    )
    parser.add_argument(
        "--mri-percentiles", nargs=2, type=float, default=[0.5, 99.5], metavar=("LOW", "HIGH")
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fid-eps", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-figure-examples", type=int, default=4, help="fixed test images per direction")
    parser.add_argument("--classifier", type=Path, help="classifier.pt (pipeline.evaluate.classifier)")
    parser.add_argument("--skip-frd", action="store_true", help="leave FRD null (PyRadiomics ~0.4 s an image)")
    parser.add_argument("--frd-max-images", type=int, default=200, help="evenly spaced images per set in FRD")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of per-image intervals")
    parser.add_argument("--min-subjects", type=int, default=8,
                        help="an interval over fewer subjects per set is null with the reason")
    parser.add_argument("--stego-blur-sigma", type=float, default=1.0, help="Gaussian blur of G(x), pixels")
    parser.add_argument("--stego-noise-sigma", type=float, default=0.02, help="Gaussian noise on G(x), [0,1] units")
    parser.add_argument("--stego-max-drop", type=float, default=0.1, help="cycle-SSIM drop that raises the flag")
    parser.add_argument("--histogram-bins", type=int, default=64)
    parser.add_argument("--diff-upscale-size", type=int, default=256, help="bicubic size of the difference maps")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--triplets", type=Path, help="also draw the triplet figure here (needs --samples-out)"
    )
    parser.add_argument(
        "--labels", nargs=2, default=["CT", "T2 MRI"], metavar=("A", "B"), help="domain names in figures"
    )
    parser.add_argument("--sample-grid", type=Path, help="draw real vs translated samples here (needs --samples-out)")
    parser.add_argument("--difference-maps", type=Path, help="draw |G(x) - x| maps here (needs --samples-out)")
    parser.add_argument("--histograms", type=Path, help="draw intensity histograms here (needs --samples-out)")
    parser.add_argument("--metrics-table", type=Path, help="draw the headline metrics as a table image here")
    parser.add_argument("--history", type=Path, help="training history.csv, for --loss-curves")
    parser.add_argument("--loss-curves", type=Path, help="also draw the loss curves here (needs --history)")
    parser.add_argument(
        "--extra-figures", type=Path, nargs="*", default=[], help="more files to log to MLflow"
    )
    parser.add_argument(
        "--run-json", type=Path, help="run.json of the training run: log metrics to its MLflow run"
    )
    args = parser.parse_args(argv)
    for flag in ("triplets", "sample_grid", "difference_maps", "histograms"):
        if getattr(args, flag) is not None and args.samples_out is None:
            parser.error(f"--{flag.replace('_', '-')} needs --samples-out")
    if (args.loss_curves is None) != (args.history is None):
        parser.error("--loss-curves and --history go together")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from pipeline import figures
    from pipeline.evaluate import load_for_evaluation, resolve_device

    args.device = resolve_device(args.device)
    try:
        model = load_for_evaluation(args.model, args.device, "translation", "a translator")
        metrics = evaluate_translation(
            model,
            args.test_a,
            args.test_b,
            inception_weights=args.inception_weights,
            directions={"a_to_b": args.direction_names[0], "b_to_a": args.direction_names[1]},
            modalities={"a": args.modalities[0], "b": args.modalities[1]},
            ct_window=None if args.ct_window is None else tuple(args.ct_window),
            mri_percentiles=tuple(args.mri_percentiles),
            batch_size=args.batch_size,
            fid_eps=args.fid_eps,
            seed=args.seed,
            n_figure_examples=args.n_figure_examples,
            device=args.device,
            samples_out=args.samples_out,
            per_image_out=args.per_image_out,
            classifier=args.classifier,
            frd=not args.skip_frd,
            frd_max_images=args.frd_max_images,
            intervals_policy=IntervalPolicy(min_subjects=args.min_subjects, n_boot=args.n_boot, seed=args.seed),
            stego_blur_sigma=args.stego_blur_sigma,
            stego_noise_sigma=args.stego_noise_sigma,
            stego_max_drop=args.stego_max_drop,
            histogram_bins=args.histogram_bins,
        )
        metrics["model"] = {"path": str(args.model), "sha256": file_sha256(args.model)}
        validate_metrics(metrics)
        labels = tuple(args.labels)
        if args.triplets is not None:
            figures.triplets(args.samples_out, args.triplets, labels=labels)
        if args.sample_grid is not None:
            figures.sample_grid(args.samples_out, args.sample_grid, labels=labels)
        if args.difference_maps is not None:
            figures.difference_maps(args.samples_out, args.difference_maps, labels, args.diff_upscale_size)
        if args.histograms is not None:
            figures.intensity_histograms(args.samples_out, args.histograms, labels=labels)
        if args.metrics_table is not None:
            figures.metrics_table(metrics, args.metrics_table)
        if args.loss_curves is not None:
            figures.loss_curves(args.history, args.loss_curves)
        write_metrics(args.out, metrics)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    for name in metrics["direction_names"]:
        block, fid = metrics[name], metrics[name]["fid"]
        frd = block["frd"]
        log.info(
            "%s: SSIM %.3f, cycle SSIM %.3f, FID %s, FRD %s",
            name,
            block["ssim"]["mean"],
            block["ssim_cycle"]["mean"],
            f"{fid['value']:.2f}" if fid["value"] is not None else f"null ({fid['reason']})",
            f"{frd['value']:.2f}" if frd["value"] is not None else f"null ({frd['reason']})",
        )
        if block["steganography"]["flagged"]:
            log.warning("%s: cycle SSIM drops by more than %g when G(x) is blurred or noised: the generator "
                        "may hide the source in imperceptible signal", name, block["steganography"]["max_drop"])
    if args.run_json is not None:
        from pipeline.tracking import log_evaluation

        outputs = (
            args.out, args.samples_out, args.per_image_out, args.triplets, args.sample_grid,
            args.difference_maps, args.histograms, args.metrics_table, args.loss_curves,
        )
        artifacts = [path for path in outputs if path is not None] + list(args.extra_figures)
        log_evaluation(args.run_json, flatten_metrics(metrics), artifacts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
