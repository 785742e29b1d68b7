"""Why a conference or referral request was refused, in words, with the kind the HTTP edge maps to a status.

The core raises :class:`Refused` and knows nothing of HTTP; the edge turns
``invalid`` into 422, ``not_found`` into 404 (also for things the caller
may not know of), ``forbidden`` into 403 and ``conflict`` into 409.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["invalid", "not_found", "forbidden", "conflict"]
STATUS: dict[str, int] = {"invalid": 422, "not_found": 404, "forbidden": 403, "conflict": 409}


class Refused(Exception):
    """A request the rules do not allow; nothing was stored."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind

    @property
    def status(self) -> int:
        return STATUS[self.kind]
