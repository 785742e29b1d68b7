"""The ``readingroom`` command line.

Every command takes ``--data-dir`` (or ``READINGROOM_DATA_DIR``) and builds
the same Settings and Runtime the server uses, so the CLI and the server can
never disagree about where things are.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from readingroom.cli_support import DataDir, console, err
from readingroom.cli_support import cli_actor as _cli_actor
from readingroom.cli_support import fail as _fail
from readingroom.cli_support import open_runtime as _runtime
from readingroom.config import Settings, load_settings
from readingroom.governance.audit_cli import audit_app
from readingroom.governance.auth_cli import register as register_auth_commands
from readingroom.governance.retention_cli import retention_app
from readingroom.interop import golive_cli
from readingroom.interop.procedures_cli import procedures_app
from readingroom.runtime import Runtime
from readingroom.simulator import cli as simulator_cli

app = typer.Typer(help="ReadingRoom: medical imaging collaboration across sites.", no_args_is_help=True)
user_app = typer.Typer(help="Manage local accounts.", no_args_is_help=True)
token_app = typer.Typer(help="Manage API bearer tokens.", no_args_is_help=True)
peer_app = typer.Typer(help="Manage DICOM peers (callers and destinations).", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(peer_app, name="peer")
app.add_typer(db_app, name="db")
app.add_typer(retention_app, name="retention")
app.add_typer(audit_app, name="audit")
app.add_typer(procedures_app, name="procedures")




def _settings(data_dir: Path | None, **overrides: object) -> Settings:
    return load_settings(data_dir, **overrides)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _site_id(session: object, code: str | None) -> int | None:
    """The id of the site with this code (None for none); exits with a message if unknown."""
    from readingroom.governance.sites import site_by_code

    if not code:
        return None
    found = site_by_code(session, code)  # type: ignore[arg-type]
    if found is None:
        raise _fail(f"no site with code {code!r}")
    return found.id


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="HTTP listen address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080)")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (default 11112)")] = None,
    aet: Annotated[str | None, typer.Option(help="Our AE title (default READINGROOM)")] = None,
    hl7_port: Annotated[int | None, typer.Option(help="HL7 MLLP port (default 2575)")] = None,
    no_dimse: Annotated[bool, typer.Option("--no-dimse", help="Do not listen for DICOM")] = False,
    dicom_tls_port: Annotated[
        int | None, typer.Option(help="Also listen for DICOM TLS here (needs dicom_tls_cert / dicom_tls_key)")
    ] = None,
) -> None:
    """Run the server: HTTP (UI, API, DICOMweb), DICOM and background jobs."""
    from readingroom.app import serve as run
    from readingroom.archive.dimse_tls import TlsConfigError, server_context

    settings = _settings(data_dir, host=host, port=port, dicom_port=dicom_port, aet=aet, hl7_port=hl7_port,
                         dicom_tls_port=dicom_tls_port)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not no_dimse:
        try:  # unusable TLS settings stop the start with a readable reason, before anything listens
            server_context(settings)
        except TlsConfigError as exc:
            raise _fail(f"DICOM TLS: {exc}", code=2) from exc
    rt = Runtime.open(settings)
    tls = f"  DICOM TLS :{settings.dicom_tls_port}" if settings.dicom_tls_port and not no_dimse else ""
    err.print(
        f"ReadingRoom on http://{settings.host}:{settings.port}  "
        f"DICOM {settings.aet}@{settings.host}:{settings.dicom_port}{tls}  data {settings.data_dir}"
    )
    run(rt, dimse=not no_dimse)


@app.command()
def demo(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="HTTP listen address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port")] = None,
    studies: Annotated[int, typer.Option(help="Synthetic studies to generate")] = 20,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="Seed only, do not start the server")] = False,
) -> None:
    """Create a data dir with demo sites, users and studies, then serve it."""
    from readingroom.demo.seed import seed_demo

    settings = _settings(data_dir, host=host, port=port, dicom_port=dicom_port)
    rt = seed_demo(settings, n_studies=studies, console=err, progress=_progress())
    if no_serve:
        rt.close()
        return
    from readingroom.app import serve as run

    logging.basicConfig(level=rt.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(rt)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zip archives", exists=True)],
    data_dir: DataDir = None,
) -> None:
    """Import DICOM files, folders and zip archives, reporting what was skipped and why."""
    from readingroom.archive.importer import discover, import_items

    rt = _runtime(data_dir)
    items = list(discover(paths))
    with _progress() as progress:
        task = progress.add_task("Importing", total=len(items))
        report = import_items(rt, items, progress=lambda _i, _r: progress.advance(task))
    console.print(
        f"stored {report.stored}, already present {report.duplicates}, replaced {report.replaced}, "
        f"skipped {len(report.skipped)}"
    )
    if report.skipped:
        for name, reason in report.skipped[:200]:
            console.print(f"skipped {name}: {reason}", soft_wrap=True, markup=False, highlight=False)
        if len(report.skipped) > 200:
            console.print(f"... and {len(report.skipped) - 200} more")
    rt.close()


@app.command()
def send(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    peer: Annotated[str, typer.Argument(help="Peer name or AE title")],
    data_dir: DataDir = None,
) -> None:
    """Send a stored study to a DICOM peer with C-STORE."""
    from readingroom.archive.dimse import send_study
    from readingroom.archive.peers import peer_info

    rt = _runtime(data_dir)
    target = peer_info(rt, peer)
    if target is None:
        raise _fail(f"no peer named {peer!r} (see `readingroom peer list`)")
    with _progress() as progress:
        task = progress.add_task(f"Sending to {target.name}", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = send_study(rt, study_uid, target, progress=tick)
    console.print(f"sent {report.sent}, failed {report.failed}, warnings {report.warnings}")
    for line in report.errors[:50]:
        console.print(f"  {line}")
    rt.close()
    if report.failed or report.sent == 0:
        raise typer.Exit(1)


@app.command()
def check(
    data_dir: DataDir = None,
    repair: Annotated[bool, typer.Option("--repair", help="Index orphan blobs, clean staging")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Check sizes only, skip hashing")] = False,
) -> None:
    """Verify that the index and the blob store agree (sizes and hashes)."""
    from readingroom.archive.check import check as run_check

    rt = _runtime(data_dir)
    with _progress() as progress:
        task = progress.add_task("Checking", total=None)
        report = run_check(
            rt, repair=repair, verify_hashes=not quick,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(f"instances {report.instances}, blobs {report.blobs}")
    for label, items in (
        ("missing blob", report.missing_blobs),
        ("size mismatch", report.size_mismatch),
        ("hash mismatch", report.hash_mismatch),
        ("orphan blob", report.orphan_blobs),
    ):
        for item in items:
            console.print(f"{label}: {item}")
    for key in report.reindexed:
        console.print(f"re-indexed: {key}")
    for key in report.purge_pending:
        console.print(f"purged, deletion pending: {key}")
    if report.purge_completed:
        console.print(f"deleted {report.purge_completed} blob(s) of purged studies")
    for key, reason in report.unreadable_orphans:
        console.print(f"unrepairable orphan: {key}: {reason}")
    rt.close()
    if report.clean:
        console.print("[green]clean[/green]")
    else:
        raise typer.Exit(1)


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[str, typer.Option(help="admin, site_admin, radiologist, technologist, ...")] = "radiologist",
    password: Annotated[str | None, typer.Option(help="Password (prompted if omitted)")] = None,
    full_name: Annotated[str, typer.Option(help="Display name")] = "",
    site: Annotated[str | None, typer.Option(help="Site code")] = None,
    physician_name: Annotated[str, typer.Option(
        help="Name in DICOM/HL7 (PN, e.g. Hartmann^Lena): the clinician sees studies that name them")] = "",
    data_dir: DataDir = None,
) -> None:
    """Add a local account."""
    from readingroom.governance import audit
    from readingroom.governance.users import UserError, create_user

    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    rt = _runtime(data_dir)
    with rt.db.session() as s:
        site_id = _site_id(s, site)
        try:
            user = create_user(s, username, password=password, role=role, full_name=full_name, site_id=site_id)
        except UserError as exc:
            raise _fail(str(exc)) from exc
        user.physician_name = physician_name
        audit.record(s, actor=_cli_actor(), source="cli", action="user.create", resource_type="user",
                     resource_id=username, detail={"role": role, "site": site})
    console.print(f"user {username} ({role}) created")
    rt.close()


@token_app.command("create")
def token_create(
    username: str,
    name: Annotated[str, typer.Option(help="What the token is for")] = "cli",
    days: Annotated[float | None, typer.Option(help="Expire after this many days (default: never)")] = None,
    scope: Annotated[list[str] | None, typer.Option(
        help="Limit the token to this action (repeatable), e.g. --scope archive.read")] = None,
    data_dir: DataDir = None,
) -> None:
    """Issue a bearer token for a user and print it (shown once)."""
    from readingroom.governance.tokens import TokenError, issue_token
    from readingroom.governance.users import get_user

    rt = _runtime(data_dir)
    with rt.db.session() as s:
        user = get_user(s, username)
        if user is None:
            raise _fail(f"no user {username!r}")
        try:
            _, secret = issue_token(s, user, name=name, expires_in_days=days, scopes=scope or [], caller_scopes=None,
                                    actor=_cli_actor(), source="cli")
        except TokenError as exc:
            raise _fail(str(exc)) from exc
    rt.close()
    print(secret)


register_auth_commands(user_app, token_app)  # token list|revoke, user unlock|reset-2fa|sign-out
golive_cli.register(peer_app, _runtime, _cli_actor)  # peer test (interop/golive.py)
simulator_cli.register(app)  # simulate (simulator/)


@peer_app.command("add")
def peer_add(
    name: str,
    ae_title: str,
    host: str,
    port: int,
    site: Annotated[str | None, typer.Option(help="Site code this peer belongs to")] = None,
    description: Annotated[str, typer.Option(help="Free text")] = "",
    tls: Annotated[bool, typer.Option("--tls", help="Call this peer over DICOM TLS (C-MOVE, send)")] = False,
    data_dir: DataDir = None,
) -> None:
    """Register a DICOM peer (allowed to call us; a destination for C-MOVE and send)."""
    from readingroom.archive.peers import PeerError, add_peer

    rt = _runtime(data_dir)
    with rt.db.session() as s:
        site_id = _site_id(s, site)
        try:
            add_peer(s, name, ae_title, host, port, site_id=site_id, description=description, tls=tls,
                     actor=_cli_actor())
        except PeerError as exc:
            raise _fail(str(exc)) from exc
    console.print(f"peer {name} ({ae_title}@{host}:{port}{', TLS' if tls else ''}) added")
    rt.close()


@peer_app.command("list")
def peer_list(data_dir: DataDir = None) -> None:
    """List DICOM peers."""
    from readingroom.archive.peers import list_peers

    rt = _runtime(data_dir)
    table = Table("name", "AE title", "host", "port", "TLS", "site", "description")
    with rt.db.read_session() as s:
        for p in list_peers(s):
            table.add_row(p.name, p.ae_title, p.host, str(p.port), "yes" if p.tls else "", str(p.site_id or ""),
                          p.description)
    console.print(table)
    rt.close()


@peer_app.command("remove")
def peer_remove(name: str, data_dir: DataDir = None) -> None:
    """Remove a DICOM peer."""
    from readingroom.archive.peers import PeerError, remove_peer

    rt = _runtime(data_dir)
    with rt.db.session() as s:
        try:
            remove_peer(s, name, actor=_cli_actor())
        except PeerError as exc:
            raise _fail(str(exc)) from exc
    console.print(f"peer {name} removed")
    rt.close()


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDir = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
) -> None:
    """Apply schema migrations (serve does this on start too)."""
    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from readingroom.db import Database

    db = Database(settings.effective_database_url)
    db.upgrade(revision)
    console.print(f"database at {revision}: {db.engine.url.render_as_string(hide_password=True)}")
    db.dispose()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
