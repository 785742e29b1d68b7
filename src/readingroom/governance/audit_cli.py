"""``readingroom audit …``: verify and seal the hash chain, export the trail (JSON lines or ATNA XML).

``verify`` exits 0 when the chain is intact and 1 with a readable list of
problems otherwise, so it can run from cron or a monitoring check. Reading
the trail (verify, export) is itself audited, with the operating-system
account as the actor (``cli:<user>``).
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from readingroom.cli_support import DataDir, console, err
from readingroom.cli_support import cli_actor as _actor
from readingroom.cli_support import open_runtime as _runtime

if TYPE_CHECKING:
    pass

audit_app = typer.Typer(help="Verify, seal and export the tamper-evident audit trail.", no_args_is_help=True)

#: Problems printed in full; the rest are counted.
SHOWN = 200



class ExportFormat(StrEnum):
    jsonl = "jsonl"
    atna = "atna"


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False)


def _when(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or time; without a zone it is read as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        err.print(f"[red]error:[/red] --{name} {value!r} is not an ISO 8601 date or time (e.g. 2025-01-31T08:00Z)")
        raise typer.Exit(2) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit_app.command("verify")
def verify_cmd(data_dir: DataDir = None) -> None:
    """Check the whole chain: edited, deleted or inserted records, missing seals, a cut-off tail."""
    from readingroom.governance import audit
    from readingroom.governance.audit_chain import verify
    from readingroom.governance.audit_secrets import AuditSecretError, key_path

    rt = _runtime(data_dir)
    try:
        with _progress() as progress:
            task = progress.add_task("Verifying audit chain", total=None)
            report = verify(rt, progress=lambda done, total: progress.update(task, completed=done, total=total))
    except AuditSecretError as exc:
        err.print(f"[red]error:[/red] {exc} (key file: {key_path(rt.settings)})")
        rt.close()
        raise typer.Exit(1) from exc
    audit.record_now(rt.db, actor=_actor(), source="cli", action="audit.verify", resource_type="audit",
                     outcome="success" if report.ok else "failure",
                     detail={"seals": report.seals, "head_seq": report.head_seq, "problems": len(report.problems)})
    rt.close()
    head = "none" if report.head_seq is None else str(report.head_seq)
    console.print(f"checked {report.seals} seals, chain head seq {head}, key {report.key_fingerprint or '-'}, "
                  f"{report.pending} records waiting to be sealed", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if report.ok:
        console.print("[green]audit trail intact[/green]")
        return
    console.print(f"[red]{len(report.problems)} problem(s) found:[/red]")
    for problem in report.problems[:SHOWN]:
        console.print(f"  [{problem.kind}] {problem.message}", markup=False, highlight=False)
    if len(report.problems) > SHOWN:
        console.print(f"  ... and {len(report.problems) - SHOWN} more")
    raise typer.Exit(1)


@audit_app.command("seal")
def seal_cmd(data_dir: DataDir = None) -> None:
    """Seal every record written so far (a running server does this every few seconds)."""
    from readingroom.governance.audit_chain import ChainError, Sealer
    from readingroom.governance.audit_secrets import AuditSecretError, key_fingerprint

    rt = _runtime(data_dir)
    try:
        sealer = Sealer(rt)
        result = sealer.run(wait=True)
        fingerprint = key_fingerprint(sealer.key)
    except (ChainError, AuditSecretError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        rt.close()
    console.print(f"sealed {result.sealed} records; chain head seq {result.head_seq}; key {fingerprint}",
                  highlight=False)


@audit_app.command("export")
def export_cmd(
    data_dir: DataDir = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl (records and seals) or atna "
                                              "(one DICOM audit message per line)")] = ExportFormat.jsonl,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601; UTC unless a zone is given)")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO 8601)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of standard output")] = None,
) -> None:
    """Export the trail oldest first, for an archive, a SIEM or an ATNA repository."""
    from sqlalchemy import func, select

    from readingroom.governance import atna, audit
    from readingroom.governance.audit_search import (
        AuditFilter,
        AuditQueryError,
        apply_filter,
        atna_line,
        iter_export,
        jsonl_line,
    )
    from readingroom.governance.models import AuditRecord

    criteria = AuditFilter(since=_when(since, "since"), until=_when(until, "until"))
    rt = _runtime(data_dir)
    source = atna.AuditSource.of(rt.settings)
    written = 0
    try:
        with rt.db.read_session() as s:
            total = s.scalar(apply_filter(select(func.count()).select_from(AuditRecord), criteria)) or 0
        with ExitStack() as stack, _progress() as progress:
            sink: BinaryIO = stack.enter_context(open(out, "wb")) if out else sys.stdout.buffer
            task = progress.add_task("Exporting audit records", total=total)
            for row in iter_export(rt, criteria):
                sink.write(jsonl_line(row) if fmt is ExportFormat.jsonl else atna_line(row, source))
                written += 1
                if written % 500 == 0:
                    progress.update(task, completed=written)
            progress.update(task, completed=written)
            sink.flush()
    except AuditQueryError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except BrokenPipeError as exc:  # the reader (e.g. ``| head``) stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail too
        err.print(f"export stopped after {written} records: the output was closed")
        raise typer.Exit(1) from exc
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write {out or 'standard output'}: {exc}")
        raise typer.Exit(1) from exc
    finally:
        audit.record_now(rt.db, actor=_actor(), source="cli", action="audit.export", resource_type="audit",
                         detail={"format": fmt.value, "filters": criteria.applied(), "written": written,
                                 "out": str(out) if out else "stdout"})
        rt.close()
    err.print(f"exported {written} records", highlight=False)
