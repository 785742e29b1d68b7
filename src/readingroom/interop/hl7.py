"""The HL7 v2 MLLP edge: the ``hl7`` library's asyncio server on its own loop, in a daemon thread.

``serve`` is synchronous (uvicorn, DIMSE threads), so the listener brings its
own event loop in a thread and hands each received block to
:func:`interop.hl7_inbound.receive` in a small thread pool: database work
never blocks the loop, so one slow message does not stall the other
connections. Blocks of one connection are processed one at a time, in
order, and each gets its ACK before the next is read (HL7 original mode).

A peer that sends garbage gets an AR where it can be answered (a frame
without the MLLP start byte, a message above the size limit) and is simply
dropped where it cannot (a connection closed mid-frame); either way the
listener keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hl7.mllp import HL7StreamReader, HL7StreamWriter, InvalidBlockError, start_hl7_server

from readingroom.interop import hl7_inbound
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

#: Largest message accepted (an ORU with an embedded PDF can be megabytes; asyncio's default is 64 KiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class MllpListener:
    """An MLLP server for inbound HL7 v2; ``stop()`` closes it and its connections."""

    def __init__(self, rt: Runtime, host: str, port: int, workers: int = 4) -> None:
        self.rt, self.host, self.port = rt, host, port
        self._loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hl7-handler")
        self._thread = threading.Thread(target=self._run, name=f"hl7-mllp-{port}", daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._error: BaseException | None = None

    def start(self) -> MllpListener:
        """Bind and start serving; raises (e.g. port in use) if the server could not start."""
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        log.info("HL7 MLLP listener on %s:%s", self.host, self.port)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                start_hl7_server(self._on_client, self.host, self.port, limit=MAX_MESSAGE_BYTES))
            if self.port == 0:
                self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _on_client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        peername = writer.get_extra_info("peername") or ("", 0)
        peer = f"{peername[0]}:{peername[1]}"
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # never let one connection take the listener down
            log.exception("HL7 connection from %s failed", peer)
        finally:
            if task is not None:
                self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter, peer: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                block = await reader.readblock()
            except asyncio.IncompleteReadError:
                return  # the peer closed the connection (perhaps mid-frame)
            except InvalidBlockError:
                ack = await loop.run_in_executor(self._executor, hl7_inbound.refuse_frame, self.rt, peer,
                                                 "the frame does not begin with the MLLP start block (0x0B)")
            except ValueError:
                ack = await loop.run_in_executor(self._executor, hl7_inbound.refuse_frame, self.rt, peer,
                                                 f"the message exceeds {MAX_MESSAGE_BYTES} bytes")
            else:
                ack = await loop.run_in_executor(self._executor, hl7_inbound.receive, self.rt, block, peer)
            writer.writeblock(ack.encode("utf-8"))
            await writer.drain()

    def stop(self) -> None:
        """Stop accepting, end open connections, stop the loop and the handler threads."""
        if not self._thread.is_alive():
            self._executor.shutdown(wait=False)
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)
        self._executor.shutdown(wait=True, cancel_futures=True)
        log.info("HL7 MLLP listener on port %s stopped", self.port)


def start_mllp_listener(rt: Runtime, host: str | None = None, port: int | None = None) -> MllpListener:
    """Start the listener on ``settings.host`` : ``settings.hl7_port`` (or the given address)."""
    return MllpListener(rt, host or rt.settings.host, rt.settings.hl7_port if port is None else port).start()
