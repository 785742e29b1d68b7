"""De-identification of shared studies: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

The attribute table and the per-action semantics come from Kitware's
``dicom-anonymizer`` (its Table E.1-1 is generated from the standard's own
XML, edition 2026c here). It was chosen over ``dicognito`` and ``deid``
because those implement their own selections (dicognito replaces a fixed
list of names, IDs and dates and keeps e.g. Study Description, which the
profile removes; deid's default recipe is a site-specific list), while
dicom-anonymizer is table-driven from the standard, so a new edition of the
standard is a version bump, not a code change.

What this module adds around the library, and why:

* **UIDs.** The library draws replacement UIDs at random into one
  process-wide dictionary. A share needs the opposite: the same original
  UID becomes the same new UID in every file, in the manifest and in image
  URLs, across requests and server processes, and a different one in
  another share. So every UID the profile replaces goes through
  :meth:`Deidentifier.uid`, an HMAC of the original keyed by the share's
  secret ``uid_salt`` (PS3.5 B.2 ``2.25.`` form).
* **Nested datasets.** The library applies the table to the top level only;
  the profile applies wherever an attribute occurs. Sequences the table
  keeps (and ``X/Z/U*`` reference sequences, kept so references stay
  resolvable with remapped UIDs) are processed item by item.
* **Strict X.** The library's "remove" keeps dates with a dummy value; the
  profile removes them. Z on dates/times gives a zero-length value, which
  viewers show as "unknown" rather than 0001-01-01.
* **Pixel data untouched.** Only the header is parsed and rewritten; the
  Pixel Data element is copied byte for byte from the stored file, so the
  images cannot change (and multi-gigabyte instances are streamed).
* **Attestation.** Patient Identity Removed = YES, De-identification Method
  and its Code Sequence (DCM 113100), as PS3.15 E.1.1 requires.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any, BinaryIO

from dicomanonymizer import simpledicomanonymizer as lib
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ImplicitVRLittleEndian

log = logging.getLogger(__name__)

#: Edition of PS3.15 Table E.1-1 the library ships that we apply.
TABLE_EDITION = "dicomfields_2026c"
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
METHOD = "PS3.15 E.1 Basic Application Level Confidentiality Profile"
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_TEMPORAL = ("DA", "DT", "TM")
_REPLACE = (lib.replace, lib.empty_or_replace, lib.delete_or_replace, lib.delete_or_empty_or_replace)
_EMPTY = (lib.empty, lib.delete_or_empty)
Action = Callable[[Dataset, Any], None]


class DeidentifyError(ValueError):
    """An instance cannot be de-identified (unreadable header); the message says why."""


def _table() -> dict[tuple[int, ...], Action]:
    return lib.initialize_actions(TABLE_EDITION)


_BASE_RULES = _table()


def method_description() -> list[str]:
    """The De-identification Method (0012,0063) values (LO, 64 characters each): profile, library, UIDs."""
    return [METHOD, f"dicom-anonymizer {version('dicom-anonymizer')} {TABLE_EDITION}", "UIDs remapped per share"]


class Deidentifier:
    """Applies the Basic Profile for one share; UIDs are remapped deterministically from ``salt``.

    Instances are cheap to make and keep a memo of mapped UIDs; one per
    request is the intended use (they are not shared between threads).
    """

    def __init__(self, salt: str) -> None:
        if not salt:
            raise ValueError("a de-identifying share needs a non-empty uid_salt")
        self._key = salt.encode()
        self._uids: dict[str, str] = {}
        self._recurse: set[int] = set()
        self._rules = {tag: self._wrap(action, tag) for tag, action in _BASE_RULES.items()}

    # -- UIDs -------------------------------------------------------------------------------------------------

    def uid(self, original: str) -> str:
        """The share's replacement for ``original``: ``2.25.`` + a 128-bit HMAC with UUIDv8 bits (PS3.5 B.2)."""
        original = str(original).strip("\0 ")
        if not original:
            return original
        hit = self._uids.get(original)
        if hit is None:
            raw = bytearray(hmac.new(self._key, original.encode(), hashlib.sha256).digest()[:16])
            raw[6] = (raw[6] & 0x0F) | 0x80  # RFC 9562 version 8 (custom)
            raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
            hit = self._uids[original] = f"2.25.{int.from_bytes(raw, 'big')}"
        return hit

    def _map_element(self, element: DataElement) -> None:
        value = element.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            element.value = [self.uid(v) for v in value]
        elif value:
            element.value = self.uid(value)

    # -- the table's actions, made deterministic and strict -----------------------------------------------------

    def _wrap(self, action: Action, tag: tuple[int, ...]) -> Action:
        if action is lib.keep:
            return action
        if action is lib.delete:
            return _delete
        if action is lib.replace_UID:
            return self._replace_uid
        if action is lib.delete_or_empty_or_replace_UID:
            if len(tag) == 2:
                self._recurse.add(Tag(tag))
            return self._keep_references
        if action in _REPLACE:
            return self._replacing(action)
        if action in _EMPTY:
            return self._emptying(action)
        return action

    def _replace_uid(self, dataset: Dataset, tag: Any) -> None:
        element = dataset.get(tag)
        if element is not None:
            self._map_element(element)

    def _keep_references(self, dataset: Dataset, tag: Any) -> None:
        """X/Z/U*: keep a reference sequence; its items are processed like any dataset (UIDs remapped)."""
        element = dataset.get(tag)
        if element is None:
            return
        if element.VR == "UI":
            self._map_element(element)
        elif element.VR != "SQ":
            _empty(dataset, element)

    def _replacing(self, action: Action) -> Action:
        def run(dataset: Dataset, tag: Any) -> None:
            element = dataset.get(tag)
            if element is None:
                return
            if element.VR == "UI":
                self._map_element(element)
            elif element.VR == "SQ":
                self._replace_sequence(dataset, element, action)
            else:
                _guarded(action, dataset, tag)

        return run

    def _emptying(self, action: Action) -> Action:
        def run(dataset: Dataset, tag: Any) -> None:
            element = dataset.get(tag)
            if element is None:
                return
            if element.VR in _TEMPORAL:
                element.value = ""
            else:
                _guarded(action, dataset, tag)

        return run

    def _replace_sequence(self, dataset: Dataset, element: DataElement, action: Action) -> None:
        """D on a sequence: dummy values throughout, but nested UIDs remapped (never the library's random ones)."""
        saved: list[tuple[Dataset, BaseTag, list[str] | str]] = []

        def lift(ds: Dataset, elem: DataElement) -> None:
            if elem.VR == "UI":
                self._map_element(elem)
                saved.append((ds, elem.tag, elem.value))
                del ds[elem.tag]

        for item in element.value or []:
            item.walk(lift)
        _guarded(action, dataset, element.tag)
        for ds, tag, value in saved:
            ds.add_new(tag, "UI", value)

    # -- datasets -------------------------------------------------------------------------------------------------

    def apply(self, ds: Dataset) -> None:
        """De-identify a dataset in place (file meta included) and record that it was."""
        self._apply(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = method_description()
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        ds.LongitudinalTemporalInformationModified = "REMOVED"

    def _apply(self, ds: Dataset) -> None:
        lib.anonymize_dataset(ds, base_rules_gen=lambda: dict(self._rules), delete_private_tags=True)
        for element in list(ds.values()):
            tag = element.tag
            if tag not in ds:
                continue
            element = ds[tag]
            if element.VR != "SQ":
                continue
            action = _BASE_RULES.get((tag.group, tag.element))
            if action is None or tag in self._recurse or action is lib.keep:
                for item in element.value or []:
                    self._apply(item)

    # -- files ----------------------------------------------------------------------------------------------------

    def header(self, fh: BinaryIO) -> Dataset:
        """The de-identified header (no pixel data) of a stored instance."""
        try:
            ds = dcmread(fh, stop_before_pixels=True)
        except Exception as exc:
            raise DeidentifyError(f"unreadable DICOM header: {exc}") from exc
        self.apply(ds)
        return ds

    def stream_instance(self, open_blob: Callable[[], BinaryIO], pixel_offset: int | None,
                        pixel_length: int | None, chunk: int = 1024 * 1024) -> Iterator[bytes]:
        """A de-identified Part 10 file: rewritten header, then the stored Pixel Data element byte for byte.

        Elements stored after Pixel Data (Data Set Trailing Padding, Digital
        Signatures) are both "X" in the profile and are left out. An
        instance whose pixel data was not located at ingest (no pixels, or
        deflated) is parsed whole and rewritten by pydicom instead.
        """
        with open_blob() as fh:
            if pixel_offset is None or pixel_length is None:
                yield self._whole(fh)
                return
            ds = self.header(fh)
            ts = str(ds.file_meta.TransferSyntaxUID)
            start = pixel_offset - (8 if ts == ImplicitVRLittleEndian else 12)
            fh.seek(start)
            head = fh.read(4)
            big = ts == "1.2.840.10008.1.2.2"
            tag = int.from_bytes(head[:2], "big" if big else "little") << 16 | int.from_bytes(
                head[2:4], "big" if big else "little")
            if tag not in _PIXEL_TAGS:
                fh.seek(0)
                yield self._whole(fh)
                return
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            yield out.getvalue()
            fh.seek(start)
            left = pixel_offset + pixel_length - start
            while left > 0:
                data = fh.read(min(chunk, left))
                if not data:
                    raise OSError("stored instance is shorter than its indexed pixel data")
                left -= len(data)
                yield data

    def _whole(self, fh: BinaryIO) -> bytes:
        try:
            ds = dcmread(fh)
        except Exception as exc:
            raise DeidentifyError(f"unreadable DICOM file: {exc}") from exc
        self.apply(ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def _delete(dataset: Dataset, tag: Any) -> None:
    """X: remove the attribute (dates included, unlike the library's dummy-date variant)."""
    if tag in dataset:
        del dataset[tag]


def _empty(dataset: Dataset, element: DataElement) -> None:
    if element.VR in _TEMPORAL:
        element.value = ""
    else:
        _guarded(lib.empty, dataset, element.tag)


def _guarded(action: Action, dataset: Dataset, tag: Any) -> None:
    """Run a library action; a VR it has no dummy for (OW, AT, ...) is removed instead of kept."""
    try:
        action(dataset, tag)
    except NotImplementedError as exc:
        log.debug("removing %s: %s", tag, exc)
        _delete(dataset, tag)
