"""What a profile (params.yaml with configs merged over it) asks of each experiment's networks:
which models train, on which inputs, at which image size and batch, and on which device.

The sizes follow the data path: the stored slice size of each dataset kind (its preprocessing
knob), then the train section's ``image_size`` (resize at load) and ``crop_size`` (random crop),
as the training engine applies them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline.errors import ConfigError


def dataset_kind(datasets: Mapping[str, Any], name: str) -> str:
    """volume | xray | ct_slices | thorax | chexpert: which preparation stage makes its slices
    (the same tests as pipeline/rules/common.smk's is_xray / is_ct_slices / ...)."""
    cfg = datasets[name]
    source, layout = cfg.get("source"), cfg.get("layout")
    if "raw" in cfg:
        return "xray"
    if source in ("phantom_rsna_ich", "rsna_ich") or (source == "local" and layout == "rsna_ich"):
        return "ct_slices"
    if source in ("phantom_tcia_thorax", "tcia") or (source == "local" and layout == "tcia"):
        return "thorax"
    if source == "phantom_chexpert" or (source in ("chexpert", "local") and cfg.get("keep_layout")
                                        and layout in (None, "chexpert")):
        return "chexpert"
    return "volume"


#: The preprocessing knob that sets each kind's stored square side.
STORED_SIZE_KNOB = {"volume": ("slices", "size"), "xray": ("xray", "resize"), "ct_slices": ("ct_slices", "size"),
                    "thorax": ("thorax_slices", "size"), "chexpert": ("chexpert", "size")}


def stored_size(cfg: Mapping[str, Any], dataset: str) -> int:
    """Side of the square slices the preparation stage writes for ``dataset``."""
    section, key = STORED_SIZE_KNOB[dataset_kind(cfg["datasets"], dataset)]
    return int(cfg["preprocess"][section][key])


@dataclass
class TrainedNetworks:
    """One run of the training engine: a model's knobs, its inputs and sizes."""

    experiment: str
    role: str                       # "model" (the experiment's GAN) or "encoder"
    config: dict[str, Any]          # {"model": {...}, "train": {...}} as the rule passes it
    inputs: dict[str, str]          # model input name -> dataset
    stored_size: int                # side of the stored slices
    train_size: int                 # side the networks see in a step (after resize and crop)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> dict[str, Any]:
        return self.config["train"]

    @property
    def batch_size(self) -> int:
        return int(self.train["batch_size"])

    @property
    def device(self) -> str:
        return self.train.get("device", "auto")


@dataclass
class Experiment:
    """Everything of one experiment that runs a network."""

    name: str
    kind: str                       # translation | generation | map_to_image | stylegan
    networks: list[TrainedNetworks]
    section: dict[str, Any]         # experiments.<name>


def experiment_kind(exp: Mapping[str, Any]) -> str:
    """The four evaluation families of the workflow (as common.smk sorts them)."""
    if "inputs" not in exp:
        return "translation"
    if "encoder" in exp:
        return "stylegan"
    if exp.get("model", {}).get("name") == "seg2ct":
        return "map_to_image"
    return "generation"


def _sizes(cfg: Mapping[str, Any], datasets: list[str], train: Mapping[str, Any]) -> tuple[int, int]:
    sizes = {stored_size(cfg, d) for d in datasets}
    if len(sizes) != 1:
        raise ConfigError(f"the inputs {datasets} are stored at different sizes {sorted(sizes)}")
    stored = sizes.pop()
    loaded = train.get("image_size") or stored
    return stored, int(train.get("crop_size") or loaded)


def experiments(cfg: Mapping[str, Any], names: list[str] | None = None) -> list[Experiment]:
    """The experiments of ``cfg`` (all, or ``names``) with their training runs resolved."""
    found = []
    for name, exp in cfg["experiments"].items():
        if names and name not in names:
            continue
        kind = experiment_kind(exp)
        inputs = dict(exp["inputs"]) if "inputs" in exp else {"a": exp["domain_a"], "b": exp["domain_b"]}
        config = {"model": dict(exp["model"]), "train": dict(exp["train"])}
        if kind == "translation":
            config["model"].setdefault("name", "cyclegan")
        stored, train_size = _sizes(cfg, list(inputs.values()), config["train"])
        runs = [TrainedNetworks(name, "model", config, inputs, stored, train_size)]
        if kind == "stylegan":
            encoder = {"model": {"name": "stylegan2_encoder", **exp["encoder"]["model"]},
                       "train": dict(exp["encoder"]["train"])}
            e_stored, e_size = _sizes(cfg, list(inputs.values()), encoder["train"])
            runs.append(TrainedNetworks(name, "encoder", encoder, inputs, e_stored, e_size))
        found.append(Experiment(name, kind, runs, dict(exp)))
    unknown = sorted(set(names or ()) - {e.name for e in found})
    if unknown:
        raise ConfigError(f"unknown experiments {unknown}; known: {sorted(cfg['experiments'])}")
    return found
