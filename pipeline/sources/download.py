"""The download stage: materialise one dataset in ``data/raw/<dataset>`` or the pretrained weights.

One source per dataset, chosen in params.yaml: the built-in ``phantom_head``,
``phantom_cxr`` (chest radiographs laid out as a Kermany download), ``phantom_chexpert`` (adult
chest radiographs in CheXpert's layout, with truth CTR and masks) and ``phantom_rsna_ich``
(haemorrhage CT slices laid out as the RSNA 2019 Kaggle data), ``phantom_tcia_thorax`` (chest CT
series with six-class label images in TCIA's layout), the real ``tcia`` (NBIA REST API), the real
``ixi_t2``, ``cq500``, ``kermany_cxr``, ``rsna_ich`` (Kaggle), the registration-gated
``chexpert`` (local archive only) and ``local`` (anything already on disk).

Every source is laid out in a private staging folder outside the repository (under the user's
cache folder, next to the downloads), pseudonymised there, and only then written into
``data/raw/<dataset>`` through pipeline.sources.deidentify: original files and headers never
enter the repository, hence never the DVC cache or remote.

    python -m pipeline.sources.download --dataset ct_head --source cq500 --out data/raw/ct_head \\
        --accept-licence --n-subjects 20
    python -m pipeline.sources.download weights --out data/weights --which resnet18 vgg19 inception
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError, PipelineError
from pipeline.privacy import SUBJECTS_TSV, load_salt, pseudonymise_raw_dataset
from pipeline.sources.cq500 import fetch_cq500
from pipeline.sources.deidentify import PIXEL_RISK_ACTIONS, deidentify_dataset
from pipeline.sources.http_fetch import DEFAULT_SETTINGS, FetchSettings
from pipeline.sources.ixi import fetch_ixi_t2
from pipeline.sources.kermany import fetch_kermany_cxr
from pipeline.sources.local import LAYOUTS, ingest_local
from pipeline.sources.real_datasets import SUMS_FILE, DownloadOptions, user_cache_root
from pipeline.sources.rsna_ich import RSNA_COMPETITION, fetch_rsna_ich
from pipeline.sources.weights import PRETRAINED_CHOICES, WEIGHT_FILES, fetch_weights

log = logging.getLogger(__name__)

DATASET_SOURCES = ("phantom_head", "phantom_cxr", "phantom_rsna_ich", "phantom_chexpert", "phantom_tcia_thorax", "ixi_t2", "cq500", "kermany_cxr", "rsna_ich", "tcia", "chexpert", "local")
#: Built-in phantoms have no patient: their UIDs are re-derived with this public salt, so their
#: raw files are the same on every machine (real data uses the private salt, pipeline.privacy).
PHANTOM_SALT = "medgan-built-in-phantom"
STAGING_FOLDER = "staging"


@contextlib.contextmanager
def staging_area(staging_dir: str | Path | None = None) -> Iterator[Path]:
    """A private (0700) scratch folder outside the repository, removed afterwards: originals are
    laid out here, never in data/raw. Default: ``<user cache>/staging`` (see user_cache_root)."""
    parent = Path(staging_dir) if staging_dir else user_cache_root() / STAGING_FOLDER
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="stage.", dir=parent))  # mkdtemp makes it 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """What a source may need to lay a dataset out; each source reads its own.

    base_url: override the source's download location (None: SOURCE_URLS).
    accept_licence: cq500 only: the user accepts CC BY-NC-SA 4.0 (default False: refused).
    local_path / layout: local and chexpert: the folder or archive on disk, and for local what it
        holds (pipeline.sources.local.LAYOUTS; default "raw").
    n_subjects: subjects / images to keep, drawn with ``seed``; None keeps all
        (phantom_head: how many to generate, required).
    cache_dir: where downloads are kept (default <user cache>/downloads/<name>, outside the repository).
    keep_archives: False deletes the downloads once the dataset is laid out.
    modality / n_paired: phantom_head's modality ("CT" or "MR") and paired test subjects.
    phantom_options: a built-in phantom's knobs (its params.yaml section); tcia: ``collection``.
    chexpert_label / chexpert_frontal_only: chexpert (and local layout chexpert) class choice.
    chexpert_keep_layout: chexpert (and local layout chexpert) keep CheXpert's own folders and
        CSVs instead of sorting into classes (pipeline.sources.chexpert.ingest_chexpert_layout).
    kaggle_competition / kaggle_config_dir: rsna_ich's competition slug and kaggle.json folder.
    settings: retries, timeouts, progress display of every download.
    """

    base_url: str | None = None
    accept_licence: bool = False
    local_path: str | Path | None = None
    layout: str = "raw"
    n_subjects: int | None = None
    seed: int = 0
    cache_dir: str | Path | None = None
    keep_archives: bool = True
    modality: str | None = None
    n_paired: int = 0
    phantom_options: dict[str, Any] | None = None
    chexpert_label: str = "Pneumonia"
    chexpert_frontal_only: bool = True
    chexpert_keep_layout: bool = False
    kaggle_competition: str = RSNA_COMPETITION
    kaggle_config_dir: str | Path | None = None
    settings: FetchSettings = DEFAULT_SETTINGS

    @property
    def download(self) -> DownloadOptions:
        return DownloadOptions(self.n_subjects, self.seed, self.cache_dir, self.keep_archives, self.settings)

    @property
    def knobs(self) -> dict[str, Any]:
        return dict(self.phantom_options or {})


#: Built-in phantoms written as ``write(out, seed, **knobs)``: module and function, imported only
#: when used (the head phantom's nilearn is heavy). phantom_head takes its modality and counts too.
PHANTOM_WRITERS = {
    "phantom_cxr": ("pipeline.sources.phantom_cxr", "write_phantom_cxr_dataset"),
    "phantom_rsna_ich": ("pipeline.sources.phantom_rsna_ich", "write_phantom_rsna_dataset"),
    "phantom_tcia_thorax": ("pipeline.sources.phantom_tcia_thorax", "write_phantom_thorax_dataset"),
    "phantom_chexpert": ("pipeline.sources.phantom_chexpert", "write_phantom_chexpert_dataset"),
}


def download_dataset(
    source: str,
    out_dir: str | Path,
    *,
    pseudonymise: bool = True,
    on_pixel_risk: str = "exclude",
    staging_dir: str | Path | None = None,
    **options: Any,
) -> Path:
    """Materialise dataset ``out_dir`` from ``source`` (one of DATASET_SOURCES); return ``out_dir``.

    options: the fields of :class:`SourceOptions` (what each source reads is documented there).
    pseudonymise: volume datasets (subjects.tsv) from any source but the synthetic phantoms get
        salted-hash subject ids and names (pipeline.privacy); default True. Turn it off only for
        data whose ids are already pseudonyms.
    on_pixel_risk: DICOM files whose pixels may show identity (burned-in annotation, secondary
        captures, screen saves): "exclude" (listed in deidentification.json) or "stop".
    staging_dir: where originals are laid out before de-identification (default
        <user cache>/staging); never inside the repository.
    """
    known = {f.name for f in dataclasses.fields(SourceOptions)}
    if set(options) - known:
        raise ConfigError(f"download: unknown options {sorted(set(options) - known)}; known: {sorted(known)}")
    request = SourceOptions(**options)
    out_dir = Path(out_dir)
    with staging_area(staging_dir) as staging:
        stage = staging / out_dir.name
        salt = _lay_out_originals(source, stage, out_dir, request, pseudonymise)
        # The phantoms' layouts are named by their made-up ids and UIDs (TCIA's layout): no patient.
        phantom = salt == PHANTOM_SALT
        deidentify_dataset(stage, out_dir, salt, on_pixel_risk=on_pixel_risk, check_names=not phantom)
    return out_dir


def _lay_out_originals(source: str, stage: Path, out_dir: Path, request: SourceOptions, pseudonymise: bool) -> str:
    """Lay the dataset out in ``stage`` (outside the repository) under pseudonyms; return the
    salt its UIDs are to be re-derived with."""
    if source == "phantom_head":
        from pipeline.sources.phantom_head import write_phantom_dataset  # heavy (nilearn); only when used

        if request.modality is None or request.n_subjects is None:
            raise ConfigError("phantom_head needs modality (CT or MR) and n_subjects")
        write_phantom_dataset(stage, request.modality, request.n_subjects, request.n_paired, request.seed, **request.knobs)
        return PHANTOM_SALT  # synthetic: no patient behind the ids, and the same ids on every machine
    if source in PHANTOM_WRITERS:
        module, function = PHANTOM_WRITERS[source]
        getattr(importlib.import_module(module), function)(stage, request.seed, **request.knobs)
        return PHANTOM_SALT
    if source == "tcia" or (source == "local" and request.layout == "tcia"):
        # Own pseudonyms (same salt and hash as pipeline.privacy): the generic renaming would
        # separate label images from their slices (pipeline.sources.tcia).
        from pipeline.sources.tcia import lay_out_tcia

        salt = load_salt()
        lay_out_tcia(source, stage, salt, base_url=request.base_url, local_path=request.local_path,
                     source_options=request.knobs, download=request.download)  # fmt: skip
        return salt
    if (out_dir / SUMS_FILE).is_file():  # the sums recorded with the data (e.g. pulled through DVC)
        stage.mkdir(parents=True)
        shutil.copyfile(out_dir / SUMS_FILE, stage / SUMS_FILE)
    _materialise(source, stage, request)
    salt = load_salt()
    if pseudonymise and (stage / SUBJECTS_TSV).exists():
        pseudonymise_raw_dataset(stage, salt)
    return salt


def _materialise(source: str, out_dir: Path, request: SourceOptions) -> Path:
    """Lay out a real or local dataset in ``out_dir`` under its own ids (see download_dataset)."""
    if source == "ixi_t2":
        return fetch_ixi_t2(out_dir, base_url=request.base_url, options=request.download)
    if source == "cq500":
        return fetch_cq500(
            out_dir, accept_licence=request.accept_licence, base_url=request.base_url, options=request.download
        )
    if source == "kermany_cxr":
        return fetch_kermany_cxr(out_dir, base_url=request.base_url, options=request.download)
    if source == "rsna_ich":
        return fetch_rsna_ich(out_dir, base_url=request.base_url, competition=request.kaggle_competition,
                              kaggle_config_dir=request.kaggle_config_dir, options=request.download)  # fmt: skip
    if source == "chexpert" and not request.local_path:
        raise ConfigError(
            "chexpert is registration-gated: download CheXpert-v1.0-small.zip from Stanford AIMI "
            "yourself and set local_path to it (CLI: --local-path)"
        )
    if source in ("chexpert", "local"):
        return ingest_local(
            request.local_path,
            out_dir,
            layout="chexpert" if source == "chexpert" else request.layout,
            n_subjects=request.n_subjects,
            seed=request.seed,
            chexpert_label=request.chexpert_label,
            chexpert_frontal_only=request.chexpert_frontal_only,
            chexpert_keep_layout=request.chexpert_keep_layout,
        )
    raise ConfigError(f"download source {source!r} is not one of {', '.join(DATASET_SOURCES)}")


# ---------------------------------------------------------------- CLI


def _optional_text(text: str) -> str | None:
    """Snakemake passes params' null as an empty string or 'None'."""
    return None if text.strip().lower() in ("", "none", "null") else text


def _optional_count(text: str) -> int | None:
    if _optional_text(text) is None or text.strip().lower() == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive count or 'all', got {text}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parsed = yaml.safe_load(value)
    return key, tuple(parsed) if isinstance(parsed, list) else parsed  # knobs are frozen dataclass fields


def _add_fetch_flags(parser: argparse.ArgumentParser) -> None:
    defaults = DEFAULT_SETTINGS
    group = parser.add_argument_group("download behaviour")
    group.add_argument("--retries", type=int, default=defaults.retries, help="extra attempts, each resuming")
    group.add_argument(
        "--backoff-s", type=float, default=defaults.backoff_s, help="first retry wait; doubles"
    )
    group.add_argument("--timeout-s", type=float, default=defaults.timeout_s, help="connect / read timeout")
    group.add_argument("--chunk-bytes", type=int, default=defaults.chunk_bytes)
    group.add_argument("--free-space-margin-bytes", type=int, default=defaults.free_space_margin_bytes)
    group.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="auto: a bar on a terminal unless CI is set, else single log lines",
    )


#: The download-behaviour flags (_add_fetch_flags), read into one FetchSettings.
FETCH_FLAGS = ("retries", "backoff_s", "timeout_s", "chunk_bytes", "free_space_margin_bytes", "progress")


def _settings(args: argparse.Namespace | dict[str, Any]) -> FetchSettings:
    flags = vars(args) if isinstance(args, argparse.Namespace) else args
    progress = {"auto": None, "bar": True, "lines": False}[flags["progress"]]
    return FetchSettings(**{name: flags[name] for name in FETCH_FLAGS if name != "progress"}, progress=progress)


def _dataset_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sources.download",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", help="dataset name for log lines (default: the --out folder's name)")
    parser.add_argument("--source", required=True, choices=DATASET_SOURCES)
    parser.add_argument("--out", required=True, type=Path, help="raw dataset folder, e.g. data/raw/ct_head")
    parser.add_argument("--base-url", type=_optional_text, default=None)
    parser.add_argument("--accept-licence", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--local-path", type=_optional_text, default=None)
    parser.add_argument("--layout", choices=LAYOUTS, default="raw", help="local: what --local-path holds")
    parser.add_argument(
        "--n-subjects", type=_optional_count, default=None, help="a count, or 'all' (default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=_optional_text, default=None)
    parser.add_argument("--keep-archives", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--modality", choices=("CT", "MR", "XR"), help="phantom_head: modality to render")
    parser.add_argument("--n-paired", type=int, default=0, help="phantom_head: test subjects with a partner")
    parser.add_argument(
        "--phantom-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="phantom_head / phantom_cxr / phantom_tcia_thorax: extra knob; tcia: collection=<name> "
        "(value parsed as YAML); repeatable",
    )
    parser.add_argument(
        "--pseudonymise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="salted-hash subject ids for real and local volume datasets (default: on)",
    )
    parser.add_argument(
        "--on-pixel-risk",
        choices=PIXEL_RISK_ACTIONS,
        default="exclude",
        help="DICOM with burned-in annotation, secondary captures, screen saves: leave out (recorded) or stop",
    )
    parser.add_argument(
        "--staging-dir",
        type=_optional_text,
        default=None,
        help="where originals are laid out before de-identification (default: <user cache>/staging)",
    )
    parser.add_argument("--chexpert-label", default="Pneumonia")
    parser.add_argument("--chexpert-frontal-only", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--chexpert-keep-layout",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="chexpert / local layout chexpert: keep CheXpert's folders and CSVs (no class sorting)",
    )
    parser.add_argument("--kaggle-competition", default=RSNA_COMPETITION)
    parser.add_argument(
        "--kaggle-config-dir",
        type=_optional_text,
        default=None,
        help="folder holding kaggle.json (default: $KAGGLE_CONFIG_DIR or ~/.kaggle)",
    )
    _add_fetch_flags(parser)
    return parser


def _weights_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.sources.download weights",
        description="Fetch and verify the pretrained weight files.",
    )
    parser.add_argument("--out", required=True, type=Path, help="e.g. data/weights")
    parser.add_argument("--which", nargs="+", choices=tuple(WEIGHT_FILES), default=list(WEIGHT_FILES))
    parser.add_argument("--pretrained", choices=PRETRAINED_CHOICES, default="imagenet")
    parser.add_argument(
        "--local-dir", type=_optional_text, default=None, help="folder already holding the files"
    )
    parser.add_argument("--torchvision-base-url", type=_optional_text, default=None)
    parser.add_argument("--fid-base-url", type=_optional_text, default=None)
    _add_fetch_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if argv[:1] == ["weights"]:
            args = _weights_parser().parse_args(argv[1:])
            fetch_weights(
                args.out,
                args.which,
                pretrained=args.pretrained,
                local_dir=args.local_dir,
                torchvision_base_url=args.torchvision_base_url,
                fid_base_url=args.fid_base_url,
                settings=_settings(args),
            )
            return 0
        args = vars(_dataset_parser().parse_args(argv))
        dataset, source, out = args.pop("dataset"), args.pop("source"), args.pop("out")
        log.info("%s: source %s -> %s", dataset or out.name, source, out)
        args["phantom_options"] = dict(args.pop("phantom_option"))
        args["settings"] = _settings(args)
        download_dataset(source, out, **{key: value for key, value in args.items() if key not in FETCH_FLAGS})
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
