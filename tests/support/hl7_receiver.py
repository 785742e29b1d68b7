"""A real HL7 v2 MLLP receiver for tests: the ``hl7`` library's asyncio server, in a thread.

It records every message it reads and answers with an ACK whose MSA-1 is
``answer`` (AA by default; AE or AR when a test says so) and MSA-2 the
message's control id. ``lose_acks`` makes it keep the next N messages but
close the connection instead of acknowledging (the "stored, ACK lost" case
that makes a sender re-send); ``ack_control_id`` acknowledges another
message id than the one received. It can be stopped and started again on the
same port, like a RIS going down and coming back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from tests.support.servers import free_port


def control_id(message: str) -> str:
    fields = message.split("\r", 1)[0].split("|")
    return fields[9] if len(fields) > 9 else ""


@dataclass
class Hl7Receiver:
    """An MLLP receiver on 127.0.0.1 (``port``); ``messages`` are the ER7 texts received, in order."""

    port: int = field(default_factory=free_port)
    answer: str = "AA"
    answer_text: str = ""
    lose_acks: int = 0
    #: answer with this MSA-2 instead of the message's control id (an ACK for another message)
    ack_control_id: str = ""
    messages: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None
    _writers: set[HL7StreamWriter] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="hl7-receiver", daemon=True)
            self._thread.start()
        return self._loop

    def start(self) -> Hl7Receiver:
        loop = self._ensure_loop()
        self._server = asyncio.run_coroutine_threadsafe(
            start_hl7_server(self._client, "127.0.0.1", self.port, encoding="utf-8"), loop).result(10)
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections (the port refuses connections afterwards)."""
        if self._server is None or self._loop is None:
            return
        server, self._server = self._server, None

        async def close() -> None:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    def shutdown(self) -> None:
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop = None

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- what it received ---------------------------------------------------------------------------------------

    def received(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def control_ids(self) -> list[str]:
        return [control_id(m) for m in self.received()]

    # -- one connection ----------------------------------------------------------------------------------------

    async def _client(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                text = block.decode("utf-8")
                with self._lock:
                    self.messages.append(text)
                    lose = self.lose_acks > 0
                    if lose:
                        self.lose_acks -= 1
                if lose:
                    return
                writer.writeblock(self._ack(text).encode("utf-8"))
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()

    def _ack(self, message: str) -> str:
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        msa = f"MSA|{self.answer}|{self.ack_control_id or control_id(message)}"
        if self.answer_text:
            msa += f"|{self.answer_text}"
        return f"MSH|^~\\&|TESTRIS|TESTFAC|READINGROOM||{now}||ACK^R01^ACK|ACK{len(self.messages)}|P|2.5\r{msa}\r"


@contextmanager
def hl7_receiver(*, start: bool = True, **kwargs: object) -> Iterator[Hl7Receiver]:
    """A receiver for one test (started unless ``start=False``), shut down afterwards."""
    receiver = Hl7Receiver(**kwargs)  # type: ignore[arg-type]
    if start:
        receiver.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
