"""What the built-in phantoms share: their knobs, random streams, fields, shapes and files.

Each phantom (head, RSNA haemorrhage, paediatric CXR, CheXpert adults, TCIA thorax) keeps what is
its own (anatomy, findings, layout); this module holds what they all do the same way:

* **Knobs.** A phantom's knobs are the properties of its params.yaml section in the schema
  (pipeline/schemas/params.schema.yaml): name, type, range, meaning and default are written once,
  there. :func:`knobs_from_schema` turns the section into the phantom's frozen dataclass, checks
  values against the schema (and ``low <= high`` for every ``*range`` knob) and then calls the
  class's own ``check`` for relations a schema cannot state; :func:`knob_parser` makes the CLI
  from the same table.
* **Random streams.** :func:`random_streams` gives independent generators per purpose (anatomy,
  noise, texture, ...) from a seed and a phantom's code, so turning one feature off changes
  nothing else; :func:`draw_ranges` draws one value a patient from ``[low, high]`` knobs.
* **Fields and shapes.** Smoothed Gaussian noise (:func:`smooth_noise`, the basis of textures,
  correlated CT noise and deformations), the anti-aliased inside-indicator :func:`soft_inside`,
  ellipses and bone-like bands.
* **Files.** CT slices as single-frame DICOM (:func:`ct_slice_dataset`), pseudonymous hashed ids,
  PNG / JPEG writers. Truth tables and the scratch folder a generated download is laid out from
  are the real sources' too (pipeline.sources.real_datasets: ``write_table``, ``scratch_folder``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat
from scipy import ndimage

from pipeline.config import params_schema
from pipeline.errors import ConfigError

JSON_TYPES = {"integer": int, "number": float, "string": str, "boolean": bool, "array": tuple, "object": dict}

# ----------------------------------------------------------------------------- knobs


def _resolved(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A schema node with its ``$ref`` chain merged in (the node's own keys win, sub-nodes merge)."""
    spec = dict(spec)
    ref = spec.pop("$ref", None)
    if ref is None:
        return spec
    merged = _resolved(params_schema()["$defs"][ref.rsplit("/", 1)[1]])
    for key, value in spec.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _is_range(spec: Mapping[str, Any]) -> bool:
    """A ``[low, high]`` knob: the schema types it with one of its ``*range`` definitions."""
    return str(spec.get("$ref", "")).endswith("range")


def _kind(spec: Mapping[str, Any]) -> type:
    resolved = _resolved(spec)
    if "enum" in resolved:
        return type(resolved["enum"][0])
    return JSON_TYPES[resolved["type"]]


def _coerce(value: Any, spec: Mapping[str, Any]) -> Any:
    """``value`` as the schema types it: tuples for arrays, floats for numbers, dicts of the same."""
    resolved = _resolved(spec)
    kind = _kind(spec)
    if kind is tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce(v, resolved.get("items", {})) for v in value)
    if kind is dict and isinstance(value, Mapping):
        item = resolved.get("additionalProperties")
        return {k: _coerce(v, item) if isinstance(item, Mapping) else v for k, v in value.items()}
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_json(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_as_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items()}
    return value


@functools.lru_cache(maxsize=None)
def _section(section: str) -> dict[str, Any]:
    return params_schema()["properties"][section]


@functools.lru_cache(maxsize=None)
def _validator(section: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$defs": params_schema()["$defs"], **_section(section)})


def knob_defaults(section: str) -> dict[str, Any]:
    """Every knob of a schema section with its default, typed as the phantom uses it."""
    return {name: _coerce(spec["default"], spec) for name, spec in _section(section)["properties"].items()}


def _range_problems(section: str, name: str, spec: Mapping[str, Any], value: Any) -> list[str]:
    pairs = {name: value} if _is_range(spec) else {}
    item = _resolved(spec).get("additionalProperties")
    if isinstance(item, Mapping) and _is_range(item) and isinstance(value, Mapping):
        pairs = {f"{name}.{key}": pair for key, pair in value.items()}
    return [
        f"{section}.{where}: need [low, high] with low <= high, got {list(pair)}"
        for where, pair in pairs.items()
        if isinstance(pair, Sequence) and len(pair) == 2 and pair[0] > pair[1]  # other shapes: the schema says
    ]


def _check_knobs(self: Any) -> None:
    section = type(self).section
    properties = _section(section)["properties"]
    for name, spec in properties.items():
        object.__setattr__(self, name, _coerce(getattr(self, name), spec))
    instance = {name: _as_json(getattr(self, name)) for name in properties}
    problems = [
        f"{section}.{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in sorted(_validator(section).iter_errors(instance), key=lambda e: list(e.absolute_path))
    ]
    for name, spec in properties.items():
        problems += _range_problems(section, name, spec, getattr(self, name))
    if problems:
        raise ConfigError("; ".join(problems))
    self.check()


def knobs_from_schema(section: str) -> Callable[[type], type]:
    """Class decorator: a frozen dataclass whose fields are the knobs of ``section`` in the schema.

    The decorated class keeps its docstring and methods; ``check(self)`` (optional) raises
    ConfigError for what the schema cannot say (relations between knobs). Values are validated on
    construction; lists become tuples and integers given for numbers become floats.
    """

    def build(cls: type) -> type:
        fields = []
        for name, spec in _section(section)["properties"].items():
            if "default" not in spec:
                raise TypeError(f"{section}.{name}: the schema gives no default")
            default = _coerce(spec["default"], spec)
            value = (
                dataclasses.field(default_factory=functools.partial(copy.deepcopy, default))
                if isinstance(default, dict)
                else dataclasses.field(default=default)
            )
            fields.append((name, _kind(spec), value))
        namespace = {key: value for key, value in vars(cls).items() if key not in ("__dict__", "__weakref__")}
        namespace.setdefault("check", lambda self: None)
        namespace |= {"section": section, "__post_init__": _check_knobs}
        made = dataclasses.make_dataclass(cls.__name__, fields, namespace=namespace, frozen=True)
        made.__module__, made.__qualname__ = cls.__module__, cls.__qualname__
        return made

    return build


def params_from_knobs(params_class: type, knobs: Mapping[str, Any]) -> Any:
    """``params_class(**knobs)``, with an unknown knob named as a ConfigError first."""
    known = {f.name for f in dataclasses.fields(params_class)}
    unknown = sorted(set(knobs) - known)
    if unknown:
        raise ConfigError(f"{params_class.section}: unknown knobs {unknown}; known: {sorted(known)}")
    return params_class(**knobs)


def check_seed(seed: int) -> None:
    if seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {seed}")


def knob_parser(doc: str, params_class: type) -> argparse.ArgumentParser:
    """A phantom's CLI: ``--out``, ``--seed`` and a ``--knob-name`` flag per scalar or list knob
    (tables such as ``tissue_hu`` are params.yaml's); help from the schema, a flag left out keeps
    the knob's default. A phantom adds its own flags to it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder to write.")
    parser.add_argument("--seed", type=int, required=True)
    properties = _section(params_class.section)["properties"]
    for knob in dataclasses.fields(params_class):
        spec = properties[knob.name]
        if knob.type is dict:
            continue
        flag = "--" + knob.name.replace("_", "-")
        help_text = f"{spec.get('description', '')} (default: {_as_json(knob.default)})"
        if knob.type is tuple:
            items = _resolved(spec).get("items", {})
            parser.add_argument(
                flag, type=_kind(items), nargs=len(knob.default), default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, type=knob.type, default=argparse.SUPPRESS, help=help_text)
    return parser


def parse_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[Path, int, dict[str, Any]]:
    """(out, seed, the other flags given) from a :func:`knob_parser`, with logging to stderr."""
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return args.pop("out"), args.pop("seed"), args


def phantom_main(doc: str, params_class: type, write: Callable[..., object]) -> Callable[[Sequence[str] | None], None]:
    """The ``main`` of a phantom whose CLI is ``--out``, ``--seed`` and its knobs: ``write(out, seed, **knobs)``."""

    def main(argv: Sequence[str] | None = None) -> None:
        out, seed, knobs = parse_cli(knob_parser(doc, params_class), argv)
        write(out, seed, **knobs)

    return main


# ----------------------------------------------------------------------------- random draws


def random_streams(count: int, *entropy: int) -> tuple[np.random.Generator, ...]:
    """``count`` independent generators from one seed sequence (e.g. seed, phantom code, patient)."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(list(entropy)).spawn(count))


def draw_uniform(rng: np.random.Generator, low_high: Sequence[float]) -> float:
    return float(rng.uniform(*low_high))


def draw_ranges(rng: np.random.Generator, params: Any, names: Sequence[str]) -> dict[str, float]:
    """One value a patient from each ``[low, high]`` knob, in the order of ``names``."""
    return {name: draw_uniform(rng, getattr(params, name)) for name in names}


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_px: float, mode: str = "reflect") -> np.ndarray:
    """White Gaussian noise (float32) smoothed by a Gaussian of ``sigma_px`` (0: left white)."""
    noise = rng.standard_normal(tuple(shape)).astype(np.float32)
    return ndimage.gaussian_filter(noise, sigma_px, mode=mode) if sigma_px > 0 else noise


def scaled_to_sd(values: np.ndarray, sd: float) -> np.ndarray:
    """``values`` rescaled to standard deviation ``sd`` (a flat field stays flat)."""
    return values * (sd / max(float(values.std()), 1e-6))


def rescaled_to_unit(values: np.ndarray) -> np.ndarray:
    """``values`` mapped linearly onto [0, 1] (a flat field becomes 0)."""
    span = float(np.ptp(values))
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def resample_linear(values: np.ndarray, size: int, axes: Sequence[int]) -> np.ndarray:
    """``values`` resampled to ``size`` samples along each of ``axes`` over the same extent (pixel
    edges aligned, as a finer grid over one field of view), linearly between sample centres and
    held at the borders. Separable and vectorised: far cheaper than a general spline zoom."""
    for axis in axes:
        n = values.shape[axis]
        centres = (np.arange(size) + 0.5) * n / size - 0.5
        low = np.clip(np.floor(centres).astype(int), 0, n - 1)
        high = np.minimum(low + 1, n - 1)
        shape = [1] * values.ndim
        shape[axis] = size
        weight = np.clip(centres - low, 0.0, 1.0).reshape(shape).astype(values.dtype)
        values = np.take(values, low, axis=axis) * (1 - weight) + np.take(values, high, axis=axis) * weight
    return values


# ----------------------------------------------------------------------------- shapes


def soft_inside(signed: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside-indicator of ``signed > 0``: a ramp ``width`` wide across the border."""
    return np.clip(0.5 + signed / width, 0.0, 1.0)


def ellipse_r2(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float = 0.0) -> np.ndarray:
    """Squared normalised radius of an ellipse with half axes ``ax``, ``ay`` turned by ``angle`` (< 1 inside)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return ((c * dx + s * dy) / ax) ** 2 + ((-s * dx + c * dy) / ay) ** 2


def bone_band(y: np.ndarray, centre: np.ndarray, half_width: float) -> np.ndarray:
    """A bone-like band around the curve ``y = centre``: denser cortex at both edges."""
    d = np.abs(y - centre) / half_width
    return np.clip(1 - d**2, 0, None) ** 0.5 * (0.7 + 0.3 * np.clip(d, 0, 1) ** 2)


# ----------------------------------------------------------------------------- files


def ds_value(value: float) -> DSfloat:
    """A DICOM decimal string, shortened to fit its 16-character limit."""
    return DSfloat(float(value), auto_format=True)


@dataclasses.dataclass(frozen=True)
class StoredPixels:
    """How a CT slice's pixels are stored: HU = stored x 1 + ``rescale_intercept``."""

    bits_stored: int
    signed: bool
    rescale_intercept: float


def ct_slice_dataset(
    stored: np.ndarray,
    encoding: StoredPixels,
    *,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    position_lps: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_mm: float,
    window: tuple[float, float],
) -> pydicom.Dataset:
    """One axial CT Image Storage slice; ``stored`` is (rows, columns) in the stored encoding.

    The caller adds what is its own (descriptions, instance numbers, marker fields)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [ds_value(v) for v in position_lps]
    ds.ImageOrientationPatient = [ds_value(v) for v in orientation]
    ds.PixelSpacing = [ds_value(v) for v in pixel_spacing]
    ds.SliceThickness = ds_value(slice_mm)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = int(encoding.signed)
    ds.RescaleIntercept = encoding.rescale_intercept
    ds.RescaleSlope = 1
    ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def hashed_hex(length: int, *parts: object) -> str:
    """The first ``length`` hex digits of SHA-256 over the parts: a stable pseudonymous id."""
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:length]


def hashed_uid(*parts: object) -> str:
    """A valid DICOM UID under 2.25 from a hash of the object's place (pseudonymous, stable)."""
    return "2.25." + str(int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:15], "big"))


def save_png(array: np.ndarray, path: Path) -> None:
    """An 8-bit grey (or label) image, lossless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def save_jpeg(image: np.ndarray, path: Path, quality: int) -> None:
    """A [0, 1] image as an 8-bit grey JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(path, format="JPEG", quality=quality)
