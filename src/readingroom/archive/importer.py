"""Bulk import of files, folders and zip archives (``readingroom import``)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from readingroom.archive.ingest import IngestResult, ingest_path, ingest_stream
from readingroom.runtime import Runtime


@dataclass
class ImportReport:
    """What an import did, with every skipped item and the reason."""

    stored: int = 0
    duplicates: int = 0
    replaced: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, result: IngestResult) -> None:
        if result.status == "stored":
            self.stored += 1
        elif result.status == "duplicate":
            self.duplicates += 1
        elif result.status == "replaced":
            self.replaced += 1
        else:
            self.skipped.append((name, f"{result.status}: {result.reason}"))


@dataclass(frozen=True)
class Item:
    """One candidate object: a file, or a member of a zip archive."""

    path: Path
    member: str | None = None
    size: int = 0

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


def _skip_name(name: str) -> bool:
    base = os.path.basename(name)
    return base.startswith(".") or base.upper() == "DICOMDIR" or name.endswith("/")


def discover(paths: list[Path]) -> Iterator[Item]:
    """Every file under the given paths; zip archives are opened and their members listed."""
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if _skip_name(str(path)):
                continue
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        if not info.is_dir() and not _skip_name(info.filename):
                            yield Item(path, info.filename, info.file_size)
            else:
                yield Item(path, None, path.stat().st_size)


def import_items(
    rt: Runtime,
    items: list[Item],
    *,
    actor: str = "cli",
    progress: Callable[[Item, IngestResult], None] | None = None,
) -> ImportReport:
    """Ingest each item; nothing aborts the run, failures are reported."""
    report = ImportReport()
    for item in items:
        try:
            if item.member is None:
                result = ingest_path(rt, item.path, actor=actor, source=f"import:{item.path.name}")
            else:
                with zipfile.ZipFile(item.path) as zf, zf.open(item.member) as fh:
                    result = ingest_stream(rt, fh, actor=actor, source=f"import:{item.path.name}")
        except OSError as exc:
            result = IngestResult(status="failed", reason=str(exc))
        report.add(item.name, result)
        if progress:
            progress(item, result)
    return report
