"""Credential commands of the CLI: ``token list|revoke`` and ``user unlock|reset-2fa|sign-out``.

For the operator at the server (lost phone, locked account, a token in a
leaked script, a stolen laptop). They act with the trust of whoever can read
the data directory and are audited as ``cli:<os user>``, like the rest of the
CLI. ``register`` adds them to the ``user`` and ``token`` groups of ``cli.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from readingroom.cli_support import DataDir, console
from readingroom.cli_support import cli_actor as actor
from readingroom.cli_support import fail as _fail
from readingroom.cli_support import open_runtime as _runtime

if TYPE_CHECKING:
    pass




def token_list(username: str, all_: Annotated[bool, typer.Option("--all", help="Also revoked and expired")] = False,
               data_dir: DataDir = None) -> None:
    """List a user's tokens (never the secrets)."""
    from readingroom.governance.tokens import list_tokens
    from readingroom.governance.users import get_user

    rt = _runtime(data_dir)
    table = Table("id", "name", "prefix", "scopes", "created", "expires", "revoked")
    with rt.db.read_session() as s:
        user = get_user(s, username)
        if user is None:
            raise _fail(f"no user {username!r}")
        for t in list_tokens(s, user.id, include_ended=all_):
            table.add_row(str(t.id), t.name, t.prefix, " ".join(t.scopes or []) or "(all)",
                          f"{t.created_at:%Y-%m-%d %H:%M}",
                          f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
                          f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "")
    rt.close()
    console.print(table)


def token_revoke(token_id: int, data_dir: DataDir = None) -> None:
    """Revoke a token now."""
    from readingroom.governance import tokens
    from readingroom.governance.models import ApiToken

    rt = _runtime(data_dir)
    with rt.db.session() as s:
        token = s.get(ApiToken, token_id)
        if token is None:
            raise _fail(f"no token {token_id}")
        if not tokens.revoke(s, token, actor=actor(), source="cli"):
            raise _fail(f"token {token_id} is already revoked")
    rt.close()
    console.print(f"token {token_id} revoked (running servers stop accepting it within seconds)")


def _with_user(data_dir: Path | None, username: str, change: str) -> None:
    from readingroom.governance import accounts, login, sessions
    from readingroom.governance.users import get_user

    rt = _runtime(data_dir)
    with rt.db.session() as s:
        user = get_user(s, username)
        if user is None:
            raise _fail(f"no user {username!r}")
        if change == "unlock":
            login.unlock(s, user, actor=actor(), source="cli")
        elif change == "reset-2fa":
            accounts.reset_second_factor(s, user, actor=actor(), source="cli")
        else:
            count = sessions.revoke_user_sessions(s, user.id, actor=actor(), source="cli",
                                                  reason="signed out by an operator")
            console.print(f"{count} session(s) ended")
    rt.close()


def user_unlock(username: str, data_dir: DataDir = None) -> None:
    """Lift a lockout after failed sign-ins."""
    _with_user(data_dir, username, "unlock")
    console.print(f"{username} unlocked")


def user_reset_second_factor(username: str, data_dir: DataDir = None) -> None:
    """Remove a lost authenticator app and end the user's sessions; they enrol again at next sign-in."""
    _with_user(data_dir, username, "reset-2fa")
    console.print(f"second factor of {username} removed")


def user_sign_out(username: str, data_dir: DataDir = None) -> None:
    """End every browser session of a user (running servers notice within seconds)."""
    _with_user(data_dir, username, "sign-out")


def register(user_app: typer.Typer, token_app: typer.Typer) -> None:
    """Add these commands to the CLI's ``user`` and ``token`` groups."""
    token_app.command("list")(token_list)
    token_app.command("revoke")(token_revoke)
    user_app.command("unlock")(user_unlock)
    user_app.command("reset-2fa")(user_reset_second_factor)
    user_app.command("sign-out")(user_sign_out)
