"""What every ``readingroom`` sub-command shares: consoles, the --data-dir option, the runtime, the actor.

The commands live beside their domain (``governance/auth_cli.py``,
``interop/procedures_cli.py`` ...) so each stays small; this module keeps
them behaving alike: one ``--data-dir`` help text, one way to open the data
directory, one audit actor for a command-line change and one error format.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from readingroom.runtime import Runtime

console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default ./readingroom-data or READINGROOM_DATA_DIR)"),
]


def open_runtime(data_dir: Path | None, **overrides: object) -> Runtime:
    """The data directory's runtime (settings from flags, environment and readingroom.toml; migrations applied)."""
    from readingroom.config import load_settings
    from readingroom.runtime import Runtime

    return Runtime.open(load_settings(data_dir, **overrides))


def cli_actor() -> str:
    """The audit actor of a command-line change: the operating-system account that ran it.

    The CLI acts with the data directory's full trust, so the audit trail
    names the person (account) at the keyboard rather than a ReadingRoom user.
    """
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; ``raise fail(...)`` ends the command with ``code``."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
