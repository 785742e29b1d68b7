"""Send one HL7 v2 message over MLLP and wait for its acknowledgement.

Built on the ``hl7`` library's asyncio MLLP streams (``open_hl7_connection``),
run on a private event loop so the synchronous outbox worker can call it.
One connection per message keeps the failure model simple: whatever goes
wrong between connect and ACK is a transient failure, the outbox retries the
same bytes (same MSH-10) later and the receiver drops a duplicate.

The ACK is checked, not just read: MSA-2 must name the control id we sent
(an ACK for another message proves nothing about this one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import hl7
from hl7.mllp import open_hl7_connection

T = TypeVar("T")


class MllpError(Exception):
    """The message could not be delivered or acknowledged (refused connection, timeout, no valid ACK)."""


@dataclass(frozen=True)
class Ack:
    """What the receiver answered: MSA-1 (AA, AE, AR, CA, CE, CR), MSA-2, a readable text, the raw ACK."""

    code: str
    control_id: str
    text: str
    raw: str

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def control_id_of(message: str) -> str:
    """MSH-10 of an ER7 message (the id its ACK must echo)."""
    first = message.replace("\n", "\r").split("\r", 1)[0]
    fields = first.split(first[3]) if first.startswith("MSH") and len(first) > 3 else []
    return fields[9] if len(fields) > 9 else ""


def parse_ack(raw: str) -> Ack:
    """MSA-1, MSA-2 and the reason (MSA-3, else ERR-8 / ERR-1 text) of an ACK message."""
    try:
        message = hl7.parse(raw.replace("\n", "\r"))
        msa = message.segment("MSA")
    except (KeyError, IndexError, ValueError) as exc:
        raise MllpError(f"the answer is not an HL7 ACK with an MSA segment: {raw[:200]!r}") from exc
    code = str(msa[1]).strip() if len(msa) > 1 else ""
    control = str(msa[2]).strip() if len(msa) > 2 else ""
    text = str(msa[3]).strip() if len(msa) > 3 else ""
    if not text:
        for seg in message:
            if str(seg[0]) == "ERR":
                text = ((str(seg[8]) if len(seg) > 8 else "") or (str(seg[1]) if len(seg) > 1 else "")).strip()
                if text:
                    break
    return Ack(code=code, control_id=control, text=message.unescape(text) if text else "", raw=raw)


async def _exchange(host: str, port: int, message: str, connect_timeout: float, ack_timeout: float) -> str:
    try:
        reader, writer = await asyncio.wait_for(open_hl7_connection(host, port, encoding="utf-8"),
                                                connect_timeout)
    except TimeoutError as exc:
        raise MllpError(f"connecting to {host}:{port} timed out after {connect_timeout:g} s") from exc
    except OSError as exc:
        raise MllpError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        writer.writeblock(message.encode("utf-8"))
        await writer.drain()
        block = await asyncio.wait_for(reader.readblock(), ack_timeout)
        return block.decode("utf-8", "replace")
    except TimeoutError as exc:
        raise MllpError(f"no ACK from {host}:{port} within {ack_timeout:g} s") from exc
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise MllpError(f"connection to {host}:{port} broke before the ACK: {exc or type(exc).__name__}") from exc
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (OSError, TimeoutError):
            pass


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def send(host: str, port: int, message: str, *, connect_timeout: float = 5.0, ack_timeout: float = 30.0) -> Ack:
    """Send ``message`` (segments separated by CR) and return the checked ACK; MllpError when there is none."""
    raw = _run(_exchange(host, port, message, connect_timeout, ack_timeout))
    ack = parse_ack(raw)
    expected = control_id_of(message)
    if expected and ack.control_id != expected:
        raise MllpError(f"the ACK names message {ack.control_id!r}, not the {expected!r} that was sent")
    return ack
