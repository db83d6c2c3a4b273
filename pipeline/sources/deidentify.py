"""De-identification at the door: only de-identified copies of a dataset ever land in ``data/raw``.

Every source (the built-in phantoms too, so the real path runs on every build) is laid out in a
private staging folder outside the repository, pseudonymised there (pipeline.privacy), and then
written into ``data/raw/<dataset>`` by :func:`deidentify_dataset`, file by file:

* **DICOM**: the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, with the
  action of every attribute taken from Table E.1-1 as shipped by ``dicom-anonymizer``
  (KitwareMedical; its 2026c table, ``PROFILE_TABLE``), not from a list kept here. On top of it:
  every UID is replaced by ``2.25.<128 bits of HMAC-SHA256(salt, UID)>`` (the same original UID
  always gets the same new one, so series still group and studies still link, and a rerun writes
  the same bytes); PatientID becomes the salted pseudonym of the original id (pipeline.privacy),
  so the files of one patient still group where no folder says so (RSNA's one slice per file),
  while PatientName and the other ids are emptied or replaced by a dummy; all private tags are removed; dates are removed (no stage needs an interval);
  SeriesDescription keeps only the reconstruction words windowing reads to skip bone and lung
  series (``DESCRIPTION_WORDS``: the profile's Clean Descriptors option). Pixel data and every
  attribute that defines geometry and intensity (spacing, positions, orientation, rescale,
  windows, photometric interpretation, bit depth) are outside the table and kept as they are.
  The file records what was done: PatientIdentityRemoved YES, DeidentificationMethod and its
  code sequence (DCM 113100 Basic profile, 113105 Clean Descriptors), and
  LongitudinalTemporalInformationModified REMOVED.
* **Pixel-level risk**: a DICOM file that declares burned-in annotation, a secondary capture or
  a screen save, is left out and listed with the reason in ``deidentification.json``
  (``on_pixel_risk: exclude``) or stops the run (``stop``); a DICOMDIR (an index of patients) is
  always left out.
* **NIfTI**: the header's text fields (descrip, aux_file, intent_name, db_name) are blanked and
  header extensions (which may carry a whole DICOM header) dropped; voxel bytes are copied as
  they are.
* **JPEG / PNG**: metadata segments and chunks (EXIF, XMP, comments, text, time, private chunks)
  are removed by rewriting the container only: the compressed pixels are copied byte for byte.
* Any other file (the layout's own tables, download sums) is copied as it is.

After writing, every DICOM file is checked against its original (:func:`check_deidentified`):
a file that still holds an identifying value stops the run, naming the file and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import hashlib
import hmac
import io
import json
import logging
import re
import shutil
import struct
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import nibabel as nib
import pydicom
from dicomanonymizer import simpledicomanonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.sequence import Sequence

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError
from pipeline.labels import SHARP_KERNEL_WORDS
from pipeline.privacy import pseudonym, values_kept_out_of_logs

log = logging.getLogger(__name__)

LIBRARY = "dicom-anonymizer"
#: PS3.15 Table E.1-1 edition, as a module of dicom-anonymizer's dicom_anonymization_databases.
PROFILE_TABLE = "dicomfields_2026c"
RECORD_FILE = "deidentification.json"
PIXEL_RISK_ACTIONS = ("exclude", "stop")
#: UIDs derived from a hash live under 2.25 (PS3.5 B.2: a UUID-style integer root).
UID_ROOT = "2.25."
UID_HASH_BYTES = 16
#: SeriesDescription words windowing reads (bone / lung reconstructions); nothing else is kept.
DESCRIPTION_WORDS = SHARP_KERNEL_WORDS
#: Secondary Capture Image Storage and its multi-frame variants share this SOP Class prefix.
SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"
MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"
#: DeidentificationMethodCodeSequence items (CID 7050): code value -> meaning.
PROFILE_CODES = {"113100": "Basic Application Confidentiality Profile", "113105": "Clean Descriptors Option"}
DEIDENTIFICATION_METHOD = (
    "PS3.15 E.1-1 Basic Profile via dicom-anonymizer",
    "UIDs and PatientID from a salted hash",
    "dates and private tags removed",
    "SeriesDescription cleaned to reconstruction words",
)
#: Original values shorter than this are not searched for elsewhere in a file (too common).
MIN_SEARCHED_CHARS = 4
#: VRs searched for leftover identity: free text, names and dates (numbers and UIDs could hold
#: an id by chance; coded strings such as ImageType hold defined terms, never a name).
SEARCHED_VRS = frozenset({"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"})
#: Besides every person name, the values of these kinds of fields (PatientID, AccessionNumber,
#: PatientBirthDate...) are searched for in the whole header; other fields are checked in place
#: only (an InstitutionName is often also part of a Manufacturer that is rightly kept).
SEARCHED_FIELD_ENDINGS = ("ID", "IDs", "Number", "Date")
#: Text fields of a NIfTI-1 / NIfTI-2 header.
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: PNG chunks needed to decode and display an image (PNG spec 11.2-11.3); the rest is dropped.
PNG_KEPT_CHUNKS = frozenset(
    {
        b"IHDR",
        b"PLTE",
        b"IDAT",
        b"IEND",
        b"tRNS",
        b"gAMA",
        b"cHRM",
        b"sRGB",
        b"iCCP",
        b"sBIT",
        b"bKGD",
        b"pHYs",
    }
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
#: JPEG APPn segments kept: APP0 (JFIF), APP2 (ICC colour profile), APP14 (Adobe colour transform).
JPEG_KEPT_APP = frozenset({0xE0, 0xE2, 0xEE})
JPEG_COMMENT = 0xFE
JPEG_SOS = 0xDA
JPEG_EOI = 0xD9
#: Markers without a length field: TEM and RST0-7.
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: Bytes after 0xFF inside entropy-coded data that do not end it: stuffing (0x00) and RST0-7.
JPEG_IN_SCAN = frozenset({0x00, *range(0xD0, 0xD8)})


@dataclasses.dataclass
class Summary:
    """What one run did, written to ``deidentification.json`` (no original value in it)."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    excluded: list[dict[str, str]] = dataclasses.field(default_factory=list)
    dropped_rows: list[str] = dataclasses.field(default_factory=list)

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1


class PixelRiskError(InputDataError):
    """A DICOM file whose pixels may show identity (burned-in text, a screen capture)."""


# ------------------------------------------------------------------------------ DICOM


def salted_uid(original: str, salt: str) -> str:
    """``2.25.`` + 128 bits of HMAC-SHA256(salt, original): stable, and irreversible without the salt."""
    digest = hmac.new(salt.encode(), original.encode(), hashlib.sha256).digest()[:UID_HASH_BYTES]
    return UID_ROOT + str(int.from_bytes(digest, "big"))


@functools.cache
def _profile_table() -> dict:
    return simpledicomanonymizer.initialize_actions(PROFILE_TABLE)


def _profile_actions() -> dict:
    """Table E.1-1's Basic profile: tag (or tag range) -> action, from the library's table."""
    return dict(_profile_table())


def _uids(ds: Dataset) -> Iterator[str]:
    """Every UID value in a dataset and its file meta, sequences included."""
    for dataset in (getattr(ds, "file_meta", None) or Dataset(), ds):
        for element in dataset.iterall():
            if element.VR == "UI" and element.value:
                values = list(element.value) if element.VM > 1 else [element.value]
                yield from (str(v) for v in values if v)


def pixel_risk(ds: Dataset) -> str | None:
    """Why a file's pixels may show identity, or None."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "BurnedInAnnotation is YES (text burned into the pixels)"
    sop_class = str(
        ds.get("SOPClassUID", "") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID", "")
    )
    if sop_class == SECONDARY_CAPTURE_CLASS or sop_class.startswith(SECONDARY_CAPTURE_CLASS + "."):
        return "secondary capture (screenshots and scanned documents often show names)"
    image_type = ds.get("ImageType") or ()
    words = [str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]
    if "SCREEN SAVE" in words:
        return "ImageType SCREEN SAVE (a screenshot, e.g. a dose report)"
    return None


def _clean_description(text: str) -> str:
    return " ".join(word for word in str(text).upper().split() if word in DESCRIPTION_WORDS)


def deidentify_dicom_dataset(ds: Dataset, salt: str) -> None:
    """Apply the Basic profile (plus the choices in the module docstring) to ``ds`` in place."""
    description = _clean_description(ds.get("SeriesDescription", ""))
    patient_id = str(ds.get("PatientID", "") or "").strip()
    # The library replaces UIDs through its module-level map; filling it first with salted
    # values makes every replacement (sequences included) stable across files and runs.
    simpledicomanonymizer.dictionary.clear()
    simpledicomanonymizer.dictionary.update({uid: salted_uid(uid, salt) for uid in _uids(ds)})
    try:
        simpledicomanonymizer.anonymize_dataset(ds, delete_private_tags=True, base_rules_gen=_profile_actions)
    finally:
        simpledicomanonymizer.dictionary.clear()
    if description:
        ds.SeriesDescription = description
    if patient_id:  # slices of one patient still group (RSNA: one slice per file, no folders)
        ds.PatientID = pseudonym(patient_id, salt)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = list(DEIDENTIFICATION_METHOD)
    codes = []
    for value, meaning in PROFILE_CODES.items():
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _identifying_elements(ds: Dataset) -> Iterator[DataElement]:
    """Every non-empty top-level attribute (file meta included) the profile changes."""
    actions = _profile_actions()
    keep = simpledicomanonymizer.keep
    for dataset in (getattr(ds, "file_meta", None) or Dataset(), ds):
        for element in dataset:
            if element.tag.is_private or element.VR == "SQ" or element.value in (None, "", b""):
                continue
            if actions.get((element.tag.group, element.tag.element), keep) is not keep:
                yield element


@functools.cache
def _placeholders() -> frozenset[str]:
    """The dummy values the library writes (\"ANONYMIZED\", 00010101...): finding one of them
    unchanged means the input was de-identified before, not that identity survived."""
    values = set()
    for vr, sample in (("PN", "A"), ("LO", "A"), ("CS", "A"), ("DA", "20000101"), ("TM", "1200"),
                       ("DT", "20000101"), ("AS", "040Y"), ("DS", "1"), ("IS", "1"), ("UR", "a")):  # fmt: skip
        for action in (simpledicomanonymizer.replace_element, simpledicomanonymizer.empty_element):
            element = DataElement(0x00100010, vr, sample)
            action(element)
            values.add(str(element.value))
    return frozenset(values)


def _header_text(ds: Dataset) -> str:
    """Every text value in a header, sequences included, upper-cased for searching."""
    parts = []
    for dataset in (getattr(ds, "file_meta", None) or Dataset(), ds):
        parts.extend(str(e.value) for e in dataset.iterall() if e.VR in SEARCHED_VRS and e.value is not None)
    return "\x00".join(parts).upper()


def _holds_word(text: str, word: str) -> bool:
    """``word`` in ``text`` not as part of a longer word (so "ANON" is not found in "ANONYMIZED")."""
    return re.search(rf"(?<![A-Z0-9_]){re.escape(word.upper())}(?![A-Z0-9_])", text) is not None


def check_deidentified(original: Dataset, written: Path) -> None:
    """Stop (InputDataError naming the file and the field) when ``written`` still holds an
    identifying value of ``original``: the same value in a field the profile changes; a person
    name, id, number or date of the original anywhere in the written header's text; a private tag."""
    ds = pydicom.dcmread(written, stop_before_pixels=True)
    text = _header_text(ds)
    for element in _identifying_elements(original):
        field, value = element.keyword or str(element.tag), str(element.value)
        kept = (ds.file_meta if element.tag.group == 0x0002 else ds).get(element.tag)
        unchanged = kept is not None and str(kept.value) == value
        if unchanged and value not in _placeholders() and value != _clean_description(value):
            raise InputDataError(written, f"de-identification left {field} unchanged")
        if element.VR == "PN" or (element.VR in SEARCHED_VRS and field.endswith(SEARCHED_FIELD_ENDINGS)):
            words = value.replace("^", " ").split() if element.VR == "PN" else [value.strip()]
            for word in words:
                if (
                    len(word) >= MIN_SEARCHED_CHARS
                    and word not in _placeholders()
                    and _holds_word(text, word)
                ):
                    raise InputDataError(written, f"the value of {field} is still in the header")
    private = [str(e.tag) for e in ds.iterall() if e.tag.is_private]
    if private:
        raise InputDataError(written, f"private tags remain: {', '.join(private[:5])}")


def deidentify_dicom_file(source: Path, target: Path, salt: str) -> None:
    try:
        ds = pydicom.dcmread(source)
        original = pydicom.dcmread(source, stop_before_pixels=True)  # untouched, for the check
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise InputDataError(source, f"unreadable DICOM file ({exc})") from exc
    deidentify_dicom_dataset(ds, salt)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    check_deidentified(original, target)


# ------------------------------------------------------------------------------ NIfTI


def deidentify_nifti_file(source: Path, target: Path) -> None:
    """Blank the header's text fields and drop its extensions; voxel bytes are copied unchanged."""
    try:
        image = nib.load(source)
    except Exception as exc:  # nibabel signals bad files with many exception types
        raise InputDataError(source, f"not a readable NIfTI image ({exc})") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputDataError(source, f"{type(image).__name__} is not a single-file NIfTI image")
    opener = gzip.open if source.name.endswith(".gz") else open
    with opener(source, "rb") as handle:
        payload = handle.read()
    # The header as stored (a loaded image's header has its offset reset), so voxels start where it says.
    header = type(image.header).from_fileobj(io.BytesIO(payload))
    original_offset = header.get_data_offset()
    for field in NIFTI_TEXT_FIELDS:
        header[field] = b""
    header.extensions.clear()
    header.set_data_offset(header.single_vox_offset)  # header + the 4-byte extension flag
    stream = io.BytesIO()
    header.write_to(stream)
    stream.write(b"\x00" * (int(header["vox_offset"]) - stream.tell()))
    stream.write(payload[original_offset:])
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.name.endswith(".gz"):
        with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            out.write(stream.getvalue())  # no name or time in the gzip header
    else:
        target.write_bytes(stream.getvalue())


# ------------------------------------------------------------------------------ JPEG / PNG


def strip_png_metadata(data: bytes, source: Path) -> bytes:
    """The PNG with only the chunks needed to show it (PNG_KEPT_CHUNKS); IDAT copied as is."""
    out, position = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            raise InputDataError(source, "truncated PNG chunk")
        if kind in PNG_KEPT_CHUNKS:
            out.append(data[position:end])
        position = end
        if kind == b"IEND":
            break
    return b"".join(out)


def strip_jpeg_metadata(data: bytes, source: Path) -> bytes:
    """The JPEG without comments and APPn segments other than JPEG_KEPT_APP; scans copied as is."""
    if not data.startswith(JPEG_SOI):
        raise InputDataError(source, "not a JPEG file")
    out, position = [JPEG_SOI], 2
    while position < len(data):
        if data[position] != 0xFF:
            raise InputDataError(source, f"corrupt JPEG: no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == JPEG_EOI:
            out.append(data[position : position + 2])
            break
        if marker in JPEG_STANDALONE:
            out.append(data[position : position + 2])
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        end = position + 2 + length
        if end > len(data):
            raise InputDataError(source, "truncated JPEG segment")
        is_app = 0xE0 <= marker <= 0xEF
        if not (marker == JPEG_COMMENT or (is_app and marker not in JPEG_KEPT_APP)):
            out.append(data[position:end])
        position = end
        if marker == JPEG_SOS:  # entropy-coded data runs to the next marker that is not RST / stuffing
            scan_end = data.find(b"\xff", position)
            while scan_end != -1 and scan_end + 1 < len(data) and data[scan_end + 1] in JPEG_IN_SCAN:
                scan_end = data.find(b"\xff", scan_end + 1)
            scan_end = len(data) if scan_end == -1 else scan_end
            out.append(data[position:scan_end])
            position = scan_end
    return b"".join(out)


# ------------------------------------------------------------------------------ datasets


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if is_dicom(path):
        return "dicom"
    if path.suffix.lower() in DICOM_SUFFIXES:  # no preamble: cannot be told from other bytes safely
        raise InputDataError(path, "named like a DICOM file but has no DICOM preamble ('DICM' missing)")
    return "other"


def _deidentify_file(
    source: Path, target: Path, relative: str, salt: str, on_pixel_risk: str, summary: Summary
) -> None:
    kind = _kind(source)
    if kind == "dicom":
        header = pydicom.dcmread(source, stop_before_pixels=True)
        sop_class = str(header.get("file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
        if sop_class == MEDIA_DIRECTORY_CLASS:
            summary.excluded.append({"path": relative, "reason": "DICOMDIR (an index listing patients)"})
            return
        risk = pixel_risk(header)
        if risk is not None:
            if on_pixel_risk == "stop":
                raise PixelRiskError(
                    Path(relative), f"{risk}; set deidentify.on_pixel_risk: exclude to leave such files out"
                )
            summary.excluded.append({"path": relative, "reason": risk})
            log.warning("%s: left out: %s", relative, risk)
            return
        deidentify_dicom_file(source, target, salt)
    elif kind == "nifti":
        deidentify_nifti_file(source, target)
    elif kind in ("png", "jpeg"):
        strip = strip_png_metadata if kind == "png" else strip_jpeg_metadata
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(strip(source.read_bytes(), source))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    summary.count(kind)


def _drop_rows_without_files(out: Path, summary: Summary) -> None:
    """Index rows whose image (or whole study) was left out are removed from subjects / images.tsv."""
    for index in ("subjects.tsv", "images.tsv"):
        path = out / index
        if not path.exists():
            continue
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            columns, rows = list(reader.fieldnames or ()), list(reader)
        kept = []
        for row in rows:
            image = out / row["path"]
            if image.is_file() or (image.is_dir() and any(p.is_file() for p in image.rglob("*"))):
                kept.append(row)
            else:
                summary.dropped_rows.append(f"{index}: {row['path']}")
        if len(kept) < len(rows):
            with open(path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n")
                writer.writeheader()
                writer.writerows(kept)


def deidentify_dataset(
    source: str | Path, out_dir: str | Path, salt: str, on_pixel_risk: str = "exclude"
) -> Summary:
    """Write de-identified copies of every file under ``source`` to ``out_dir`` (atomically),
    with ``deidentification.json`` saying what was done and what was left out, and why."""
    if on_pixel_risk not in PIXEL_RISK_ACTIONS:
        raise ConfigError(
            f"deidentify.on_pixel_risk: must be one of {PIXEL_RISK_ACTIONS}, got {on_pixel_risk!r}"
        )
    source = Path(source)
    summary = Summary()
    # pydicom's value-validation warnings quote header values (names, UIDs): keep them out of the logs.
    with atomic_dir(out_dir) as tmp, values_kept_out_of_logs():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            if relative == RECORD_FILE:  # an earlier run's record (data de-identified before)
                continue
            _deidentify_file(path, tmp / relative, relative, salt, on_pixel_risk, summary)
        _drop_rows_without_files(tmp, summary)
        record = {
            "library": f"{LIBRARY} {version(LIBRARY)}",
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "profile_table": PROFILE_TABLE,
            "options": list(PROFILE_CODES.values()),
            "dicom": list(DEIDENTIFICATION_METHOD),
            "nifti": f"text fields blanked ({', '.join(NIFTI_TEXT_FIELDS)}); header extensions dropped",
            "jpeg_png": "metadata segments and chunks removed; compressed pixels unchanged",
            "on_pixel_risk": on_pixel_risk,
            "files": dict(sorted(summary.counts.items())),
            "excluded": summary.excluded,
            "dropped_index_rows": summary.dropped_rows,
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "de-identified %s; %d file(s) left out",
        ", ".join(f"{n} {kind}" for kind, n in sorted(summary.counts.items())) or "nothing",
        len(summary.excluded),
    )
    return summary
