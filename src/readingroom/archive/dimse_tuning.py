"""pynetdicom 3.0 without its per-message polling and per-4-KiB socket reads.

pynetdicom runs two threads per association and both poll: the DUL thread
sleeps ``_run_loop_delay`` (1 ms) whenever nothing is queued, and the
association thread sleeps 1 ms on *every* loop before looking for a decoded
DIMSE message. A C-STORE therefore waits for up to three polling ticks
(request decoded -> association thread -> response queued -> DUL thread),
and every idle association burns CPU waking up a thousand times a second,
which on a 2-core server competes with ingest itself (see
``bench/RESULTS.md``; pynetdicom issues #120, #650 discuss the trade-off).

The replacements below are line-for-line the pynetdicom 3.0.4 loops with the
sleeps replaced by waits that end as soon as there is work:

* the DUL thread ``select``s on its socket plus a wake-up pipe that is
  written whenever a primitive is queued for it to send;
* the association thread waits on an event set whenever a DIMSE message or
  an ACSE primitive is queued for it, or another thread asks it to pause.

Both still wake every ``MAX_WAIT`` seconds to notice what nobody signals
(ARTIM/idle timers, ``kill()``, a dead DUL thread), so a missed signal can
only cost latency, never a hang.

Separately, ``AssociationSocket.recv`` reads a PDU 4 KiB at a time: about
130 ``recv`` calls for a 0.5 MB CT slice, each releasing and re-taking the
GIL, which under several associations turned into over a thousand futex
calls per instance (``strace -c``). ``_recv`` fills one buffer of the PDU's
size with ``recv_into``, taking whatever the kernel has ready each time.

Finally, the listening server runs a full ``gc.collect()`` every 60 turns
of its accept loop (a workaround for association threads not being freed
in old Pythons): 50-120 ms with the GIL held in a process the size of
``serve``, a stall for every query and association in flight. Python's own
generational collector reclaims those cycles anyway, so that hook is off.

``install()`` patches the classes once and only for the pynetdicom versions
this was written against; any other version keeps its own code.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationServer, AssociationSocket

log = logging.getLogger(__name__)

#: Longest wait without a signal (timers, kill, a dead peer thread are noticed this late at most).
MAX_WAIT = 0.05
SUPPORTED = ("3.0.",)

_installed = False
_install_lock = threading.Lock()


def install() -> bool:
    """Patch pynetdicom's reactors (idempotent); False if this version is not supported."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        if not pynetdicom.__version__.startswith(SUPPORTED):
            log.info("pynetdicom %s: keeping its polling reactors", pynetdicom.__version__)
            return False
        DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
        Association._run_reactor = _assoc_run_reactor  # type: ignore[method-assign]
        AssociationSocket.recv = _recv  # type: ignore[method-assign]
        AssociationServer.service_actions = _no_forced_collection  # type: ignore[method-assign]
        _installed = True
        return True


def _chain_after(obj: Any, method: str, signal: Any) -> None:
    """Make ``obj.method(...)`` also call ``signal()`` afterwards (instance attribute, class untouched)."""
    original = getattr(obj, method)

    def chained(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        signal()
        return result

    setattr(obj, method, chained)


def _no_forced_collection(self: AssociationServer) -> None:
    """``AssociationServer.service_actions`` without its periodic full garbage collection."""


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """pynetdicom's ``AssociationSocket.recv`` (blocking until ``nr_bytes`` or EOF), in few system calls."""
    assert self.socket is not None
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    while nr_read < nr_bytes:
        n = self.socket.recv_into(view[nr_read:], nr_bytes - nr_read)
        if not n:  # connection closed: return what arrived, as pynetdicom does
            del view
            del buffer[nr_read:]
            return buffer
        nr_read += n
    return buffer


# -- DUL thread ------------------------------------------------------------------------------


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """pynetdicom 3.0.4 ``DULServiceProvider.run_reactor``, waiting on socket + wake pipe."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    # Guards against writing to a closed (and possibly reused) descriptor after the loop ends.
    lock = threading.Lock()
    closed = False

    def wake() -> None:
        with lock:
            if closed:
                return
            try:
                os.write(wake_w, b"\0")
            except BlockingIOError:  # pipe full: the thread is awake anyway
                pass

    _chain_after(self.to_provider_queue, "put", wake)
    try:
        _dul_loop(self, wake_r)
    finally:
        self.to_provider_queue.__dict__.pop("put", None)
        with lock:
            closed = True
            os.close(wake_r)
            os.close(wake_w)


def _dul_wait(self: DULServiceProvider, wake_r: int) -> None:
    """Block until the peer sent data, a primitive was queued, or MAX_WAIT (or the ARTIM timer) elapsed."""
    timeout = MAX_WAIT
    if self.artim_timer._start_time is not None and self.artim_timer.timeout is not None:
        timeout = max(0.0, min(timeout, self.artim_timer.remaining))
    fds: list[Any] = [wake_r]
    sock = getattr(self.socket, "socket", None)
    if sock is not None and getattr(self.socket, "_is_connected", False):
        pending = getattr(sock, "pending", None)  # TLS may hold decrypted bytes select cannot see
        if pending is not None and pending():
            return
        fds.append(sock)
    try:
        ready, _, _ = select.select(fds, [], [], timeout)
    except (OSError, ValueError):  # socket closed under us: the next transport check reports it
        return
    if wake_r in ready:
        try:
            while os.read(wake_r, 4096):
                pass
        except BlockingIOError:
            pass


def _dul_loop(self: DULServiceProvider, wake_r: int) -> None:
    self._idle_timer.start()
    sleep = False
    while True:
        if not self.assoc._dul_ready.is_set():
            self.assoc._dul_ready.set()
            sleep = True
        if sleep:
            _dul_wait(self, wake_r)
        if self._kill_thread:
            break
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        try:
            if self._process_recv_primitive():
                pass
            elif self._is_transport_event():
                self._idle_timer.restart()
        except Exception as exc:
            pynetdicom.dul.LOGGER.error("Exception in DUL.run(), aborting association")
            pynetdicom.dul.LOGGER.exception(exc)
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            assert self.socket is not None
            self.socket.send(abort_pdu.encode())
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True
            return
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            sleep = True
            continue
        self.state_machine.do_action(event)
        sleep = False


# -- association thread ----------------------------------------------------------------------


def _assoc_run_reactor(self: Association) -> None:
    """pynetdicom 3.0.4 ``Association._run_reactor``, waiting on an event instead of sleeping 1 ms."""
    wake = threading.Event()
    hooked = [
        (self.dimse.msg_queue, "put"),
        (self.dul.to_user_queue, "put"),
        (self._reactor_checkpoint, "clear"),
    ]
    for obj, method in hooked:
        _chain_after(obj, method, wake.set)
    try:
        _assoc_loop(self, wake)
    finally:
        for obj, method in hooked:
            obj.__dict__.pop(method, None)


def _has_work(self: Association) -> bool:
    return bool(self.dimse.msg_queue.qsize() or self.dul.to_user_queue.qsize()
                or not self._reactor_checkpoint.is_set())


def _assoc_loop(self: Association, wake: threading.Event) -> None:
    logger = pynetdicom.association.LOGGER
    self._is_paused = False
    while not self._kill:
        # Clear before looking, so a signal that arrives after the checks below wakes the next wait.
        wake.clear()
        if not _has_work(self):
            wake.wait(MAX_WAIT)
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, int(context_id))  # type: ignore[arg-type]

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            logger.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            logger.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            logger.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


__all__ = ["MAX_WAIT", "install"]
