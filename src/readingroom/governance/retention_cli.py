"""``readingroom retention …``: runs, rules and legal holds from the command line.

The CLI works on the data dir directly, as the operator who owns it, so it
acts network-wide (no site scope); every change is audited with the
operating-system account as the actor (``cli:<user>``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from readingroom.cli_support import DataDir, console, err
from readingroom.cli_support import cli_actor as _actor
from readingroom.cli_support import fail as _fail
from readingroom.cli_support import open_runtime as _runtime

if TYPE_CHECKING:
    from readingroom.governance.retention_run import RetentionReport

retention_app = typer.Typer(help="Retention rules, legal holds and purge runs.", no_args_is_help=True)
rules_app = typer.Typer(help="List (no sub-command), add or remove retention rules.")
hold_app = typer.Typer(help="Place, release and list legal holds.", no_args_is_help=True)
retention_app.add_typer(rules_app, name="rules")
retention_app.add_typer(hold_app, name="hold")

#: Rows of the per-study table printed after a run (the totals always cover everything).
SHOWN = 50



def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


@retention_app.command("run")
def run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be purged")] = False,
    data_dir: DataDir = None,
) -> None:
    """Apply the retention rules now: purge due studies that nothing keeps (or just report with --dry-run)."""
    from readingroom.governance.retention_run import RetentionBusy, run_retention

    rt = _runtime(data_dir)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err) as progress:
            task = progress.add_task("Selecting" if dry_run else "Purging", total=None)
            report = run_retention(
                rt, dry_run=dry_run, actor=_actor(), source="cli",
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
            done = progress.tasks[0].total or 0  # None: nothing was due for purging
            progress.update(task, total=done, completed=done)
    except RetentionBusy as exc:
        raise _fail(str(exc)) from exc
    finally:
        rt.close()
    _print_report(report)
    if report.totals["failed"]:
        raise typer.Exit(1)


def _print_report(report: RetentionReport) -> None:
    if not report.rules:
        console.print("no enabled retention rules: nothing is due")
        return
    studies = Table("study", "patient", "date", "age (days)", "rule", "action", "why kept", title="Due studies")
    for d in report.studies[:SHOWN]:
        studies.add_row(d.study_uid, d.patient_id, d.study_date, "" if d.age_days is None else str(d.age_days),
                        d.rule, d.action, "; ".join(r.text for r in d.reasons))
    if report.studies:
        console.print(studies)
    if len(report.studies) > SHOWN:
        console.print(f"... and {len(report.studies) - SHOWN} more due studies")
    t = report.totals
    summary = Table("", "studies", title="Dry run (nothing changed)" if report.dry_run else "Retention run")
    summary.add_row("due", str(t["due"]))
    summary.add_row("would purge" if report.dry_run else "purged", str(t["purge"]))
    summary.add_row("kept", str(t["kept"]))
    if not report.dry_run:
        summary.add_row("changed since selection", str(t["skipped"]))
        summary.add_row("failed", str(t["failed"]))
    summary.add_row("instances", str(t["instances"]))
    summary.add_row("size", _size(t["bytes"]))
    console.print(summary)


@rules_app.callback(invoke_without_command=True)
def rules(ctx: typer.Context, data_dir: DataDir = None) -> None:
    """List retention rules."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlalchemy import select

    from readingroom.governance.models import Site
    from readingroom.governance.retention_admin import list_rules

    rt = _runtime(data_dir)
    table = Table("id", "name", "site", "modality", "older than (days)", "enabled", "created by")
    with rt.db.read_session() as s:
        codes = {site.id: site.code for site in s.scalars(select(Site))}
        for r in list_rules(s, None):
            table.add_row(str(r.id), r.name, codes.get(r.site_id, "") if r.site_id else "(all)",
                          r.modality or "(any)", str(r.min_age_days), "yes" if r.enabled else "no", r.created_by)
    rt.close()
    console.print(table)


@rules_app.command("add")
def rules_add(
    name: str,
    days: Annotated[int, typer.Option("--days", help="Studies older than this many days become due")],
    site: Annotated[str | None, typer.Option(help="Site code (default: every site)")] = None,
    modality: Annotated[str, typer.Option(help="DICOM modality, e.g. CT (default: any)")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it switched off")] = False,
    data_dir: DataDir = None,
) -> None:
    """Add a retention rule."""
    from readingroom.governance.retention_admin import RetentionError, create_rule
    from readingroom.governance.sites import site_by_code

    rt = _runtime(data_dir)
    try:
        with rt.db.session() as s:
            site_id = None
            if site:
                found = site_by_code(s, site)
                if found is None:
                    raise _fail(f"no site with code {site!r}")
                site_id = found.id
            rule = create_rule(s, name=name, site_id=site_id, modality=modality, min_age_days=days,
                               enabled=not disabled, actor=_actor(), scope=None, source="cli")
            console.print(f"rule {rule.id} {rule.name!r} added")
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    finally:
        rt.close()


@rules_app.command("remove")
def rules_remove(name: str, data_dir: DataDir = None) -> None:
    """Remove a retention rule by name."""
    from sqlalchemy import select

    from readingroom.governance.models import RetentionRule
    from readingroom.governance.retention_admin import RetentionError, delete_rule

    rt = _runtime(data_dir)
    try:
        with rt.db.session() as s:
            rule_id = s.scalar(select(RetentionRule.id).where(RetentionRule.name == name))
            if rule_id is None:
                raise _fail(f"no retention rule named {name!r}")
            delete_rule(s, rule_id, actor=_actor(), scope=None, source="cli")
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    finally:
        rt.close()
    console.print(f"rule {name!r} removed")


@hold_app.command("add")
def hold_add(
    reason: Annotated[str, typer.Option("--reason", help="Matter, case number, who asked for it")],
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID to hold")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Patient ID: hold all of their studies")] = None,
    data_dir: DataDir = None,
) -> None:
    """Place a legal hold on a study or on every study of a patient."""
    from readingroom.governance.retention_admin import RetentionError, create_hold

    rt = _runtime(data_dir)
    try:
        with rt.db.session() as s:
            view = create_hold(s, study_uid=study or "", patient_id=patient or "", reason=reason,
                               actor=_actor(), scope=None, source="cli")
            console.print(f"legal hold {view.hold.id} placed; it covers {view.studies} stored study(ies)")
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    finally:
        rt.close()


@hold_app.command("release")
def hold_release(
    hold_id: int,
    reason: Annotated[str, typer.Option("--reason", help="Why it is released")] = "",
    data_dir: DataDir = None,
) -> None:
    """Release a legal hold."""
    from readingroom.governance.retention_admin import RetentionError, release_hold

    rt = _runtime(data_dir)
    try:
        with rt.db.session() as s:
            release_hold(s, hold_id, actor=_actor(), scope=None, reason=reason, source="cli")
    except RetentionError as exc:
        raise _fail(str(exc)) from exc
    finally:
        rt.close()
    console.print(f"legal hold {hold_id} released")


@hold_app.command("list")
def hold_list(
    all_: Annotated[bool, typer.Option("--all", help="Include released holds")] = False,
    data_dir: DataDir = None,
) -> None:
    """List legal holds (active ones unless --all)."""
    from readingroom.governance.retention_admin import list_holds

    rt = _runtime(data_dir)
    table = Table("id", "study", "patient", "studies", "reason", "placed by", "placed", "released")
    with rt.db.read_session() as s:
        for v in list_holds(s, None, actor=_actor(), include_released=all_):
            h = v.hold
            released = f"{h.released_at:%Y-%m-%d %H:%M} by {h.released_by}" if h.released_at else ""
            table.add_row(str(h.id), h.study_uid, h.patient_id, str(v.studies), h.reason, h.created_by,
                          f"{h.created_at:%Y-%m-%d %H:%M}", released)
    rt.close()
    console.print(table)
