"""Windowed stage: raw CT (DICOM) and T2 MRI (NIfTI) to float32 volumes in [0, 1], RAS+, isotropic.

CT: one series per patient folder is chosen (rule in ``load_ct_hu``), stacked by slice position,
mapped to Hounsfield units through the DICOM modality LUT, resampled, then windowed.
MR: reoriented, resampled, then scaled between percentiles of the head (``normalise_mri``).
A phantom's partner is resampled onto its subject's written grid and normalised the same way.

Nothing identifying from a DICOM header reaches an output or a log line: outputs hold voxels and
geometry only, and messages name files and folders, never header values such as UIDs or names.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.processing import resample_from_to, resample_to_output
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from scipy import ndimage
from skimage.filters import threshold_otsu

from pipeline.config import CT_WINDOW_PRESETS
from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.labels import SHARP_KERNEL_WORDS
# values_kept_out_of_logs: also for the slice stages that read header fields of their own.
from pipeline.privacy import values_kept_out_of_logs

_log = logging.getLogger(__name__)

#: Named CT windows (center, width) in HU, shared with params.yaml's presets. "file"
#: (``FILE_WINDOW``) means the series' own window.
WINDOW_PRESETS = CT_WINDOW_PRESETS
FILE_WINDOW = "file"

MODALITIES = ("CT", "MR")

# DICOM patient coordinates are LPS (x to the patient's left, y posterior); NIfTI's are RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Agreement expected between slices of one series for direction cosines and pixel spacing:
# DS strings carry 4 to 6 decimals, so anything beyond this is a real difference.
_GEOMETRY_ATOL = 1e-3

# How pydicom's reader warns that a file ends inside an element (pydicom.filereader).
_PYDICOM_EOF_WARNING = "End of file reached before delimiter"

# RSNA 2019 quirk (see ``_unwrap_rsna_12bit``): which slices are affected, and the lowest HU a
# wrapped value can stand for (those scanners clipped air at -1000 HU).
_RSNA_BITS_STORED = 12
_RSNA_MIN_INTERCEPT = -100.0
_RSNA_FLOOR_HU = -1000.0


@dataclass
class _Frame:
    """One image plane: a single-frame file, or one frame of an enhanced multi-frame file."""

    path: Path
    index: int | None  # frame number in a multi-frame file; None for a single-frame file
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: np.ndarray | None  # (between rows, between columns) mm
    thickness: float | None


@dataclass
class _Series:
    folder: Path
    header: Dataset  # header of the series' first file (no pixel data)
    frames: list[_Frame] = field(default_factory=list)
    problem: str | None = None  # why the series cannot be used, found while scanning


# --------------------------------------------------------------------------- DICOM reading




def _frame_value(ds: Dataset, frame: int | None, macro: str, keyword: str):
    """An attribute of one frame: from an enhanced file's functional groups (per-frame first, then
    shared), else from the top level as in a classic single-frame file."""
    if frame is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = ds.get("SharedFunctionalGroupsSequence")
        for groups in (per_frame[frame] if per_frame else None, shared[0] if shared else None):
            if groups is not None and groups.get(macro):
                value = groups.get(macro)[0].get(keyword)
                if value is not None:
                    return value
    return ds.get(keyword)


def _as_array(value, size: int) -> np.ndarray | None:
    """A multi-valued DS attribute as finite floats; None when absent, of the wrong length, or not
    numbers (a corrupt header), which makes the series unusable with the field named."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != size:
        return None
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return array if np.all(np.isfinite(array)) else None


def _as_float(value) -> float | None:
    """A single DS attribute as a finite float; None when absent or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def _first(value) -> float:
    """The first value of a possibly multi-valued attribute (pydicom's default view, index 0)."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _frames_of(path: Path, ds: Dataset) -> list[_Frame]:
    frame_indices: list[int | None] = [None]
    if "PerFrameFunctionalGroupsSequence" in ds:
        frame_indices = list(range(len(ds.PerFrameFunctionalGroupsSequence)))
    frames = []
    for index in frame_indices:
        thickness = _frame_value(ds, index, "PixelMeasuresSequence", "SliceThickness")
        frames.append(
            _Frame(
                path=path,
                index=index,
                position=_as_array(
                    _frame_value(ds, index, "PlanePositionSequence", "ImagePositionPatient"), 3
                ),
                orientation=_as_array(
                    _frame_value(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                pixel_spacing=_as_array(_frame_value(ds, index, "PixelMeasuresSequence", "PixelSpacing"), 2),
                thickness=_as_float(thickness),
            )
        )
    return frames


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (pixels not read); None for a file that is not DICOM at all."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if path.suffix.lower() == ".dcm":
            raise InputDataError(path, "named .dcm but has no DICOM preamble ('DICM' missing)") from None
        return None
    except Exception as exc:  # pydicom signals corrupt input with many exception types
        raise InputDataError(path, f"corrupt or truncated DICOM header ({_where(exc)})") from exc
    # pydicom reads past damage with a warning and returns what it could: a file that carries
    # the DICOM preamble but ends inside an element, or has no SOP Class at all, is corrupt.
    if any(str(w.message).startswith(_PYDICOM_EOF_WARNING) for w in caught):
        raise InputDataError(path, "corrupt or truncated DICOM header: the file ends inside an element")
    if not (ds.get("SOPClassUID") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")):
        raise InputDataError(path, "corrupt DICOM header: no SOP Class UID in the file meta or the dataset")
    return ds


def _scan_series(subject_dir: Path) -> list[_Series]:
    """Every image series under ``subject_dir``, grouped by SeriesInstanceUID."""
    by_uid: dict[str, _Series] = {}
    files_by_uid: dict[str, list[Path]] = {}
    for path in sorted(p for p in subject_dir.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:  # not DICOM, or DICOMDIR and the like
            continue
        uid = str(ds.SeriesInstanceUID)
        series = by_uid.setdefault(uid, _Series(folder=path.parent, header=ds))
        files_by_uid.setdefault(uid, []).append(path)
        modality = str(ds.get("Modality", "")) or "missing"
        series_modality = str(series.header.get("Modality", "")) or "missing"
        if modality != series_modality and series.problem is None:
            series.problem = (
                f"{path.name}: Modality {modality} in a series of {series_modality} "
                "(mixed modalities under one SeriesInstanceUID)"
            )
        n_frames = int(ds.get("NumberOfFrames") or 1)
        if len(ds.get("PerFrameFunctionalGroupsSequence") or [None] * n_frames) != n_frames:
            series.problem = f"{path.name}: per-frame functional groups do not match NumberOfFrames"
        series.frames.extend(_frames_of(path, ds))
    for uid, series in by_uid.items():
        series.folder = Path(os.path.commonpath([p.parent for p in files_by_uid[uid]]))
    return [by_uid[uid] for uid in sorted(by_uid)]


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("ImageType") or ()
    return tuple(str(v).strip().upper() for v in ([value] if isinstance(value, str) else value))


def _kernel(ds: Dataset) -> str:
    value = _frame_value(
        ds,
        0 if "SharedFunctionalGroupsSequence" in ds else None,
        "CTReconstructionSequence",
        "ConvolutionKernel",
    )
    if value is None:
        return ""
    return " ".join(str(v) for v in ([value] if isinstance(value, str) else value))


def _series_problem(series: _Series, sharp_kernel_words: Sequence[str]) -> str | None:
    """Why a series cannot be the patient's volume, or None when it can."""
    header = series.header
    modality = str(header.get("Modality", "")).upper()
    if modality != "CT":
        return f"Modality {modality or 'missing'}, not CT"
    if series.problem:
        return series.problem
    if int(header.get("SamplesPerPixel", 1)) != 1:
        return "not a greyscale image"
    if "LOCALIZER" in _image_type(header):
        return "localizer (scout) image"
    if any(f.position is None or f.orientation is None or f.pixel_spacing is None for f in series.frames):
        return "no ImagePositionPatient / ImageOrientationPatient / PixelSpacing"
    if int(np.argmax(np.abs(_normal(series.frames[0].orientation)))) != 2:
        return "not axial (slice normal closest to the x or y axis)"
    text = f"{_kernel(header)} {header.get('SeriesDescription', '')}".upper()
    for word in sharp_kernel_words:
        if word.upper() in text:
            return f"bone/lung reconstruction ('{word.upper()}' in kernel or description)"
    return None


def _projections(frames: list[_Frame]) -> np.ndarray:
    normal = _normal(frames[0].orientation)
    return np.array([float(f.position @ normal) for f in frames])


def _nominal_thickness(series: _Series) -> float:
    """SliceThickness, else the median slice spacing, else infinity (ranks last)."""
    if series.frames[0].thickness is not None:
        return series.frames[0].thickness
    gaps = np.diff(np.sort(_projections(series.frames)))
    return float(np.median(gaps)) if gaps.size else float("inf")


def _is_original_primary(ds: Dataset) -> bool:
    return _image_type(ds)[:2] == ("ORIGINAL", "PRIMARY")


def _choose_series(
    subject_dir: Path, preferred_thickness_mm: float, sharp_kernel_words: Sequence[str]
) -> _Series:
    series_list = _scan_series(subject_dir)
    if not series_list:
        raise InputDataError(subject_dir, "no DICOM image files found")
    usable, rejected = [], []
    for series in series_list:
        problem = _series_problem(series, sharp_kernel_words)
        if problem is None:
            usable.append(series)
        else:
            first = series.frames[0].path if series.frames else series.folder
            rejected.append(f"{first} ({len(series.frames)} images): {problem}")
    if not usable:
        raise InputDataError(subject_dir, "no usable axial CT series; " + "; ".join(rejected))
    ranked = sorted(
        usable,
        key=lambda s: (
            not _is_original_primary(s.header),
            abs(_nominal_thickness(s) - preferred_thickness_mm),
            -len(s.frames),
            str(s.folder),
            str(s.header.SeriesInstanceUID),  # only to break ties deterministically; never shown
        ),
    )
    chosen = ranked[0]
    _log.info(
        "%s: chose the series in %s (%d slices, %.2f mm, %s); %d other series: %s",
        subject_dir,
        chosen.folder,
        len(chosen.frames),
        _nominal_thickness(chosen),
        "ORIGINAL\\PRIMARY" if _is_original_primary(chosen.header) else "derived",
        len(series_list) - 1,
        "; ".join(rejected) or "none rejected",
    )
    return chosen


def _check_spacing(positions: np.ndarray, folder: Path, tolerance: float) -> None:
    """Raise when slices (sorted positions along the normal) are duplicated, missing or irregular."""
    gaps = np.diff(positions)
    if gaps.size == 0:
        return
    typical = float(np.median(gaps))
    if typical <= 0:  # most slices are duplicated
        where = positions[int(np.argmin(gaps))]
        raise InputDataError(folder, f"duplicate slice position at {where:.2f} mm along the slice normal")
    nominal = float(np.median(gaps[gaps > tolerance * typical]))
    for gap, where in zip(gaps, positions[:-1], strict=True):
        if gap < tolerance * nominal:
            raise InputDataError(folder, f"duplicate slice position at {where:.2f} mm along the slice normal")
        if gap > (1 + tolerance) * nominal:
            raise InputDataError(
                folder,
                f"missing slice: gap of {gap:.2f} mm after {where:.2f} mm where {nominal:.2f} mm is expected",
            )
        if gap < (1 - tolerance) * nominal:
            raise InputDataError(
                folder,
                f"irregular slice spacing: {gap:.2f} mm after {where:.2f} mm, {nominal:.2f} mm expected",
            )


def _check_same_geometry(frames: list[_Frame], folder: Path) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if not np.allclose(frame.orientation, first.orientation, atol=_GEOMETRY_ATOL):
            raise InputDataError(
                folder, f"{frame.path.name}: slice orientation differs from the rest of the series"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, atol=_GEOMETRY_ATOL):
            raise InputDataError(
                folder, f"{frame.path.name}: pixel spacing differs from the rest of the series"
            )


def _modality_lut_dataset(ds: Dataset, frame: int | None) -> Dataset:
    """The dataset that carries a frame's modality LUT: the file itself for a classic image; for an
    enhanced image, a small dataset made from its Pixel Value Transformation functional group."""
    if frame is None:
        return ds
    lut = Dataset()
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        value = _frame_value(ds, frame, "PixelValueTransformationSequence", keyword)
        if value is not None:
            setattr(lut, keyword, value)
    return lut


def _unwrap_rsna_12bit(stored: np.ndarray, ds: Dataset, lut: Dataset) -> np.ndarray:
    """Undo the 12-bit wrap-around of the RSNA 2019 intracranial haemorrhage data.

    Some of those CT slices say BitsStored 12, PixelRepresentation 0 (unsigned) and a
    RescaleIntercept near 0, yet their stored values are 12-bit two's complement: air at
    -1000 HU is stored as 3096 (= 4096 - 1000) and shows as bright bone. An unsigned 12-bit image
    with an intercept above -100 HU cannot hold air at all, so such a slice is wrapped. The Kaggle
    community's fix (J. Howard's fastai notebook) adds 1000, subtracts 4096 from values that
    reach 4096 and sets the intercept to -1000. Implemented here in its general form, which keeps
    the file's own slope and intercept: a stored value s is taken as wrapped, and s - 4096 used,
    when s - 4096 still maps to at least -1000 HU (air). With slope 1 and intercept 0 this is
    exactly the community rule (s >= 3096 -> s - 4096); other slices are returned unchanged.
    """
    affected = (
        int(ds.get("BitsStored", 0)) == _RSNA_BITS_STORED
        and int(ds.get("PixelRepresentation", 1)) == 0
        and not lut.get("ModalityLUTSequence")
        and "RescaleIntercept" in lut
        and float(lut.RescaleIntercept) > _RSNA_MIN_INTERCEPT
    )
    if not affected:
        return stored
    wrap = 2**_RSNA_BITS_STORED
    signed = stored.astype(np.int32)
    slope, intercept = float(lut.get("RescaleSlope", 1.0)), float(lut.RescaleIntercept)
    signed[(signed - wrap) * slope + intercept >= _RSNA_FLOOR_HU] -= wrap
    return signed


def _to_hu(stored: np.ndarray, ds: Dataset, frame: int | None, path: Path) -> np.ndarray:
    lut = _modality_lut_dataset(ds, frame)
    if not lut.get("ModalityLUTSequence") and not ("RescaleSlope" in lut and "RescaleIntercept" in lut):
        raise InputDataError(
            path,
            "no RescaleSlope/RescaleIntercept and no Modality LUT Sequence: no mapping to HU",
        )
    return apply_modality_lut(_unwrap_rsna_12bit(stored, ds, lut), lut)


def read_slice_hu(path: str | Path) -> tuple[Dataset, np.ndarray]:
    """One single-frame CT file (RSNA style: a slice per file) as its header and (rows, columns) HU.

    The same decoding as a series: ``_decode`` (no pixel data, an undecodable file -> error naming
    it), RSNA's 12-bit wrap undone, then the modality LUT. Header values stay out of messages.
    """
    path = Path(path)
    with values_kept_out_of_logs():
        ds, pixels = _decode(path)
        if pixels.shape[0] != 1:
            raise InputDataError(path, f"holds {pixels.shape[0]} frames; one slice per file expected")
        try:
            return ds, np.asarray(_to_hu(pixels[0], ds, None, path), dtype=np.float32)
        except PipelineError:
            raise
        except Exception as exc:  # a header that parses but makes no sense
            raise InputDataError(path, f"pixel values cannot be mapped to HU ({_where(exc)})") from exc


def _window_of(ds: Dataset, frame: int | None) -> tuple[float, float] | None:
    """The file's own (first) window, for the ``file`` preset."""
    centre = _frame_value(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_value(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if centre is None or width is None:
        return None
    return _first(centre), _first(width)


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    """Read one file fully; its pixels as (frames, rows, columns)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputDataError(path, f"corrupt or truncated DICOM ({_where(exc)})") from exc
    if "PixelData" not in ds:
        raise InputDataError(path, "no pixel data (file truncated, or not an image)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # missing codec, truncated or corrupt pixel data
        raise InputDataError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    n_frames = int(ds.get("NumberOfFrames") or 1)
    return ds, pixels.reshape((n_frames, *pixels.shape[-2:]))


def _assemble(series: _Series, spacing_tolerance: float) -> nib.Nifti1Image:
    frames = series.frames
    _check_same_geometry(frames, series.folder)
    along_normal = _projections(frames)
    order = np.argsort(along_normal, kind="stable")
    frames = [frames[i] for i in order]
    _check_spacing(along_normal[order], series.folder, spacing_tolerance)

    slots_by_file: dict[Path, list[tuple[int | None, int]]] = {}
    for k, frame in enumerate(frames):
        slots_by_file.setdefault(frame.path, []).append((frame.index, k))
    volume: np.ndarray | None = None
    file_window = None
    for path, slots in sorted(slots_by_file.items()):
        ds, pixels = _decode(path)
        for index, k in slots:
            stored = pixels[0 if index is None else index]
            if volume is None:
                volume = np.empty((len(frames), *stored.shape), dtype=np.float32)
            if stored.shape != volume.shape[1:]:
                raise InputDataError(
                    path, f"image size {stored.shape} differs from the series' {volume.shape[1:]}"
                )
            volume[k] = _to_hu(stored, ds, index, path)
            if k == 0:
                file_window = _window_of(ds, index)

    first = frames[0]
    row_cosines, column_cosines = first.orientation[:3], first.orientation[3:]
    between_rows, between_columns = first.pixel_spacing
    if len(frames) > 1:
        slice_step = (frames[-1].position - first.position) / (len(frames) - 1)  # keeps gantry tilt
    elif first.thickness:
        slice_step = _normal(first.orientation) * first.thickness
    else:
        raise InputDataError(first.path, "single slice without SliceThickness: slice spacing unknown")
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosines * between_columns  # voxel axis i runs along a row (columns)
    affine_lps[:3, 1] = column_cosines * between_rows  # voxel axis j runs down a column (rows)
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = first.position
    image = _float_image(volume.transpose(2, 1, 0), _LPS_TO_RAS @ affine_lps)
    if file_window is not None:
        centre, width = file_window
        image.header["cal_min"], image.header["cal_max"] = centre - width / 2, centre + width / 2
    return image


def load_ct_hu(
    subject_dir: str | Path,
    preferred_thickness_mm: float = 5.0,
    spacing_tolerance: float = 0.1,
    sharp_kernel_words: Sequence[str] = SHARP_KERNEL_WORDS,
) -> nib.Nifti1Image:
    """Load a patient's CT as a float32 HU volume in RAS+ canonical orientation.

    Every file under ``subject_dir`` (any name, any depth) is tried; files that are not DICOM
    are ignored (a ``.dcm`` file that is not DICOM is an error), and so are DICOM files without a
    SeriesInstanceUID (DICOMDIR). Series rule: a series is usable when its Modality is CT, it is
    greyscale and not a localizer, every image has a position and orientation, it is axial (the
    slice normal is closer to the patient's z axis than to x or y, so gantry tilt is allowed) and
    it is not a bone or lung reconstruction (none of ``sharp_kernel_words`` in ConvolutionKernel
    or SeriesDescription). Among usable series: ORIGINAL\\PRIMARY first, then the SliceThickness
    closest to ``preferred_thickness_mm`` (default 5.0 mm, the thickness radiologists read head
    CT at), then the most slices. Slices are ordered by ImagePositionPatient projected on the
    slice normal, never by file name or InstanceNumber; a duplicate position, a missing slice or
    an irregular step (a gap differing from the nominal spacing by more than
    ``spacing_tolerance``, default 0.1 = 10 %) is an error naming the series' folder.

    HU come from pydicom's ``apply_modality_lut`` (Modality LUT Sequence, else Rescale
    Slope/Intercept; per frame for enhanced multi-frame CT). A file with neither is an error:
    the CT IOD makes them mandatory, and guessing 1/0 would silently shift every HU. RSNA's
    12-bit wrap is undone first (``_unwrap_rsna_12bit``). Compressed transfer syntaxes decode
    through pydicom's plugins (JPEG 2000 via Pillow / pylibjpeg-openjpeg, JPEG-LS and lossless
    JPEG via pylibjpeg-libjpeg). The series' own first WindowCenter/WindowWidth, when present, is
    kept in the header as ``cal_min``/``cal_max`` (center -/+ width/2) for the ``file`` preset.
    """
    if not 0 < spacing_tolerance < 1:
        raise ConfigError(f"spacing_tolerance must be between 0 and 1, got {spacing_tolerance}")
    subject_dir = Path(subject_dir)
    if not subject_dir.is_dir():
        raise InputDataError(subject_dir, "not a folder of DICOM files")
    with values_kept_out_of_logs():
        try:
            series = _choose_series(subject_dir, preferred_thickness_mm, sharp_kernel_words)
            return nib.as_closest_canonical(_assemble(series, spacing_tolerance))
        except PipelineError:
            raise
        except Exception as exc:  # a header that parses but makes no sense (found by fuzzing)
            raise InputDataError(subject_dir, f"inconsistent DICOM series ({_where(exc)})") from exc


def _where(exc: BaseException) -> str:
    """An exception's type and the function it came from, never its message: messages about a
    header may quote its values, which can identify the patient."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{type(exc).__name__} in {frames[-1].name}" if frames else type(exc).__name__


# --------------------------------------------------------------------------- intensities


def _check_window(center: float, width: float) -> None:
    if not (np.isfinite(center) and np.isfinite(width) and width > 1):
        raise ConfigError(
            f"CT window needs a finite center and a width > 1 HU, got center={center}, width={width}"
        )


def window_hu(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] with DICOM's LINEAR VOI function (PS3.3 C.11.2.1.2.1).

    Identical to pydicom's ``apply_voi_lut`` / ``apply_windowing`` rescaled from its output range
    to [0, 1], so a window means exactly what it means on a DICOM viewer.
    """
    _check_window(center, width)
    shifted_center, shifted_width = center - 0.5, width - 1.0
    windowed = (np.asarray(hu, dtype=np.float64) - shifted_center) / shifted_width + 0.5
    return np.clip(windowed, 0.0, 1.0).astype(np.float32)


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {tuple(percentiles)}")
    return low, high


def normalise_mri(data: np.ndarray, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Scale an MR volume to [0, 1] between percentiles of its foreground.

    MR signal has no physical unit (unlike HU), so each scan is scaled on its own. The
    percentiles are taken over the head only (Otsu's threshold separates it from air), because the
    share of background changes with the field of view and would otherwise move the scaling.
    Otsu sees the volume clipped at its own upper percentile, so a few extreme voxels cannot drag
    the threshold up into the tissue. Clipping at the upper percentile (default 99.5) keeps bright
    voxels (vessels, fat, artefacts) from compressing tissue contrast; the lower one (default
    0.5) sets dark tissue near 0. Raises ValueError for a volume with no contrast.
    """
    low_pct, high_pct = _check_percentiles(percentiles)
    data = np.asarray(data, dtype=np.float32)
    if data.size == 0 or float(data.max()) == float(data.min()):
        raise ValueError("volume is constant: no foreground to normalise")
    foreground = data[data > threshold_otsu(np.minimum(data, np.percentile(data, high_pct)))]
    low, high = np.percentile(foreground, [low_pct, high_pct])
    if high <= low:
        raise ValueError(f"foreground percentiles {low_pct} and {high_pct} coincide ({low:g})")
    scaled = (np.clip(data, low, high) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- geometry


def _float_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A fresh float32 NIfTI in scanner coordinates, with no header carried over from the input."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.set_qform(affine, code="scanner")
    image.set_sform(affine, code="scanner")
    image.header.set_xyzt_units("mm")
    return image


def _anti_alias(data: np.ndarray, zooms_in: np.ndarray, zooms_out: np.ndarray) -> np.ndarray:
    """Gaussian prefilter before downsampling (sigma = (factor - 1) / 2 voxels, scikit-image's rule)."""
    sigma = np.maximum(0.0, (np.asarray(zooms_out, float) / np.asarray(zooms_in, float) - 1.0) / 2.0)
    return ndimage.gaussian_filter(data, sigma, mode="nearest") if sigma.any() else data


def resample_isotropic(
    image: nib.Nifti1Image, voxel_mm: float = 2.0, anti_alias: bool = True
) -> nib.Nifti1Image:
    """Resample onto an axis-aligned RAS+ grid of ``voxel_mm`` cubes covering the image (linear).

    Points outside the field of view take the image's minimum (air), not 0, which is soft tissue
    in HU. With ``anti_alias`` (default) a Gaussian prefilter stops downsampling from aliasing
    noise and fine structures.
    """
    if not voxel_mm > 0:
        raise ConfigError(f"voxel_mm must be > 0, got {voxel_mm}")
    data = np.asarray(image.dataobj, dtype=np.float32)
    fill = float(data.min())
    if anti_alias:
        data = _anti_alias(data, nib.affines.voxel_sizes(image.affine), np.full(3, voxel_mm))
    resampled = resample_to_output(
        nib.Nifti1Image(data, image.affine), voxel_sizes=voxel_mm, order=1, cval=fill
    )
    return _float_image(np.asarray(resampled.dataobj), resampled.affine)


def resample_to_grid(
    image: nib.Nifti1Image, shape: Sequence[int], affine: np.ndarray, anti_alias: bool = True
) -> nib.Nifti1Image:
    """Resample ``image`` onto the grid (``shape``, ``affine``) through world coordinates (linear).

    Both are expected in RAS+ canonical order, so the anti-aliasing filter can compare voxel
    sizes axis by axis.
    """
    data = np.asarray(image.dataobj, dtype=np.float32)
    fill = float(data.min())
    if anti_alias:
        data = _anti_alias(data, nib.affines.voxel_sizes(image.affine), nib.affines.voxel_sizes(affine))
    resampled = resample_from_to(
        nib.Nifti1Image(data, image.affine), (tuple(shape), affine), order=1, cval=fill
    )
    return _float_image(np.asarray(resampled.dataobj), affine)


def load_mri(nifti_path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI volume (an MRI, or a phantom's partner in either modality) as float32 RAS+.

    A trailing singleton 4th dimension is dropped; any other shape that is not 3-D, a NaN or
    infinite voxel, or a singular affine is an error naming the file.
    """
    nifti_path = Path(nifti_path)
    try:
        image = nib.load(nifti_path)
        shape = image.shape
        if len(shape) == 4 and shape[3] == 1:
            data = image.get_fdata(dtype=np.float32)[..., 0]
        elif len(shape) == 3:
            data = image.get_fdata(dtype=np.float32)
        else:
            raise InputDataError(nifti_path, f"expected a 3-D volume, got shape {shape}")
    except PipelineError:
        raise
    except Exception as exc:  # nibabel signals unreadable files with many exception types
        raise InputDataError(
            nifti_path, f"not a readable NIfTI volume ({type(exc).__name__}: {exc})"
        ) from exc
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputDataError(nifti_path, f"{bad} voxels are NaN or infinite")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputDataError(
            nifti_path, "affine holds NaN or infinite values: voxel-to-world geometry unknown"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputDataError(nifti_path, "affine is singular: voxel-to-world geometry unknown")
    try:
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    except Exception as exc:  # an affine nibabel cannot reorient (found by fuzzing)
        raise InputDataError(nifti_path, f"affine cannot be reoriented to RAS+ ({_where(exc)})") from exc
    return _float_image(np.asarray(canonical.dataobj), canonical.affine)


# --------------------------------------------------------------------------- stages


def _save(data: np.ndarray, affine: np.ndarray, out_path: str | Path) -> Path:
    with atomic_path(out_path) as tmp:
        nib.save(_float_image(data, affine), tmp)
    return Path(out_path)


def _resolve_window(preset: str | None, center: float, width: float) -> tuple[float, float] | None:
    """(center, width) to use, or None when the series' own window must be read ("file")."""
    if preset is None:
        return center, width
    if preset == FILE_WINDOW:
        return None
    if preset not in WINDOW_PRESETS:
        raise ConfigError(f"unknown window preset {preset!r}; choose from {[*WINDOW_PRESETS, FILE_WINDOW]}")
    return WINDOW_PRESETS[preset]


def window_ct(
    subject_dir: str | Path,
    out_path: str | Path,
    center: float = 40.0,
    width: float = 80.0,
    preset: str | None = None,
    voxel_mm: float = 2.0,
    preferred_thickness_mm: float = 5.0,
    spacing_tolerance: float = 0.1,
    sharp_kernel_words: Sequence[str] = SHARP_KERNEL_WORDS,
    anti_alias: bool = True,
) -> Path:
    """CT stage: DICOM folder -> HU (``load_ct_hu``) -> isotropic ``voxel_mm`` grid -> window.

    ``center``/``width`` (HU, default 40/80: the brain window) are used unless ``preset`` names
    one of ``WINDOW_PRESETS`` or "file" (the series' own WindowCenter/WindowWidth). HU are
    resampled before windowing because interpolating attenuation is physically meaningful.
    """
    window = _resolve_window(preset, center, width)
    if window is not None:
        _check_window(*window)
    hu = load_ct_hu(subject_dir, preferred_thickness_mm, spacing_tolerance, sharp_kernel_words)
    if window is None:
        low, high = float(hu.header["cal_min"]), float(hu.header["cal_max"])
        if not high - low > 1:
            raise InputDataError(
                subject_dir, "window preset 'file' but the series has no usable WindowCenter/WindowWidth"
            )
        window = ((low + high) / 2, high - low)
    isotropic = resample_isotropic(hu, voxel_mm, anti_alias)
    return _save(window_hu(np.asarray(isotropic.dataobj), *window), isotropic.affine, out_path)


def standardise_mri(
    nifti_path: str | Path,
    out_path: str | Path,
    voxel_mm: float = 2.0,
    percentiles: Sequence[float] = (0.5, 99.5),
    anti_alias: bool = True,
) -> Path:
    """MR stage: NIfTI -> RAS+ -> isotropic ``voxel_mm`` grid -> ``normalise_mri``."""
    _check_percentiles(percentiles)
    isotropic = resample_isotropic(load_mri(nifti_path), voxel_mm, anti_alias)
    try:
        normalised = normalise_mri(np.asarray(isotropic.dataobj), percentiles)
    except ValueError as exc:
        raise InputDataError(nifti_path, str(exc)) from exc
    return _save(normalised, isotropic.affine, out_path)


def standardise_partner(
    partner_path: str | Path,
    partner_modality: str,
    grid_path: str | Path,
    out_path: str | Path,
    center: float = 40.0,
    width: float = 80.0,
    percentiles: Sequence[float] = (0.5, 99.5),
    anti_alias: bool = True,
) -> Path:
    """Partner stage: resample a phantom's partner (same anatomy, other modality, same world
    coordinates) onto its subject's already written grid, then normalise it for its own modality:
    a CT partner (HU) through ``window_hu(center, width)``, an MR partner through ``normalise_mri``.
    """
    modality = partner_modality.upper()
    if modality not in MODALITIES:
        raise ConfigError(f"partner modality must be one of {MODALITIES}, got {partner_modality!r}")
    if modality == "CT":
        _check_window(center, width)
    else:
        _check_percentiles(percentiles)
    try:
        grid = nib.load(grid_path)
    except Exception as exc:
        raise InputDataError(grid_path, f"not a readable NIfTI grid ({type(exc).__name__}: {exc})") from exc
    if len(grid.shape) != 3:
        raise InputDataError(grid_path, f"expected a 3-D grid, got shape {grid.shape}")
    on_grid = np.asarray(
        resample_to_grid(load_mri(partner_path), grid.shape, grid.affine, anti_alias).dataobj
    )
    if modality == "CT":
        return _save(window_hu(on_grid, center, width), grid.affine, out_path)
    try:
        normalised = normalise_mri(on_grid, percentiles)
    except ValueError as exc:
        raise InputDataError(partner_path, str(exc)) from exc
    return _save(normalised, grid.affine, out_path)


# --------------------------------------------------------------------------- CLI


def _add_knobs(command: argparse.ArgumentParser, stage, flags: dict[str, dict]) -> None:
    """Add one optional flag per knob of ``stage``. Flags default to SUPPRESS so the stage's
    signature stays the one place for defaults; --help quotes them from there."""
    for name, options in flags.items():
        default = inspect.signature(stage).parameters[name].default
        command.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"default: {default}",
            **options,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.preprocess.window", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    number = {"type": float}
    percentiles = {"type": float, "nargs": 2, "metavar": ("LOW", "HIGH")}
    switch = {"action": argparse.BooleanOptionalAction}

    ct = commands.add_parser("ct", help="DICOM patient folder -> windowed CT volume")
    ct.add_argument("--input", required=True, type=Path, help="patient folder holding DICOM files")
    ct.add_argument("--output", required=True, type=Path)
    _add_knobs(
        ct,
        window_ct,
        {
            "center": number,
            "width": number,
            "preset": {"choices": [*WINDOW_PRESETS, FILE_WINDOW]},
            "voxel_mm": number,
            "preferred_thickness_mm": number,
            "spacing_tolerance": number,
            "sharp_kernel_words": {"nargs": "+"},
            "anti_alias": switch,
        },
    )

    mri = commands.add_parser("mri", help="NIfTI MRI -> normalised volume")
    mri.add_argument("--input", required=True, type=Path)
    mri.add_argument("--output", required=True, type=Path)
    _add_knobs(mri, standardise_mri, {"voxel_mm": number, "percentiles": percentiles, "anti_alias": switch})

    partner = commands.add_parser("partner", help="phantom partner NIfTI -> its subject's grid, normalised")
    partner.add_argument("--input", required=True, type=Path)
    partner.add_argument("--modality", required=True, choices=MODALITIES)
    partner.add_argument("--grid", required=True, type=Path, help="the subject's windowed volume")
    partner.add_argument("--output", required=True, type=Path)
    _add_knobs(
        partner,
        standardise_partner,
        {
            "center": number,
            "width": number,
            "percentiles": percentiles,
            "anti_alias": switch,
        },
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, source, target = args.pop("command"), args.pop("input"), args.pop("output")
    try:
        if command == "ct":
            window_ct(source, target, **args)
        elif command == "mri":
            standardise_mri(source, target, **args)
        else:
            standardise_partner(source, args.pop("modality"), args.pop("grid"), target, **args)
    except PipelineError as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
