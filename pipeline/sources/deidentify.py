"""De-identification at the door: only de-identified copies of a dataset ever land in ``data/raw``.

Every source (the built-in phantoms too, so the real path runs on every build) is laid out in a
private staging folder outside the repository, pseudonymised there (pipeline.privacy), and then
written into ``data/raw/<dataset>`` by :func:`deidentify_dataset`, file by file. What a file is
is decided by its content, never by its name alone:

* **DICOM** (a Part 10 file, or a data set written without preamble and file meta, as PACS
  exports often are: ``IM000001``): the DICOM PS3.15 Annex E Basic Application Level
  Confidentiality Profile at every depth (pipeline.sources.dicom_profile: Table E.1-1 as shipped
  by ``dicom-anonymizer``, applied into every kept sequence; every UID that is not a well-known
  DICOM UID replaced by ``2.25.<128 bits of HMAC-SHA256(salt, UID)>``, so references between
  files still resolve and a rerun writes the same bytes). On top of the table: PatientID becomes
  the salted pseudonym of the original id (pipeline.privacy), so the files of one patient still
  group where no folder says so (RSNA's one slice per file); all private tags are removed; dates
  are removed (no stage needs an interval); SeriesDescription keeps only the reconstruction words
  windowing reads to skip bone and lung series (``DESCRIPTION_WORDS``: the profile's Clean
  Descriptors option); the file meta and the 128-byte preamble (which may hold a TIFF header in
  dual-format files) are written afresh. Pixel data and every attribute that defines geometry
  and intensity are outside the table and kept as they are. The file records what was done:
  PatientIdentityRemoved YES, DeidentificationMethod and its code sequence (DCM 113100 Basic
  profile, 113105 Clean Descriptors), and LongitudinalTemporalInformationModified REMOVED.
* **Pixel-level risk**: a DICOM file that declares burned-in annotation, a secondary capture or
  a screen save, is left out and listed with the reason in ``deidentification.json``
  (``on_pixel_risk: exclude``) or stops the run (``stop``); a DICOMDIR (an index of patients) is
  always left out.
* **NIfTI**: the header's text fields (descrip, aux_file, intent_name, db_name) are blanked and
  header extensions (which may carry a whole DICOM header) dropped; voxel bytes are copied as
  they are.
* **JPEG / PNG**: metadata segments and chunks (EXIF, XMP, comments, text, time, private chunks)
  are removed by rewriting the container only: the compressed pixels are copied byte for byte.
* **gzip**: the stream is opened and its content judged as above; a gzipped DICOM, JPEG or PNG
  is de-identified and gzipped again under the same name (no name or time in the gzip header).
* **zip and tar archives** that hold DICOM, NIfTI, JPEG, PNG or another archive stop the run,
  naming the archive: their members would otherwise pass the door untouched. Unpack them first.
* Any other file (the layout's own tables, download sums) is copied as it is.

After writing, every DICOM file is read back and checked against its original at every depth
(:func:`check_deidentified`): a file that still holds an identifying value stops the run, naming
the file and the path of the element; nothing of the run is left in ``data/raw``.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import re
import shutil
import struct
import tarfile
import zipfile
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.atomic import atomic_dir, atomic_path
from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess.window import SHARP_KERNEL_WORDS, values_kept_out_of_logs
from pipeline.privacy import pseudonym
from pipeline.sources.dicom_profile import PROFILE_TABLE, apply_profile, find_survivor, salted_uid

__all__ = ["salted_uid"]  # re-exported: tcia names its cached series by the UIDs written here

log = logging.getLogger(__name__)

LIBRARY = "dicom-anonymizer"
RECORD_FILE = "deidentification.json"
PIXEL_RISK_ACTIONS = ("exclude", "stop")
#: SeriesDescription words windowing reads (bone / lung reconstructions); nothing else is kept.
DESCRIPTION_WORDS = SHARP_KERNEL_WORDS
#: Secondary Capture Image Storage and its multi-frame variants share this SOP Class prefix.
SECONDARY_CAPTURE_CLASS = "1.2.840.10008.5.1.4.1.1.7"
MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"
#: DeidentificationMethodCodeSequence items (CID 7050): code value -> meaning.
PROFILE_CODES = {"113100": "Basic Application Confidentiality Profile", "113105": "Clean Descriptors Option"}
DEIDENTIFICATION_METHOD = (
    "PS3.15 E.1-1 Basic Profile at every depth",
    "UIDs and PatientID from a salted hash",
    "dates and private tags removed",
    "SeriesDescription cleaned to reconstruction words",
)
#: The encoding a data set without file meta was read in -> the transfer syntax to record.
RAW_ENCODINGS = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
#: Text fields of a NIfTI-1 / NIfTI-2 header.
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Bytes read to tell what a file is: the DICOM preamble and prefix end at 132, tar's magic at 262.
HEAD_BYTES = 512
DICOM_PREFIX_AT = slice(128, 132)
#: A composite instance always holds SOPClassUID (0008,0016), so a data set written without
#: preamble starts with an element of group 0002 (file meta) or 0008, little- or big-endian.
#: Text never holds a NUL byte, so no table or checksum file starts like this.
RAW_DATA_SET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
TAR_MAGIC_AT, TAR_MAGIC = slice(257, 262), b"ustar"
ARCHIVE_KINDS = ("gzip", "zip", "tar")
#: Explicit-VR PatientName, PatientID and AccessionNumber elements, little- and big-endian: bytes
#: no table or text holds; a file that has them but does not start as DICOM (a junk byte before
#: the data set, a data set inside another binary) is refused rather than copied.
DICOM_ELEMENTS = re.compile(
    b"|".join(
        re.escape(signature)
        for signature in (b"\x10\x00\x10\x00PN", b"\x10\x00\x20\x00LO", b"\x08\x00\x50\x00SH",
                          b"\x00\x10\x00\x10PN", b"\x00\x10\x00\x20LO", b"\x00\x08\x00\x50SH")
    )
)  # fmt: skip
DICOM_ELEMENT_BYTES = 6
SCAN_CHUNK_BYTES = 1 << 20
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


def _is_clean_description(text: str) -> bool:
    """A value made of nothing but DESCRIPTION_WORDS is rightly left as it is (``BONE``)."""
    return text == _clean_description(text)


def _transfer_syntax(ds: Dataset, source: Path) -> str:
    """The transfer syntax to write: the file meta's, else the encoding a data set without file
    meta was read in (such a data set cannot say which compression its pixels use)."""
    recorded = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if recorded:
        return recorded
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise InputDataError(
            source, "compressed pixel data in a data set without file meta (transfer syntax unknown)"
        )
    encoding = RAW_ENCODINGS.get(ds.original_encoding)
    if encoding is None:
        raise InputDataError(source, f"an encoding DICOM does not define ({ds.original_encoding})")
    return encoding


def _fresh_file_meta(ds: Dataset, transfer_syntax: str, salt: str) -> FileMetaDataset:
    """File meta made anew: nothing of the original's (source AE title, private information,
    implementation names) is carried over but the transfer syntax and the SOP class and instance."""
    original = ds.get("file_meta") or FileMetaDataset()
    apply_profile(original, salt)  # its UIDs, where the data set lacks them
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        value = ds.get(keyword) or original.get(meta_keyword)
        if value:
            setattr(meta, meta_keyword, value)
    return meta


def deidentify_dicom_dataset(ds: Dataset, salt: str, source: Path = Path("<data set>")) -> None:
    """Apply the Basic profile at every depth (and the choices in the module docstring) in place."""
    description = _clean_description(ds.get("SeriesDescription", ""))
    patient_id = str(ds.get("PatientID", "") or "").strip()
    transfer_syntax = _transfer_syntax(ds, source)
    apply_profile(ds, salt)
    ds.file_meta = _fresh_file_meta(ds, transfer_syntax, salt)
    ds.preamble = b"\x00" * 128
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


def read_dicom(data: bytes, source: Path, stop_before_pixels: bool = False) -> Dataset:
    """A DICOM file or a data set written without preamble; InputDataError naming ``source``
    when pydicom cannot read it as an instance."""
    with_preamble = data[DICOM_PREFIX_AT] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not with_preamble, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise InputDataError(source, f"unreadable DICOM file ({exc})") from exc
    if not with_preamble and "SOPClassUID" not in ds:
        raise InputDataError(
            source, "has no DICOM preamble and does not read as a DICOM instance (no SOPClassUID)"
        )
    return ds


def _unpacked(data: bytes) -> bytes:
    return gzip.decompress(data) if data.startswith(GZIP_MAGIC) else data


def check_deidentified(original: Dataset, written: Path, name: Path | None = None) -> None:
    """Stop (InputDataError naming the file and the element's path) when ``written`` (gzipped or
    not) still holds, at any depth, an identifying value of ``original`` from any depth: the same
    value in an attribute the profile changes, an original UID, a person name, id, number or date
    of the original in any text value, or a private tag."""
    ds = read_dicom(_unpacked(written.read_bytes()), name or written, stop_before_pixels=True)
    reason = find_survivor(original, ds, kept_as_is=_is_clean_description)
    if reason is not None:
        raise InputDataError(name or written, reason)


def _deidentified_dicom(data: bytes, source: Path, salt: str) -> bytes:
    """The de-identified file's bytes."""
    ds = read_dicom(data, source)
    try:
        deidentify_dicom_dataset(ds, salt, source)
        buffer = io.BytesIO()
        # A data set without SOP class or instance (not a valid instance, but de-identified all
        # the same) is written as it came, without the file meta's required elements.
        complete = "MediaStorageSOPClassUID" in ds.file_meta and "MediaStorageSOPInstanceUID" in ds.file_meta
        ds.save_as(buffer, enforce_file_format=complete)
    except (ValueError, TypeError, KeyError, struct.error) as exc:
        raise InputDataError(source, f"cannot be de-identified ({type(exc).__name__}: {exc})") from exc
    return buffer.getvalue()


def _write_checked_dicom(
    data: bytes, source: Path, target: Path, salt: str, original: Dataset, gzipped: bool = False
) -> None:
    """De-identify, write under a temporary name, read back and check against ``original`` (the
    header as read), then move into place: a file that fails the check is never left behind."""
    written = _deidentified_dicom(data, source, salt)
    with atomic_path(target) as tmp:
        tmp.write_bytes(_gzip(written) if gzipped else written)
        check_deidentified(original, tmp, name=target)


def deidentify_dicom_file(source: Path, target: Path, salt: str) -> None:
    data = source.read_bytes()
    _write_checked_dicom(data, source, target, salt, read_dicom(data, source, stop_before_pixels=True))


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


# ------------------------------------------------------------------------------ what a file is


def _kind_of(head: bytes, name: str) -> str:
    """What a file is, from its first HEAD_BYTES bytes (and, for NIfTI, its name)."""
    if name.lower().endswith(NIFTI_SUFFIXES):
        return "nifti"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head[DICOM_PREFIX_AT] == b"DICM" or head.startswith(RAW_DATA_SET_STARTS):
        return "dicom"  # a raw data set pydicom cannot read is refused, never copied
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if head[TAR_MAGIC_AT] == TAR_MAGIC:
        return "tar"
    return "other"


def _holds_dicom_elements(handle: BinaryIO, head: bytes) -> bool:
    """Whether the rest of a stream (after ``head``) or ``head`` holds DICOM_ELEMENTS."""
    window = head
    while True:
        if DICOM_ELEMENTS.search(window):
            return True
        chunk = handle.read(SCAN_CHUNK_BYTES)
        if not chunk:
            return False
        window = window[-DICOM_ELEMENT_BYTES:] + chunk


def _kind_of_stream(handle: BinaryIO, name: str) -> str:
    """_kind_of, and ``dicom elements`` for what would be "other" but holds DICOM elements."""
    head = handle.read(HEAD_BYTES)
    kind = _kind_of(head, name)
    return "dicom elements" if kind == "other" and _holds_dicom_elements(handle, head) else kind


def _refuse_dicom_elements(source: Path, kind: str) -> None:
    if kind == "dicom elements":
        raise InputDataError(
            source, "holds DICOM elements (PatientName, PatientID or AccessionNumber) but does not "
            "start as a DICOM file or data set: it would be copied with them",
        )  # fmt: skip


def _kind(path: Path) -> str:
    with open(path, "rb") as handle:
        kind = _kind_of_stream(handle, path.name)
    _refuse_dicom_elements(path, kind)
    if kind == "other" and path.suffix.lower() in DICOM_SUFFIXES:
        raise InputDataError(
            path, "named like a DICOM file but is not DICOM (no preamble, and not a data set)"
        )
    return kind


def _gzip(data: bytes) -> bytes:
    """gzip with no file name and no time in the header: the same input gives the same bytes."""
    return gzip.compress(data, mtime=0)


def _gunzip(source: Path) -> bytes:
    try:
        return gzip.decompress(source.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise InputDataError(source, f"a corrupt gzip stream ({exc}); it could hide a DICOM file") from exc


def _archive_member_kinds(source: Path, kind: str) -> list[str]:
    """What every file in a zip or tar archive is."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(source) as archive:
                return [
                    _kind_of_stream(archive.open(info), info.filename)
                    for info in archive.infolist()
                    if not info.is_dir()
                ]
        with tarfile.open(source) as archive:
            return [
                _kind_of_stream(archive.extractfile(member), member.name)
                for member in archive.getmembers()
                if member.isfile()
            ]
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InputDataError(
            source, f"a {kind} archive that cannot be opened ({exc}); it could hide DICOM files"
        ) from exc


def _refuse_archive_of_images(source: Path, kind: str) -> None:
    """An archive is copied only if nothing in it is a kind the door de-identifies."""
    members = _archive_member_kinds(source, kind)
    for number, inner in enumerate(members, 1):
        if inner != "other":  # the member's name may itself identify: only its number is said
            raise InputDataError(
                source,
                f"a {kind} archive holding {inner} (member {number} of {len(members)}): its members "
                "would pass de-identification untouched; unpack it in the dataset folder instead",
            )


# ------------------------------------------------------------------------------ datasets


def _deidentify_image(
    kind: str, data: bytes, source: Path, target: Path, relative: str, salt: str, on_pixel_risk: str,
    summary: Summary, gzipped: bool,
) -> bool:  # fmt: skip
    """De-identify one DICOM, JPEG or PNG held in ``data``; False when the file was left out."""
    if kind == "dicom":
        header = read_dicom(data, source, stop_before_pixels=True)
        sop_class = str(header.get("file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
        if sop_class == MEDIA_DIRECTORY_CLASS:
            summary.excluded.append({"path": relative, "reason": "DICOMDIR (an index listing patients)"})
            return False
        risk = pixel_risk(header)
        if risk is not None:
            if on_pixel_risk == "stop":
                raise PixelRiskError(
                    Path(relative), f"{risk}; set deidentify.on_pixel_risk: exclude to leave such files out"
                )
            summary.excluded.append({"path": relative, "reason": risk})
            log.warning("%s: left out: %s", relative, risk)
            return False
        _write_checked_dicom(data, source, target, salt, header, gzipped)
        return True
    stripped = (strip_png_metadata if kind == "png" else strip_jpeg_metadata)(data, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_gzip(stripped) if gzipped else stripped)
    return True


def _deidentify_file(
    source: Path, target: Path, relative: str, salt: str, on_pixel_risk: str, summary: Summary
) -> None:
    kind, gzipped = _kind(source), False
    if kind == "gzip":
        data = _gunzip(source)
        inner = _kind_of_stream(io.BytesIO(data), source.name.removesuffix(".gz"))
        _refuse_dicom_elements(source, inner)
        if inner in ARCHIVE_KINDS:
            raise InputDataError(
                source, f"a {inner} archive inside a gzip stream: unpack it in the dataset folder"
            )
        if inner in ("dicom", "png", "jpeg"):
            kind, gzipped = inner, True
    if kind in ("zip", "tar"):
        _refuse_archive_of_images(source, kind)
    if kind in ("dicom", "png", "jpeg"):
        data = data if gzipped else source.read_bytes()
        if not _deidentify_image(kind, data, source, target, relative, salt, on_pixel_risk, summary, gzipped):
            return
    elif kind == "nifti":
        deidentify_nifti_file(source, target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        kind = "other"
    summary.count(f"{kind} (gzip)" if gzipped else kind)


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
            "containers": "DICOM known by content; gzip streams de-identified and gzipped again; "
            "zip / tar archives holding images refused",
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
