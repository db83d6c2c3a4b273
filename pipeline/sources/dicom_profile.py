"""The DICOM PS3.15 Annex E Basic profile applied at every depth of a data set, and the check
that nothing identifying of the original survives anywhere in what was written.

What comes from ``dicom-anonymizer`` and what is this project's own:

* **Library**: Table E.1-1 itself (the action of each of about 650 attributes, 2026c edition,
  repeating groups included, :func:`table_action`) and the action functions that turn one
  element into its dummy, empty or removed form by VR (``replace``, ``empty``, ``delete``...).
* **Ours**: the traversal. The library's driver applies the table to top-level attributes only,
  so a PatientName inside a kept sequence survives it; here every item of every kept sequence
  is cleaned by the same table (Table E.1-1's K is "keep, cleaned for sequences"). Sequences by
  action: X removed, Z / X/Z emptied (no items), D and its variants kept with every value inside
  replaced by a dummy (the library's own reading of D on a sequence), K and X/Z/U* kept and
  cleaned item by item (U*: the references inside stay, their UIDs replaced).
* **Ours**: UIDs. Every UI value at every depth (file meta included) that is not a well-known
  DICOM UID (pydicom's UID registry: transfer syntaxes, SOP classes, well-known frames of
  reference...) becomes
  ``2.25.`` + 128 bits of HMAC-SHA256(salt, UID). The map is a function, not a table, so the
  same original UID gets the same new one in every file and every run: a ReferencedSOPInstanceUID
  in one file equals the new SOPInstanceUID of the file it points to. The library instead draws
  a random UID for any value it has not seen, and empties the UIDs inside X/Z/U* sequences.
* **Ours**: attributes the table does not list are judged by VR: every person name (PN) and
  application entity title (AE) is emptied, every date and time (DA, DT, TM) removed, and every
  free text (LO, SH, LT, ST, UT, UC, UR: descriptions, comments, labels, notes, URLs) emptied
  except the few that name a kind of thing the stages or pydicom's LUTs read (``KEPT_FREE_TEXT``:
  manufacturer and model, convolution kernel, LUT and rescale types, coded terms); a DS or IS
  that does not hold a number is removed. Group length elements (stale once values change),
  private elements, command elements (group 0000), elements pydicom's dictionary does not know
  (an implicit-VR file gives their bytes as ``UN``, unread) and whole overlay groups (60xx: the
  table removes their data and comments, a label or description left behind is free text) are
  removed at every depth, and so is EncryptedAttributesSequence (the original identity, encrypted
  for a key holder).

:func:`find_survivor` is the check after writing: it walks every element of the written file
at every depth and compares it with every identifying value of the original at every depth.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator

from dicomanonymizer import simpledicomanonymizer as library
from pydicom._uid_dict import UID_dictionary  # pydicom's copy of the PS3.6 UID registry
from pydicom.datadict import get_entry, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

#: PS3.15 Table E.1-1 edition, as a module of dicom-anonymizer's dicom_anonymization_databases.
PROFILE_TABLE = "dicomfields_2026c"
#: UIDs derived from a hash live under 2.25 (PS3.5 B.2: a UUID-style integer root).
UID_ROOT = "2.25."
UID_HASH_BYTES = 16


def remove(dataset: Dataset, tag: BaseTag) -> None:
    """X as the standard means it: the element is gone (the library's X leaves a DA as 00010101)."""
    del dataset[tag]


#: Free text: descriptions, comments, labels, notes, identifiers, URLs.
FREE_TEXT_VRS = ("LO", "SH", "LT", "ST", "UT", "UC", "UR")
#: What the table's absence means for these VRs (ours): names, AE titles and free text emptied
#: (the element stays, so a Type 2 attribute stays present), dates and times removed.
UNLISTED_VR_ACTIONS = {
    "PN": library.empty,
    "AE": library.empty,
    **dict.fromkeys(FREE_TEXT_VRS, library.empty),
    "DA": remove,
    "DT": remove,
    "TM": remove,
}
#: Free text the table does not list that is kept: each names a kind of thing, not a person, a
#: place or a visit (the unit itself, DeviceSerialNumber and StationName, is in the table), and
#: windowing (the kernel), pydicom's modality and VOI LUTs, or a code item (a terminology's term)
#: needs it.
KEPT_FREE_TEXT = frozenset(
    tag_for_keyword(keyword)
    for keyword in (
        "Manufacturer", "ManufacturerModelName", "ConvolutionKernel", "RescaleType", "ModalityLUTType",
        "LUTExplanation", "WindowCenterWidthExplanation", "CodeValue", "CodingSchemeDesignator",
        "CodingSchemeVersion", "CodeMeaning", "LongCodeValue", "URNCodeValue",
    )
)  # fmt: skip
#: Sequences the table does not list that are removed whole (ours): EncryptedAttributesSequence
#: holds the original attributes, encrypted so that a key holder can re-identify the patient, in a
#: CMS envelope that names its recipients in clear; no stage re-identifies.
REMOVED_SEQUENCES = frozenset({tag_for_keyword("EncryptedAttributesSequence")})
#: Numbers written as text: a value that does not read as a number is text in the wrong place.
NUMBER_STRING_VRS = ("DS", "IS")
COMMAND_GROUP = 0x0000
#: Overlay planes live in the even groups 6000-601E.
OVERLAY_GROUPS = range(0x6000, 0x6020, 2)
#: Actions on a sequence: X removes it, Z and X/Z leave it with no item (on a UID: empty), the
#: D family keeps the items with every value replaced by a dummy; K and X/Z/U* clean each item.
EMPTYING = frozenset({library.empty, library.delete_or_empty})
DUMMYING = frozenset(
    {
        library.replace,
        library.empty_or_replace,
        library.delete_or_replace,
        library.delete_or_empty_or_replace,
    }
)
#: Original values shorter than this are not searched for elsewhere in a file (too common).
MIN_SEARCHED_CHARS = 4
#: VRs searched for leftover identity: free text, URLs, names and dates (numbers could hold an id
#: by chance; coded strings such as ImageType hold defined terms, never a name), and UN (an
#: attribute pydicom does not know, kept as bytes).
SEARCHED_VRS = frozenset({"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT", "UN"})
#: Besides every person name, the values of these kinds of identifying fields (PatientID,
#: AccessionNumber, AcquisitionDateTime...) are searched for in every text value of the written
#: file; other identifying fields are compared with the same attribute only (an InstitutionName
#: is often also part of a Manufacturer that is rightly kept).
SEARCHED_FIELD_ENDINGS = ("ID", "IDs", "Number", "Date", "DateTime")
#: Code values, coding scheme designators and versions name terms of a terminology (``TEST``,
#: ``DCM``, ``SCT``): they are kept, and not searched for names (a patient "Test" is no leak there).
CODED_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080119, 0x00080120})
#: ImplementationClassUID and ImplementationVersionName name the program that wrote a file (pydicom
#: writes its own), not a patient, a site or a study: the same in the original is no survivor.
WRITER_TAGS = frozenset({0x00020012, 0x00020013})
#: The record of what was done, which the door writes at the top level after the profile: its
#: words ("Basic", "text") are no survivor of a patient who bears them.
RECORD_KEYWORDS = ("DeidentificationMethod", "DeidentificationMethodCodeSequence")
_NAME_SEPARATORS = re.compile(r"[\^=\s]+")
#: A UID as it can stand in a file or folder name (RSNA's ``ID_...`` "UIDs" are the provider's
#: pseudonyms and name its files by design; only a real UID of the file is searched for).
NAMED_UID = re.compile(r"[0-9]+(\.[0-9]+){3,}")

Action = Callable[[Dataset, BaseTag], None]


def salted_uid(original: str, salt: str) -> str:
    """``2.25.`` + 128 bits of HMAC-SHA256(salt, original): stable, and irreversible without the salt."""
    digest = hmac.new(salt.encode(), original.encode(), hashlib.sha256).digest()[:UID_HASH_BYTES]
    return UID_ROOT + str(int.from_bytes(digest, "big"))


def is_well_known_uid(value: str) -> bool:
    """A UID the standard defines (transfer syntax, SOP class, well-known frame of reference...):
    it names a kind of object, not a patient's, and is kept."""
    return value in UID_dictionary


@functools.cache
def _table() -> tuple[dict[tuple[int, int], Action], tuple[tuple[int, int, int, int, Action], ...]]:
    """Table E.1-1 from the library: exact tags, and the repeating groups (curves, overlays) as masks."""
    exact, masked = {}, []
    for key, action in library.initialize_actions(PROFILE_TABLE).items():
        if len(key) == 2:
            exact[key] = action
        else:
            masked.append((*key, action))
    return exact, tuple(masked)


def table_action(tag: BaseTag) -> Action | None:
    """The table's action for ``tag``, or None where the table does not list it."""
    exact, masked = _table()
    action = exact.get((tag.group, tag.element))
    if action is not None:
        return action
    for group, element, group_mask, element_mask, masked_action in masked:
        in_group = tag.group & group_mask == group & group_mask
        if in_group and tag.element & element_mask == element & element_mask:
            return masked_action
    return None


def action_for(element: DataElement) -> Action:
    """The action for one element: the table's, else keep for KEPT_FREE_TEXT, remove for
    REMOVED_SEQUENCES, else the VR rule for unlisted attributes, else keep."""
    action = table_action(element.tag)
    if action is not None:
        return action
    if element.tag in KEPT_FREE_TEXT:
        return library.keep
    if element.tag in REMOVED_SEQUENCES:
        return remove
    return UNLISTED_VR_ACTIONS.get(element.VR, library.keep)


def _is_group_length(tag: BaseTag) -> bool:
    return tag.element == 0 and tag.group != 0x0002


def is_unknown(tag: BaseTag) -> bool:
    """A public tag neither pydicom's dictionary (repeating groups included) nor the table knows:
    read from an implicit-VR file its bytes are kept unread, whatever they hold."""
    if tag.is_private or table_action(tag) is not None:
        return False
    try:
        get_entry(tag)
    except KeyError:
        return True
    return False


def _always_removed(tag: BaseTag) -> bool:
    """Private, group length, command (group 0000: a message's, not an instance's), overlay and
    unknown elements."""
    return (
        tag.is_private or _is_group_length(tag) or tag.group == COMMAND_GROUP or tag.group in OVERLAY_GROUPS
        or is_unknown(tag)
    )  # fmt: skip


def _not_a_number(element: DataElement) -> bool:
    """A DS or IS value pydicom could not read as a number (it keeps such a value as text)."""
    value = element.value
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    return element.VR in NUMBER_STRING_VRS and any(type(v) is str and v.strip() for v in values)


def _values(element: DataElement) -> list[str]:
    """The element's non-empty values as strings (one per value of a multi-valued element)."""
    value = element.value
    if value is None or element.VR == "SQ":
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [text for text in (str(v).strip(" \x00") for v in values) if text]


def _new_uids(element: DataElement, salt: str) -> None:
    def new(value: object) -> str:
        text = str(value)
        return text if not text or is_well_known_uid(text) else salted_uid(text, salt)

    value = element.value
    if isinstance(value, MultiValue | list | tuple):
        element.value = [new(v) for v in value]
    else:
        element.value = new(value.decode("ascii", "replace") if isinstance(value, bytes) else value or "")


def _apply(action: Action, dataset: Dataset, tag: BaseTag) -> None:
    """One library action on one element; a VR the library has no dummy for (OW, AT, OF...)
    is removed instead."""
    try:
        action(dataset, tag)
    except NotImplementedError:
        del dataset[tag]


class ProfileError(ValueError):
    """An element the profile cannot be applied to; the message names its path, never its value."""


def apply_profile(dataset: Dataset, salt: str, dummies_only: bool = False, prefix: str = "") -> None:
    """Apply the Basic profile to ``dataset`` and, recursively, to every item of its sequences,
    in place. ``dummies_only``: inside a sequence whose action is D, every value is replaced.
    ProfileError names the path of an element that cannot be read or changed."""
    for tag in list(dataset.keys()):
        if _always_removed(tag):
            del dataset[tag]
            continue
        path = prefix + (keyword_for_tag(tag) or str(tag).replace(" ", ""))
        try:
            _apply_to_element(dataset, tag, salt, dummies_only, path)
        except ProfileError:
            raise
        except Exception as exc:  # pydicom signals a damaged value with many types, and may quote it
            raise ProfileError(f"{path} cannot be de-identified ({type(exc).__name__})") from None


def _apply_to_element(dataset: Dataset, tag: BaseTag, salt: str, dummies_only: bool, path: str) -> None:
    element = dataset[tag]
    action = action_for(element)
    if element.VR == "SQ":
        if action in (library.delete, remove):
            del dataset[tag]
        elif action in EMPTYING:
            element.value = Sequence()
        else:
            for index, item in enumerate(element.value):
                apply_profile(item, salt, dummies_only or action in DUMMYING, f"{path}[{index}].")
    elif element.VR == "UI":
        if action in (library.delete, remove):
            del dataset[tag]
        elif action in EMPTYING:
            element.value = ""
        else:
            _new_uids(element, salt)
    elif dummies_only:
        _apply(library.replace, dataset, tag)
    elif action is not library.keep:
        _apply(action, dataset, tag)
    elif _not_a_number(element):
        del dataset[tag]


# ---------------------------------------------------------------------------- the check


def walk(dataset: Dataset, prefix: str = "") -> Iterator[tuple[str, DataElement]]:
    """Every element at every depth with its path (``ContributingEquipmentSequence[0].StationName``);
    pydicom's own Dataset.walk gives no path, and the path is what an error must name."""
    for element in dataset:
        path = prefix + (element.keyword or str(element.tag).replace(" ", ""))
        yield path, element
        if element.VR == "SQ" and element.value:
            for index, item in enumerate(element.value):
                yield from walk(item, f"{path}[{index}].")


def walk_file(dataset: Dataset) -> Iterator[tuple[str, DataElement]]:
    """walk() over the file meta, then the data set."""
    yield from walk(getattr(dataset, "file_meta", None) or Dataset())
    yield from walk(dataset)


@functools.cache
def placeholders() -> frozenset[str]:
    """The dummy values the library writes (\"ANONYMIZED\", 00010101...): finding one of them
    unchanged means the input was de-identified before, not that identity survived."""
    values = set()
    for vr, sample in (("PN", "A"), ("LO", "A"), ("CS", "A"), ("DA", "20000101"), ("TM", "1200"),
                       ("DT", "20000101"), ("AS", "040Y"), ("DS", "1"), ("IS", "1"), ("UR", "a")):  # fmt: skip
        for action in (library.replace_element, library.empty_element):
            element = DataElement(0x00100010, vr, sample)
            action(element)
            values.add(str(element.value).upper())
    return frozenset(values)


def _whole(values: Iterable[str], word_characters: str) -> re.Pattern | None:
    """A pattern finding any of ``values`` not inside a longer run of ``word_characters``."""
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    if not alternatives:
        return None
    return re.compile(rf"(?<![{word_characters}])(?:{alternatives})(?![{word_characters}])")


@dataclasses.dataclass
class OriginalValues:
    """Every identifying value of an original file, at every depth, with the path it came from."""

    by_tag: dict[BaseTag, dict[str, str]] = dataclasses.field(default_factory=dict)
    uids: dict[str, str] = dataclasses.field(default_factory=dict)
    words: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, original: Dataset, kept_as_is: Callable[[str], bool]) -> OriginalValues:
        """``kept_as_is(value)``: a value the de-identification may rightly leave (a cleaned
        description such as BONE)."""
        found = cls()
        for path, element in walk_file(original):
            if element.tag.is_private or element.VR == "SQ" or element.tag in WRITER_TAGS:
                continue
            if element.VR == "UI":
                found.uids.update((v, path) for v in _values(element) if not is_well_known_uid(v))
                continue
            if action_for(element) is library.keep:
                continue
            values = [v for v in _values(element) if v.upper() not in placeholders() and not kept_as_is(v)]
            found.by_tag.setdefault(element.tag, {}).update((v, path) for v in values)
            if element.VR == "PN":
                words = [w for v in values for w in _NAME_SEPARATORS.split(v)]
            elif element.VR in SEARCHED_VRS and element.keyword.endswith(SEARCHED_FIELD_ENDINGS):
                words = values
            else:
                words = []
            upper = {w.upper() for w in words if len(w) >= MIN_SEARCHED_CHARS}
            found.words.update((w, path) for w in upper if w not in placeholders())
        return found

    @functools.cached_property
    def _word_pattern(self) -> re.Pattern | None:
        """Any original word, not as part of a longer word (so "ANON" is not found in "ANONYMIZED")."""
        return _whole(self.words, "A-Z0-9_")

    @functools.cached_property
    def _uid_pattern(self) -> re.Pattern | None:
        """Any original UID in a text, not as part of a longer UID."""
        return _whole(self.uids, "0-9.")

    @functools.cached_property
    def _name_patterns(self) -> list[tuple[re.Pattern, dict[str, str]]]:
        """Original words and UIDs as they appear in a path: words between any non-alphanumeric
        characters (``SMITH_JOHN``), UIDs between anything but digits (``1.2.3.dcm``)."""
        uids = [u for u in self.uids if NAMED_UID.fullmatch(u)]
        patterns = []
        if self.words:
            patterns.append((_whole(self.words, "A-Z0-9"), self.words))
        if uids:
            alternatives = "|".join(re.escape(u) for u in sorted(uids, key=len, reverse=True))
            patterns.append((re.compile(rf"(?<![0-9.])(?:{alternatives})(?!\.?[0-9])"), self.uids))
        return patterns

    def in_name(self, name: str) -> str | None:
        """``name`` (a file's path, folders separated by /) with each folder or file name that holds
        an original identifying value of the file replaced by ``<the values' keywords>``, or None
        when none does. PACS exports name folders after the patient, the accession number or the
        date, and files after their SOPInstanceUID."""
        parts, found_any = [], False
        for part in name.split("/"):
            keywords = sorted(
                {where[m.group(0)].rsplit(".", 1)[-1] for pattern, where in self._name_patterns
                 for m in pattern.finditer(part.upper())}
            )  # fmt: skip
            parts.append(f"<{','.join(keywords)}>" if keywords else part)
            found_any = found_any or bool(keywords)
        return "/".join(parts) if found_any else None

    def survivor(self, path: str, element: DataElement) -> str | None:
        """Why ``element`` (at ``path`` of the written file) still identifies, or None."""
        if element.VR == "UI":
            for value in _values(element):
                if value in self.uids:
                    return f"{path} still holds the original UID of {self.uids[value]}"
            return None
        originals = self.by_tag.get(element.tag, {})
        if not originals and element.VR not in SEARCHED_VRS:
            return None  # pixel data and other bulk values are not decoded
        values = _values(element)
        if any(value in originals for value in values):
            return f"de-identification left {path} unchanged"
        if element.VR not in SEARCHED_VRS or element.tag in CODED_TAGS:
            return None
        text = "\\".join(values).upper()
        for pattern, where in ((self._word_pattern, self.words), (self._uid_pattern, self.uids)):
            found = pattern.search(text) if pattern is not None else None
            if found:
                return f"the value of {where[found.group(0)]} is still in the header (at {path})"
        return None


def find_survivor(original: Dataset, written: Dataset, kept_as_is: Callable[[str], bool]) -> str | None:
    """The first element of ``written``, at any depth, that still holds an identifying value of
    ``original`` (from any depth), or a private or unknown element; None when there is none."""
    values = OriginalValues.of(original, kept_as_is)
    unread = []
    for path, element in walk_file(written):
        if element.tag.is_private or is_unknown(element.tag):
            unread.append(path)
            continue
        if path.partition("[")[0] in RECORD_KEYWORDS:
            continue
        reason = values.survivor(path, element)
        if reason is not None:
            return reason
    return f"private or unknown tags remain: {', '.join(unread[:5])}" if unread else None
