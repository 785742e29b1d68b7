"""What a share link shows: the study summary, rendered images and the ZIP download.

Everything the recipient sees of a de-identified share passes through the
same ``Deidentifier`` as the files: the summary values are those the profile
leaves in a dataset built from the index (so no second, hand-kept list of
"safe" fields exists), UIDs are the share's remapped ones in the manifest,
in image URLs and in the files, and instances marked with burned-in
annotation are withheld, because pixel data is never altered.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.dataset import Dataset
from sqlalchemy import select

from readingroom.archive.blobs import CHUNK
from readingroom.archive.models import Instance, Patient, Series, Study
from readingroom.archive.render import THUMBNAIL_VIEWPORT, RenderError, RenderOptions, render_frame
from readingroom.archive.retrieve import InstanceRef, find_instances
from readingroom.governance.deidentify import Deidentifier
from readingroom.governance.shares import ShareState
from readingroom.runtime import Runtime

#: Seconds a share's study summary is reused between requests (the link's state is checked on every request).
SUMMARY_SECONDS = 30.0
BURNED_IN = "burned-in annotation may identify the patient; pixel data is never altered"


class ContentNotFound(LookupError):
    """The addressed instance or frame is not part of this share."""


@dataclass(frozen=True)
class SharedInstance:
    ref: InstanceRef
    uid: str  # as the recipient sees it
    number: int | None
    frames: int


@dataclass
class SharedSeries:
    uid: str
    number: int | None
    modality: str
    description: str
    body_part: str
    instances: list[SharedInstance] = field(default_factory=list)


@dataclass
class SharedStudy:
    """The recipient's view of one study; ``by_uid`` resolves the instance UIDs in image URLs."""

    uid: str
    description: str
    date: str
    time: str
    accession: str
    modalities: str
    patient: dict[str, str]
    deidentified: bool
    series: list[SharedSeries] = field(default_factory=list)
    withheld: dict[str, int] = field(default_factory=dict)
    by_uid: dict[str, SharedInstance] = field(default_factory=dict)

    @property
    def instances(self) -> list[SharedInstance]:
        return [i for s in self.series for i in s.instances]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return ", ".join(str(v) for v in value)
    return str(value)


def _present(deid: Deidentifier | None, values: dict[str, Any]) -> dict[str, str]:
    """``values`` as the recipient may see them: unchanged, or what the profile leaves of them."""
    if deid is None:
        return {k: _text(v) for k, v in values.items()}
    ds = Dataset()
    for keyword, value in values.items():
        if value not in (None, ""):
            setattr(ds, keyword, value)
    deid.apply(ds)
    return {k: _text(ds.get(k)) for k in values}


def _burned_in(metadata_json: str) -> bool:
    value = orjson.loads(metadata_json).get("00280301", {}).get("Value") or [""]
    return str(value[0]).strip().upper() == "YES"


def _load(rt: Runtime, share: ShareState) -> SharedStudy:
    deid = Deidentifier(share.uid_salt) if share.deidentify else None
    with rt.db.read_session() as s:
        row = s.execute(select(Study, Patient).join(Patient, Patient.id == Study.patient_pk)
                        .where(Study.study_uid == share.study_uid)).first()
        if row is None:
            raise ContentNotFound("the shared study is no longer in the archive")
        study, patient = row
        series_rows = s.scalars(select(Series).where(Series.study_pk == study.id)).all()
        numbers = dict(s.execute(select(Instance.sop_uid, Instance.instance_number)
                                 .where(Instance.study_pk == study.id)).all())
        burned = set()
        if deid is not None:
            rows = s.execute(select(Instance.sop_uid, Instance.metadata_json).where(Instance.study_pk == study.id))
            burned = {uid for uid, meta in rows if _burned_in(meta)}
        refs = find_instances(s, share.study_uid)
    top = _present(deid, {
        "StudyInstanceUID": study.study_uid, "StudyDescription": study.description, "StudyDate": study.study_date,
        "StudyTime": study.study_time, "AccessionNumber": study.accession_number,
        "ModalitiesInStudy": [m for m in study.modalities.replace(",", "\\").split("\\") if m] or None,
        "PatientName": patient.name,
        "PatientID": patient.patient_id, "PatientBirthDate": patient.birth_date, "PatientSex": patient.sex,
    })
    shared = SharedStudy(
        uid=top["StudyInstanceUID"], description=top["StudyDescription"], date=top["StudyDate"],
        time=top["StudyTime"], accession=top["AccessionNumber"],
        modalities=top["ModalitiesInStudy"],
        patient={"name": top["PatientName"], "id": top["PatientID"], "birth_date": top["PatientBirthDate"],
                 "sex": top["PatientSex"]},
        deidentified=deid is not None,
    )
    by_series: dict[str, SharedSeries] = {}
    for row in sorted(series_rows, key=lambda r: (r.series_number is None, r.series_number or 0, r.id)):
        shown = _present(deid, {"SeriesInstanceUID": row.series_uid, "SeriesNumber": row.series_number,
                                "Modality": row.modality, "SeriesDescription": row.description,
                                "BodyPartExamined": row.body_part})
        by_series[row.series_uid] = SharedSeries(
            uid=shown["SeriesInstanceUID"], number=row.series_number, modality=shown["Modality"],
            description=shown["SeriesDescription"], body_part=shown["BodyPartExamined"])
    for ref in refs:
        if ref.sop_uid in burned:
            shared.withheld[BURNED_IN] = shared.withheld.get(BURNED_IN, 0) + 1
            continue
        item = SharedInstance(ref=ref, uid=deid.uid(ref.sop_uid) if deid else ref.sop_uid,
                              number=numbers.get(ref.sop_uid), frames=max(1, ref.number_of_frames or 1))
        by_series[ref.series_uid].instances.append(item)
        shared.by_uid[item.uid] = item
    shared.series = [s for s in by_series.values() if s.instances]
    return shared


def load_study(rt: Runtime, share: ShareState) -> SharedStudy:
    """The recipient's view of the shared study (cached briefly per link; the link is checked by the caller)."""
    return rt.cached(f"share.study.{share.id}", SUMMARY_SECONDS, lambda: _load(rt, share))


def manifest(study: SharedStudy, share: ShareState) -> dict[str, Any]:
    """The JSON manifest: study, series, instances and where to fetch them (paths relative to the link)."""
    return {
        "deidentified": study.deidentified,
        "mode": share.mode,
        "expires_at": share.expires_at.isoformat(),
        "study": {"uid": study.uid, "description": study.description, "date": study.date, "time": study.time,
                  "accession_number": study.accession, "modalities": study.modalities,
                  **({} if study.deidentified else {"patient": study.patient})},
        "series": [{
            "uid": s.uid, "number": s.number, "modality": s.modality, "description": s.description,
            "body_part": s.body_part, "thumbnail": f"instances/{s.instances[len(s.instances) // 2].uid}/thumbnail",
            "instances": [{"uid": i.uid, "number": i.number, "frames": i.frames,
                           "rendered": [f"instances/{i.uid}/frames/{n}/rendered" for n in range(1, i.frames + 1)]}
                          for i in s.instances],
        } for s in study.series],
        "withheld": [{"reason": reason, "instances": n} for reason, n in study.withheld.items()],
        "download": "download" if share.mode == "download" else None,
    }


def render(rt: Runtime, study: SharedStudy, uid: str, frame: int | None, opts: RenderOptions | None) -> bytes:
    """A PNG of one frame (1-based), or with ``opts`` None the 128-pixel thumbnail of the middle frame.

    Raises ContentNotFound for an image or frame not in the share, RenderError if it cannot be drawn.
    """
    item = study.by_uid.get(uid)
    if item is None:
        raise ContentNotFound("no such image in this share")
    index = (frame - 1) if frame else (item.frames // 2 if opts is None else 0)
    if not 0 <= index < item.frames:
        raise ContentNotFound(f"frame {index + 1} does not exist (the image has {item.frames})")
    with rt.blobs.open(item.ref.blob_key) as fh:
        try:
            return render_frame(fh, index, opts or RenderOptions(media_type="image/png", viewport=THUMBNAIL_VIEWPORT))
        except RenderError as exc:
            raise RenderError(f"image {uid}: {exc}") from exc


class _Sink(io.RawIOBase):
    """A write-only, unseekable target: zipfile then streams with data descriptors, and we hand out what it wrote."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    @property
    def buffered(self) -> int:
        return sum(len(p) for p in self._parts)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _instance_bytes(rt: Runtime, deid: Deidentifier | None, ref: InstanceRef) -> Iterator[bytes]:
    if deid is not None:
        yield from deid.stream_instance(lambda: rt.blobs.open(ref.blob_key), ref.pixel_offset, ref.pixel_length)
        return
    with rt.blobs.open(ref.blob_key) as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def zip_stream(rt: Runtime, study: SharedStudy, share: ShareState) -> Iterator[bytes]:
    """The study as a streamed ZIP: ``S<series>/I<instance>.dcm`` plus ``manifest.json``.

    Names carry positions, never UIDs or patient data. Entries are deflated
    at the fastest level: uncompressed images shrink by about half, and
    already compressed ones cost little CPU.
    """
    deid = Deidentifier(share.uid_salt) if share.deidentify else None
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
        for s_index, series in enumerate(study.series, start=1):
            for i_index, item in enumerate(series.instances, start=1):
                name = f"S{s_index:03d}/I{i_index:05d}.dcm"
                with zf.open(name, "w", force_zip64=item.ref.size > 2**31 - 2**26) as entry:
                    for chunk in _instance_bytes(rt, deid, item.ref):
                        entry.write(chunk)
                        if sink.buffered >= CHUNK:
                            yield sink.take()
                if sink.buffered:
                    yield sink.take()
        zf.writestr("manifest.json", orjson.dumps(manifest(study, share), option=orjson.OPT_INDENT_2))
    yield sink.take()
