"""``readingroom peer test PEER``: the go-live checklist from the command line (Rich progress, a table, exit code)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from readingroom.cli_support import console, err
from readingroom.runtime import Runtime

_MARK = {"passed": "[green]passed[/green]", "failed": "[red]FAILED[/red]", "skipped": "[yellow]skipped[/yellow]"}


def _fmt(value: Any, unit: str) -> str:
    return "" if value is None else f"{value:g} {unit}"


def register(peer_app: typer.Typer, runtime: Callable[[Path | None], Runtime], actor: Callable[[], str]) -> None:
    """Add ``peer test`` to the ``peer`` command group."""

    @peer_app.command("test")
    def peer_test(
        name: str,
        data_dir: Path | None = typer.Option(None, "--data-dir", envvar="READINGROOM_DATA_DIR",
                                             help="Data directory (default ./readingroom-data)"),
    ) -> None:
        """Go-live validation of a peer: C-ECHO, test study stored and fetched back, DICOMweb, HL7 round trip.

        Prints the checklist and exits non-zero when a step failed (skipped steps have no configuration).
        """
        from readingroom.interop import golive

        rt = runtime(data_dir)
        try:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as bar:
                task = bar.add_task(f"validating {name}: c-echo", total=len(golive.STEPS))

                def progress(step: str, result: dict[str, Any] | None) -> None:
                    bar.update(task, advance=1, description=f"validating {name}: {step} "
                               f"{(result or {}).get('status', '')}")

                try:
                    run = golive.run_validation(rt, name, actor=actor(), progress=progress)
                except golive.GoLiveError as exc:
                    err.print(f"[red]error:[/red] {exc}")
                    raise typer.Exit(2) from exc
            table = Table("step", "result", "latency", "throughput", "detail", title=f"go-live checklist: {name}")
            for st in run.steps:
                table.add_row(st["step"], _MARK.get(st["status"], st["status"]), _fmt(st.get("latency_ms"), "ms"),
                              _fmt(st.get("throughput_mb_s"), "MB/s"), st.get("detail", ""))
            console.print(table)
            console.print(f"validation {run.id}: {_MARK.get(run.status, run.status)}")
            if run.status != "passed":
                raise typer.Exit(1)
        finally:
            rt.close()
