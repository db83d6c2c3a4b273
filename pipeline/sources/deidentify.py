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
  are removed (no stage needs an interval); free text the table does not list is emptied, except
  the few attributes that name a kind of thing the stages read (dicom_profile.KEPT_FREE_TEXT);
  SeriesDescription keeps only the reconstruction words
  windowing reads to skip bone and lung series (``DESCRIPTION_WORDS``: the profile's Clean
  Descriptors option); the file meta and the 128-byte preamble (which may hold a TIFF header in
  dual-format files) are written afresh. Pixel data and every attribute that defines geometry
  and intensity are outside the table and kept as they are. The file records what was done:
  PatientIdentityRemoved YES, DeidentificationMethod and its code sequence (DCM 113100 Basic
  profile, 113105 Clean Descriptors), and LongitudinalTemporalInformationModified REMOVED.
* **Names**: a DICOM file whose path (folder or file name) holds an identifying value of its own
  header (PatientName, PatientID, AccessionNumber, a date, a real UID) stops the run; the message
  shows the path with those names replaced by the attributes' keywords.
* **Pixel-level risk**: a DICOM file that declares burned-in annotation, a secondary capture, an
  ultrasound image, a visible-light photograph or a recorded voice (PIXEL_RISK_CLASSES) or a
  screen save, is left out and listed with the reason in ``deidentification.json`` (``on_pixel_risk: exclude``) or
  stops the run (``stop``); a DICOMDIR (an index of patients) is always left out.
* **NIfTI** (known by content, whatever the name): the header's text fields (NIFTI_TEXT_FIELDS)
  are blanked and header extensions (which may carry a whole DICOM header) dropped; voxel bytes
  are copied as they are, anything after them dropped. A .hdr / .img pair or an Analyze header is
  refused.
* **JPEG / PNG**: only the segments and chunks needed to decode are kept (EXIF, XMP, ICC
  profiles, comments, text, time, private chunks go) by rewriting the container only: the
  compressed pixels are copied byte for byte.
* **gzip, bzip2, xz**: the stream is opened and its content judged as above; a compressed DICOM,
  NIfTI, JPEG or PNG is de-identified and compressed again the same way under the same name (no
  name or time in a gzip header).
* **zip and tar archives** that hold DICOM, NIfTI, JPEG, PNG or another archive stop the run,
  naming the archive: their members would otherwise pass the door untouched. Unpack them first.
  7z, rar and zstd archives, which the standard library cannot open, stop the run too.
* Any other file (the layout's own tables, download sums) is copied as it is.

No message names a value of a header or an archive member's name: errors from pydicom, zipfile
and tarfile, which may quote them, are reported by their type.

After writing, every DICOM file is read back and checked against its original at every depth
(:func:`check_deidentified`): a file that still holds an identifying value stops the run, naming
the file and the path of the element; nothing of the run is left in ``data/raw``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import json
import logging
import lzma
import re
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.atomic import atomic_dir, atomic_path
from pipeline.errors import ConfigError, InputDataError
from pipeline.labels import SHARP_KERNEL_WORDS
from pipeline.privacy import pseudonym, values_kept_out_of_logs
from pipeline.sources.dicom_profile import (
    PROFILE_TABLE,
    OriginalValues,
    ProfileError,
    apply_profile,
    find_survivor,
    salted_uid,
)

__all__ = ["salted_uid"]  # re-exported: tcia names its cached series by the UIDs written here

log = logging.getLogger(__name__)

LIBRARY = "dicom-anonymizer"
RECORD_FILE = "deidentification.json"
PIXEL_RISK_ACTIONS = ("exclude", "stop")
#: SeriesDescription words windowing reads (bone / lung reconstructions); nothing else is kept.
DESCRIPTION_WORDS = SHARP_KERNEL_WORDS
#: SOP classes whose content shows identity as a rule (a class and its sub-classes: ``.7`` also
#: covers the multi-frame secondary captures ``.7.1``-``.7.4``) -> why.
PIXEL_RISK_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture (screenshots and scanned documents often show names)",
    "1.2.840.10008.5.1.4.1.1.6": "ultrasound (names, ids and dates are burned into the image as a rule)",
    "1.2.840.10008.5.1.4.1.1.3": "ultrasound multi-frame (names, ids and dates are burned into the image as "
    "a rule)",
    "1.2.840.10008.5.1.4.1.1.77.1": "visible-light photograph, endoscopy or microscopy (faces, labels, "
    "slides with names)",
    "1.2.840.10008.5.1.4.1.1.9.4.1": "recorded voice (a dictation speaks the patient's name)",
}  # fmt: skip
MEDIA_DIRECTORY_CLASS = "1.2.840.10008.1.3.10"
#: DeidentificationMethodCodeSequence items (CID 7050): code value -> meaning.
PROFILE_CODES = {"113100": "Basic Application Confidentiality Profile", "113105": "Clean Descriptors Option"}
DEIDENTIFICATION_METHOD = (
    "PS3.15 E.1-1 Basic Profile at every depth",
    "UIDs and PatientID from a salted hash",
    "dates, private and unknown tags removed",
    "free text the table does not list emptied",
    "SeriesDescription cleaned to reconstruction words",
)
#: The encoding a data set without file meta was read in -> the transfer syntax to record.
RAW_ENCODINGS = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}
#: Text fields of NIfTI-1 / NIfTI-2 headers: every character field but the magic and Analyze's
#: one-letter ``regular`` (NIfTI-1 keeps Analyze's unused data_type and db_name, NIfTI-2 has an
#: unused_str: a converter or a person can write anything there).
NIFTI_TEXT_FIELDS = tuple(
    dict.fromkeys(
        name
        for header_class in (nib.Nifti1Header, nib.Nifti2Header)
        for name in header_class.template_dtype.names
        if header_class.template_dtype[name].kind == "S" and name not in ("magic", "regular")
    )
)
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
#: bzip2: "BZh" and a block size, then a block's or the end-of-stream magic.
BZIP2_MAGIC_AT = ((slice(0, 3), (b"BZh",)), (slice(4, 10), (b"1AY&SY", b"\x17rE8P\x90")))
XZ_MAGIC = b"\xfd7zXZ\x00"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
TAR_MAGIC_AT, TAR_MAGIC = slice(257, 262), b"ustar"
#: Containers the standard library cannot open: they could hold anything, so they are refused.
UNOPENABLE_MAGICS = {b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!\x1a\x07": "rar", b"\x28\xb5\x2f\xfd": "zstd"}
#: NIfTI-1 and Analyze 7.5 headers start with sizeof_hdr 348, NIfTI-2 with 540 (either byte order);
#: the magic says a single file (``n+1``, ``n+2``) or the header of a .hdr / .img pair (``ni1``, ``ni2``).
NIFTI_SIZES = {348: slice(344, 348), 540: slice(4, 8)}
NIFTI_SINGLE_MAGICS = (b"n+1\x00", b"n+2\x00")
NIFTI_PAIR_MAGICS = (b"ni1\x00", b"ni2\x00")
#: Explicit-VR PatientName, PatientID and AccessionNumber elements, little- and big-endian, and an
#: implicit-VR SOPClassUID (little-endian tag, 4-byte length, a DICOM-defined class): bytes no
#: table or text holds; a file that has them but does not start as DICOM (a junk byte before the
#: data set, a data set inside another binary) is refused rather than copied.
DICOM_ELEMENTS = re.compile(
    b"|".join(
        [re.escape(signature)
         for signature in (b"\x10\x00\x10\x00PN", b"\x10\x00\x20\x00LO", b"\x08\x00\x50\x00SH",
                           b"\x00\x10\x00\x10PN", b"\x00\x10\x00\x20LO", b"\x00\x08\x00\x50SH")]
        + [rb"\x08\x00\x16\x00[\x00-\xff][\x00-\xff]\x00\x001\.2\.840\.10008\."]
    )
)  # fmt: skip
DICOM_ELEMENT_BYTES = 22  # the longest signature
SCAN_CHUNK_BYTES = 1 << 20
#: PNG chunks needed to decode and display an image (PNG spec 11.2-11.3) -> the most bytes their
#: data may hold (None: no limit); the rest is dropped (tEXt, zTXt, iTXt, eXIf, tIME, private
#: chunks, and iCCP, whose profile name is free text and whose profile holds description and
#: copyright text: no stage applies a colour profile). A kept chunk longer than the specification
#: allows could carry text behind its value, and is refused.
PNG_KEPT_CHUNKS = {
    b"IHDR": 13, b"PLTE": 768, b"IDAT": None, b"IEND": 0, b"tRNS": 256, b"gAMA": 4, b"cHRM": 32,
    b"sRGB": 1, b"sBIT": 4, b"bKGD": 6, b"pHYs": 9,
}  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
#: JPEG marker segments needed to decode (ITU T.81 table B.1, T.87 for JPEG-LS): SOFn, DHT, DAC,
#: SOS, DQT, DNL, DRI, DHP, EXP, JPEG-LS SOF55 and LSE. Everything else goes: comments, APPn
#: (EXIF, XMP, IPTC, ICC profiles), the reserved JPG and JPGn extensions.
JPEG_RESERVED = 0xC8
JPEG_DECODING_MARKERS = frozenset({*range(0xC0, 0xD0), *range(0xDA, 0xE0), 0xF7, 0xF8} - {JPEG_RESERVED})
#: APPn segments kept, cut to their fixed-size start (the rest could be text or a thumbnail that
#: carries its own metadata): APP0 JFIF (identifier, version, units, densities, and a thumbnail
#: size set to none) and APP14 Adobe (the colour transform decoders need).
JPEG_KEPT_APP = {0xE0: (b"JFIF\x00", 12, b"\x00\x00"), 0xEE: (b"Adobe", 12, b"")}
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
    for risky_class, why in PIXEL_RISK_CLASSES.items():
        if sop_class == risky_class or sop_class.startswith(risky_class + "."):
            return why
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


def _why(exc: Exception) -> str:
    """What an error says, where that cannot hold a header value: pydicom's messages about a
    file's structure are kept, any other error is named by its type only (its message may quote a
    value it could not read)."""
    return f"{exc}" if isinstance(exc, InvalidDicomError | EOFError) else type(exc).__name__


def read_dicom(data: bytes, source: Path, stop_before_pixels: bool = False) -> Dataset:
    """A DICOM file or a data set written without preamble; InputDataError naming ``source``
    when pydicom cannot read it as an instance."""
    with_preamble = data[DICOM_PREFIX_AT] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not with_preamble, stop_before_pixels=stop_before_pixels)
        for _ in ds.iterall():  # every value converted now, so a damaged one stops here, not half-way
            pass
    except Exception as exc:  # pydicom signals damaged files with many exception types
        raise InputDataError(source, f"unreadable DICOM file ({_why(exc)})") from None
    if not with_preamble and "SOPClassUID" not in ds:
        raise InputDataError(
            source, "has no DICOM preamble and does not read as a DICOM instance (no SOPClassUID)"
        )
    return ds


def _unpacked(data: bytes) -> bytes:
    """``data`` decompressed when it is a compressed stream (STREAMS), else as it is."""
    kind = _kind_of(data[:HEAD_BYTES])
    return STREAMS[kind][0](data) if kind in STREAMS else data


def check_deidentified(original: Dataset, written: Path, name: Path | None = None) -> None:
    """Stop (InputDataError naming the file and the element's path) when ``written`` (compressed or
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
    except ProfileError as exc:  # names the element's path, never its value
        raise InputDataError(source, str(exc)) from None
    except Exception as exc:  # pydicom's writers signal a bad value with many types, and may quote it
        raise InputDataError(source, f"cannot be de-identified ({_why(exc)})") from None
    return buffer.getvalue()


def _write_checked_dicom(
    data: bytes, source: Path, target: Path, salt: str, original: Dataset, stream: str | None = None,
    durable: bool = True,
) -> None:
    """De-identify, write under a temporary name (compressed again as it came), read back and
    check against ``original`` (the header as read), then move into place: a file that fails the
    check is never left behind. ``durable=False`` (no fsync) for files inside deidentify_dataset's
    atomic_dir, which flushes the whole folder once before it is swapped in."""
    written = _deidentified_dicom(data, source, salt)
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_bytes(STREAMS[stream][1](written) if stream else written)
        check_deidentified(original, tmp, name=target)


def deidentify_dicom_file(source: Path, target: Path, salt: str) -> None:
    data = source.read_bytes()
    _write_checked_dicom(data, source, target, salt, read_dicom(data, source, stop_before_pixels=True))


# ------------------------------------------------------------------------------ NIfTI


def _nifti_header_class(head: bytes) -> type[nib.Nifti1Header] | None:
    """The nibabel header class of a NIfTI-1 / Analyze (sizeof_hdr 348) or NIfTI-2 (540) header."""
    for order in ("<", ">"):
        size = struct.unpack(f"{order}i", head[:4])[0] if len(head) >= 4 else 0
        if size in NIFTI_SIZES:
            return nib.Nifti2Header if size == 540 else nib.Nifti1Header
    return None


def _nifti_kind(head: bytes) -> str | None:
    """"nifti" for a single-file NIfTI, "nifti pair" for the header of a .hdr / .img pair or an
    Analyze 7.5 header (sizeof_hdr without a NIfTI magic), None for anything else."""
    header_class = _nifti_header_class(head)
    if header_class is None or len(head) < NIFTI_SIZES[348].stop:
        return None
    magic = head[NIFTI_SIZES[540 if header_class is nib.Nifti2Header else 348]]
    if magic in NIFTI_SINGLE_MAGICS:
        return "nifti"
    if magic in NIFTI_PAIR_MAGICS or header_class is nib.Nifti1Header:
        return "nifti pair"
    return None


def deidentify_nifti(payload: bytes, source: Path) -> bytes:
    """A single-file NIfTI-1 / NIfTI-2 image (uncompressed bytes) with its header's text fields
    blanked and its extensions dropped; voxel bytes are copied unchanged, bytes after them dropped."""
    header_class = _nifti_header_class(payload)
    if header_class is None or _nifti_kind(payload[:HEAD_BYTES]) != "nifti":
        raise InputDataError(source, "not a single-file NIfTI image")
    try:
        header = header_class.from_fileobj(io.BytesIO(payload))
    except Exception as exc:  # nibabel signals bad headers with many exception types
        raise InputDataError(source, f"not a readable NIfTI header ({type(exc).__name__})") from None
    original_offset = header.get_data_offset()
    voxel_bytes = int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    for field in set(NIFTI_TEXT_FIELDS) & set(header_class.template_dtype.names):
        header[field] = b""
    header.extensions.clear()
    header.set_data_offset(header.single_vox_offset)  # header + the 4-byte extension flag
    stream = io.BytesIO()
    header.write_to(stream)
    stream.write(b"\x00" * (int(header["vox_offset"]) - stream.tell()))
    stream.write(payload[original_offset : original_offset + voxel_bytes])  # nothing reads what follows
    return stream.getvalue()


def deidentify_nifti_file(source: Path, target: Path) -> None:
    """deidentify_nifti on a .nii or .nii.gz file (gzipped again, with no file name or time)."""
    data = _unpacked(source.read_bytes())
    written = deidentify_nifti(data, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_gzip(written) if target.name.endswith(".gz") else written)


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
            most = PNG_KEPT_CHUNKS[kind]
            if most is not None and length > most:
                raise InputDataError(
                    source,
                    f"a PNG {kind.decode()} chunk of {length} bytes (at most {most}): it could carry text",
                )
            out.append(data[position:end])
        position = end
        if kind == b"IEND":
            break
    return b"".join(out)


def strip_jpeg_metadata(data: bytes, source: Path) -> bytes:
    """The JPEG with only the segments needed to decode it (JPEG_DECODING_MARKERS, and the start
    of JPEG_KEPT_APP's); the scans are copied as they are."""
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
        if marker in JPEG_DECODING_MARKERS:
            out.append(data[position:end])
        elif marker in JPEG_KEPT_APP:
            identifier, kept, appended = JPEG_KEPT_APP[marker]
            payload = data[position + 4 : end]
            if payload.startswith(identifier) and len(payload) >= kept:
                payload = payload[:kept] + appended
                out.append(bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload)
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


def _is_bzip2(head: bytes) -> bool:
    return all(head[at] in magics for at, magics in BZIP2_MAGIC_AT)


def _kind_of(head: bytes) -> str:
    """What a file is, from its first HEAD_BYTES bytes, whatever its name."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head[DICOM_PREFIX_AT] == b"DICM" or head.startswith(RAW_DATA_SET_STARTS):
        return "dicom"  # a raw data set pydicom cannot read is refused, never copied
    nifti = _nifti_kind(head)
    if nifti is not None:
        return nifti
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if _is_bzip2(head):
        return "bzip2"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if head[TAR_MAGIC_AT] == TAR_MAGIC:
        return "tar"
    return next((kind for magic, kind in UNOPENABLE_MAGICS.items() if head.startswith(magic)), "other")


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


def _kind_of_stream(handle: BinaryIO) -> str:
    """_kind_of, and ``dicom elements`` for what would be "other" but holds DICOM elements."""
    head = handle.read(HEAD_BYTES)
    kind = _kind_of(head)
    return "dicom elements" if kind == "other" and _holds_dicom_elements(handle, head) else kind


#: Kinds that are never copied and cannot be de-identified here -> why.
REFUSED_KINDS = {
    "dicom elements": "holds DICOM elements (PatientName, PatientID, AccessionNumber or an implicit-VR "
    "SOPClassUID) but does not start as a DICOM file or data set: it would be copied with them",
    "nifti pair": "a NIfTI / Analyze header of a .hdr / .img pair: its text fields (and Analyze's "
    "patient_id) would be copied; convert the pair to a single .nii.gz first",
    **{
        kind: f"a {kind} archive, which cannot be opened here to see what it holds; unpack it in the "
        "dataset folder"
        for kind in UNOPENABLE_MAGICS.values()
    },
}
#: File name endings -> the kind a file so named must be ("other" under such a name is refused).
NAMED_KINDS = {**dict.fromkeys(DICOM_SUFFIXES, ("DICOM file", "DICOM")), ".nii": ("NIfTI image", "NIfTI")}


def _refuse(source: Path, kind: str, name: str) -> None:
    """Stop on a kind in REFUSED_KINDS, and on "other" under a name that promises an image."""
    if kind in REFUSED_KINDS:
        raise InputDataError(source, REFUSED_KINDS[kind])
    promised = next((kinds for ending, kinds in NAMED_KINDS.items() if name.lower().endswith(ending)), None)
    if kind == "other" and promised:
        raise InputDataError(
            source, f"named like a {promised[0]} but is not {promised[1]} (judged by its content)"
        )


def _kind(path: Path) -> str:
    with open(path, "rb") as handle:
        kind = _kind_of_stream(handle)
    _refuse(path, kind, path.name)
    return kind


def _gzip(data: bytes) -> bytes:
    """gzip with no file name and no time in the header: the same input gives the same bytes.

    Level 1, nibabel's own default for .nii.gz: on a 2.5 MB T2 volume it was 9x faster than
    level 9 (0.05 vs 0.46 s) for a file 2% larger (1.53 vs 1.50 MB); at level 9 recompressing
    the headline's 68 MRI NIfTI files took 10 s of the 28 s of their download stage (profiled)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=1) as out:
        out.write(data)
    return buffer.getvalue()


#: Compressed streams the door opens -> (decompress, compress): what is inside is judged like any
#: file, and an image is de-identified and compressed again the same way under the same name. The
#: three compressors write the same bytes for the same input (gzip: no name, no time).
STREAMS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (gzip.decompress, _gzip),
    "bzip2": (bz2.decompress, bz2.compress),
    "xz": (lzma.decompress, lzma.compress),
}
ARCHIVE_KINDS = ("zip", "tar", *STREAMS)
#: What the door de-identifies (anything else not refused is copied).
IMAGE_KINDS = ("dicom", "nifti", "png", "jpeg")


def _decompressed(source: Path, stream: str) -> bytes:
    try:
        return STREAMS[stream][0](source.read_bytes())
    except Exception as exc:  # zlib, bz2 and lzma signal damage with different types
        raise InputDataError(
            source, f"a corrupt {stream} stream ({type(exc).__name__}); it could hide a DICOM file"
        ) from None


def _archive_member_kinds(source: Path, kind: str) -> list[str]:
    """What every file in a zip or tar archive is (a zip "folder" too: one can hold data)."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(source) as archive:
                return [_kind_of_stream(archive.open(info)) for info in archive.infolist()]
        with tarfile.open(source) as archive:
            members = [member for member in archive.getmembers() if member.isfile()]
            return [_kind_of_stream(archive.extractfile(member)) for member in members]
    except Exception as exc:  # zipfile and tarfile quote member names (which may identify) in their messages
        raise InputDataError(
            source,
            f"a {kind} archive that cannot be opened ({type(exc).__name__}); it could hide DICOM files",
        ) from None


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


def _refuse_identifying_name(header: Dataset, relative: str) -> None:
    """Stop when the file's path in the dataset holds an identifying value of its own header (a
    folder named after the patient or the accession number, a file after its SOPInstanceUID):
    the header is cleaned, the name would not be. The message shows the path with each such value
    replaced by its attribute's keyword."""
    masked = OriginalValues.of(header, kept_as_is=_is_clean_description).in_name(relative)
    if masked is not None:
        raise InputDataError(
            Path(masked), "the file's path holds identifying values of its own header; give the "
            "files and folders neutral names (or let the download stage pseudonymise the layout)",
        )  # fmt: skip


def _deidentify_image(
    kind: str, data: bytes, source: Path, target: Path, relative: str, salt: str, on_pixel_risk: str,
    summary: Summary, stream: str | None, check_names: bool,
) -> bool:  # fmt: skip
    """De-identify one DICOM, NIfTI, JPEG or PNG held in ``data`` (decompressed); False when the
    file was left out."""
    if kind == "dicom":
        header = read_dicom(data, source, stop_before_pixels=True)
        if check_names:
            _refuse_identifying_name(header, relative)
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
        _write_checked_dicom(data, source, target, salt, header, stream, durable=False)
        return True
    if kind == "nifti":
        written = deidentify_nifti(data, source)
    else:
        written = (strip_png_metadata if kind == "png" else strip_jpeg_metadata)(data, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(STREAMS[stream][1](written) if stream else written)
    return True


def _deidentify_file(
    source: Path, target: Path, relative: str, salt: str, on_pixel_risk: str, summary: Summary,
    check_names: bool,
) -> None:  # fmt: skip
    kind, stream, data = _kind(source), None, b""
    if kind in STREAMS:
        stream, data = kind, _decompressed(source, kind)
        kind = _kind_of_stream(io.BytesIO(data))
        _refuse(source, kind, source.name.rsplit(".", 1)[0])
        if kind in ARCHIVE_KINDS:
            raise InputDataError(
                source, f"a {kind} archive inside a {stream} stream: unpack it in the dataset folder"
            )
    if kind in ("zip", "tar"):
        _refuse_archive_of_images(source, kind)
    if kind in IMAGE_KINDS:
        data = data if stream else source.read_bytes()
        if not _deidentify_image(
            kind, data, source, target, relative, salt, on_pixel_risk, summary, stream, check_names
        ):
            return
    elif stream:  # a compressed table: compressed again, so the gzip header's file name and time go
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(STREAMS[stream][1](data))
        kind = "other"
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        kind = "other"
    summary.count(f"{kind} ({stream})" if stream else kind)


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
    source: str | Path, out_dir: str | Path, salt: str, on_pixel_risk: str = "exclude",
    check_names: bool = True,
) -> Summary:  # fmt: skip
    """Write de-identified copies of every file under ``source`` to ``out_dir`` (atomically),
    with ``deidentification.json`` saying what was done and what was left out, and why.
    ``check_names``: stop on a DICOM file whose path holds an identifying value of its own header
    (off only for the synthetic phantoms, whose layouts are named by their made-up ids)."""
    if on_pixel_risk not in PIXEL_RISK_ACTIONS:
        raise ConfigError(
            f"deidentify.on_pixel_risk: must be one of {PIXEL_RISK_ACTIONS}, got {on_pixel_risk!r}"
        )
    source = Path(source)
    summary = Summary()
    # pydicom's value-validation warnings quote header values (names, UIDs): keep them out of the logs.
    with atomic_dir(out_dir, flush=True) as tmp, values_kept_out_of_logs():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            if relative == RECORD_FILE:  # an earlier run's record (data de-identified before)
                continue
            _deidentify_file(path, tmp / relative, relative, salt, on_pixel_risk, summary, check_names)
        _drop_rows_without_files(tmp, summary)
        record = {
            "library": f"{LIBRARY} {version(LIBRARY)}",
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
            "profile_table": PROFILE_TABLE,
            "options": list(PROFILE_CODES.values()),
            "dicom": list(DEIDENTIFICATION_METHOD),
            "nifti": f"text fields blanked ({', '.join(NIFTI_TEXT_FIELDS)}); header extensions dropped",
            "jpeg_png": "metadata segments and chunks removed; compressed pixels unchanged",
            "containers": "DICOM and NIfTI known by content; gzip, bzip2 and xz streams de-identified and "
            "compressed again; zip / tar archives holding images, 7z / rar / zstd archives and NIfTI pairs "
            "refused",
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
