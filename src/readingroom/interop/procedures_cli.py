"""``readingroom procedures …``: import CSV files and the starter catalogue, list what is unmapped.

The CLI works on the data dir as the operator who owns it: network-wide (no
site scope), audited as ``cli:<os user>``. Imports are all or nothing per
file, exactly as through the API (:mod:`readingroom.interop.procedures_csv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from readingroom.cli_support import DataDir, console, err
from readingroom.cli_support import cli_actor as _actor
from readingroom.cli_support import open_runtime as _runtime

if TYPE_CHECKING:
    pass

procedures_app = typer.Typer(help="Canonical procedures: CSV import, the starter catalogue, unmapped descriptions.",
                             no_args_is_help=True)



@procedures_app.command("import")
def import_(
    file: Annotated[Path | None, typer.Argument(
        help="CSV of procedures or of mappings (see docs/interop/procedures.md)", exists=True, dir_okay=False)] = None,
    catalogue: Annotated[bool, typer.Option("--catalogue", help="Import the starter catalogue shipped with "
                                            "ReadingRoom (about 30 common CT, MR, XR and US procedures)")] = False,
    data_dir: DataDir = None,
) -> None:
    """Import procedures or mappings: every row is checked first, and a file with a bad row changes nothing."""
    from readingroom.interop import procedures_csv

    if (file is None) == (not catalogue):
        err.print("[red]error:[/red] give a FILE or --catalogue (one of them)")
        raise typer.Exit(2)
    text = procedures_csv.catalogue_text() if catalogue else procedures_csv.read_upload(file.read_bytes())  # type: ignore[union-attr]
    rt = _runtime(data_dir)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
            task = bar.add_task("checking rows", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            with rt.db.session() as s:
                report = procedures_csv.import_csv(s, text, actor=_actor(), progress=progress)
    except procedures_csv.ImportRejected as exc:
        table = Table("line", "row", "reason", title="rejected rows (nothing was imported)")
        for row in exc.report.errors:
            table.add_row(str(row.line), row.key, row.reason)
        if exc.report.errors:
            err.print(table)
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        rt.close()
    counts = report.counts
    console.print(f"{report.kind}: {counts['created']} created, {counts['updated']} updated, "
                  f"{counts['skipped']} skipped" + (f"; {report.cases_classified} cases classified"
                                                     if report.kind == "mappings" else ""))


@procedures_app.command("unmapped")
def unmapped(
    site: Annotated[str | None, typer.Option("--site", help="Only this site's (code)")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most rows shown")] = 50,
    data_dir: DataDir = None,
) -> None:
    """Descriptions and codes no mapping covers yet, most frequent first: what to map next."""
    from sqlalchemy import select

    from readingroom.governance.models import Site
    from readingroom.interop.procedure_mappings import unmapped as list_unmapped

    rt = _runtime(data_dir)
    try:
        with rt.db.read_session() as s:
            ids = None
            if site:
                found = s.scalar(select(Site.id).where(Site.code == site))
                if found is None:
                    err.print(f"[red]error:[/red] no site with code {site!r}")
                    raise typer.Exit(1)
                ids = [found]
            rows = list_unmapped(s, site_ids=ids, limit=limit)
    finally:
        rt.close()
    if not rows:
        console.print("every case has a canonical procedure")
        return
    table = Table("site", "description", "code", "cases", "orders", "last seen")
    for r in rows:
        table.add_row(r.site or "-", r.description, r.code, str(r.cases), str(r.orders),
                      r.last_seen.isoformat(timespec="minutes") if r.last_seen else "")
    console.print(table)


@procedures_app.command("reapply")
def reapply(data_dir: DataDir = None) -> None:
    """Classify cases still without a procedure with the current mappings (a bounded batch, newest first)."""
    from readingroom.interop import procedures  # noqa: F401 - registers the resolver
    from readingroom.interop.procedure_mappings import reapply as run

    rt = _runtime(data_dir)
    try:
        with rt.db.session() as s:
            changed = run(s)
    finally:
        rt.close()
    console.print(f"{changed} cases classified")
