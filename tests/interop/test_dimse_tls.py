"""DICOM TLS against real peers: dcmtk's TLS-enabled tools calling us, and us calling dcmtk's storescp.

A throw-away PKI is generated per module (``tests/support/pki.py``): the
``good`` CA signs our node certificate, the dcmtk clients' certificates and a
storescp's; the ``rogue`` CA signs look-alikes that must be refused.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from readingroom.archive.models import Instance, Study
from readingroom.demo.synth import DEMO_SITES, StudySpec, write_study
from readingroom.governance.models import AuditRecord
from tests.interop import dcmtk
from tests.support.pki import Authority, Leaf
from tests.support.servers import ServerInfo, free_port

pytestmark = [pytest.mark.peer, pytest.mark.timeout(600)]

#: dcmtk timeouts (connection, ACSE, DIMSE): a hung handshake fails the test instead of stalling it.
TIMEOUTS = ("-to", "20", "-ta", "20", "-td", "60")


@dataclass
class Pki:
    ca: Authority
    node: Leaf  # ReadingRoom's certificate: server and client use
    client: Leaf  # a modality
    storescp: Leaf  # a TLS storage peer we send to
    rogue_ca: Authority
    rogue_client: Leaf
    rogue_storescp: Leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority.create(base / "good", "good"), Authority.create(base / "rogue", "rogue")
    loopback = ("localhost", "127.0.0.1")
    return Pki(
        ca=ca,
        node=ca.issue("readingroom", server=True, client=True, hosts=loopback),
        client=ca.issue("modality1", client=True),
        storescp=ca.issue("storescp", server=True, client=True, hosts=loopback),
        rogue_ca=rogue,
        rogue_client=rogue.issue("modality1", client=True),
        rogue_storescp=rogue.issue("storescp", server=True, client=True, hosts=loopback),
    )


@dataclass
class StudyFiles:
    uid: str
    directory: Path
    files: list[Path]


def make_study(out: Path, accession: str, patient: int, n_series: int = 1, n_instances: int = 2) -> StudyFiles:
    spec = StudySpec("CT", n_series, n_instances, DEMO_SITES[patient % len(DEMO_SITES)], patient, 3, accession,
                     rows=32, columns=32)
    files = write_study(spec, 23, out)
    return StudyFiles(str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), out / accession, files)


@pytest.fixture(scope="module")
def tls_server(server_factory: Callable[..., ServerInfo], pki: Pki) -> ServerInfo:
    """A server with a mutual-TLS DICOM port next to its plain one (callers need a certificate from ``good``)."""
    port = free_port()
    server = server_factory(dicom_tls_port=port, dicom_tls_cert=pki.node.cert, dicom_tls_key=pki.node.key,
                            dicom_tls_ca=pki.ca.cert)
    server.extra["tls_port"] = port
    return server


def tls_options(pki: Pki, leaf: Leaf | None) -> list[str]:
    """dcmtk options for TLS with a client certificate (or anonymous TLS), trusting ``good`` only."""
    identity = ["+tls", str(leaf.key), str(leaf.cert)] if leaf else ["+tla"]
    return [*identity, "+cf", str(pki.ca.cert)]


def scu(server: ServerInfo, tool: str, *args: str, aet: str, tls: list[str] | None, files: tuple[str, ...] = (),
        check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk SCU against the server's TLS port (``tls`` options) or, with ``tls=None``, still its TLS port."""
    port = str(server.extra["tls_port"])
    return dcmtk.run(tool, "-aet", aet, "-aec", server.aet, *TIMEOUTS, *(tls or []), *args, "127.0.0.1", port,
                     *files, check=check, timeout=timeout)


def audit_rows(server: ServerInfo, action: str) -> list[AuditRecord]:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))
    finally:
        rt.close()


def eventually(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def stored_count(server: ServerInfo, study_uid: str) -> int:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            return int(s.scalar(select(func.count()).select_from(Instance).join(Study, Instance.study_pk == Study.id)
                                .where(Study.study_uid == study_uid)) or 0)
    finally:
        rt.close()


@contextlib.contextmanager
def storescp(out: Path, pki: Pki, leaf: Leaf, aet: str = "TLSSTORE") -> Iterator[int]:
    """dcmtk's storescp listening with TLS (requiring a client certificate from ``good``) on a free port."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk.tool("storescp"), "-aet", aet, "+tls", str(leaf.key), str(leaf.cert), "+cf", str(pki.ca.cert),
         "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"storescp did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- calling us over TLS ----------------------------------------------------------------------------


def test_echoscu_over_tls(tls_server: ServerInfo, pki: Pki) -> None:
    result = scu(tls_server, "echoscu", "-v", aet="ECHOSCU", tls=tls_options(pki, pki.client))
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_storescu_over_tls_stores_and_records_the_certificate(tls_server: ServerInfo, pki: Pki,
                                                              tmp_path: Path) -> None:
    study = make_study(tmp_path, "TLSSTORE1", 1)
    scu(tls_server, "storescu", "+sd", "+r", aet="STORESCU", tls=tls_options(pki, pki.client),
        files=(str(study.directory),))
    assert stored_count(tls_server, study.uid) == len(study.files)
    sources = {r.source for r in audit_rows(tls_server, "instance.store") if r.outcome == "success"}
    # Provenance names the verified client certificate behind the AE title.
    assert "STORESCU@127.0.0.1 [TLS CN=modality1,O=good test]" in sources


def test_findscu_over_tls(tls_server: ServerInfo, pki: Pki, tmp_path: Path) -> None:
    study = make_study(tmp_path, "TLSFIND1", 2)
    scu(tls_server, "storescu", "+sd", "+r", aet="STORESCU", tls=tls_options(pki, pki.client),
        files=(str(study.directory),))
    out = tmp_path / "found"
    out.mkdir()
    scu(tls_server, "findscu", "-S", "-X", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={study.uid}", "-k", "NumberOfStudyRelatedInstances",
        aet="FINDSCU", tls=tls_options(pki, pki.client))
    found = [dcmread(p) for p in out.glob("*.dcm")]
    assert [(str(d.StudyInstanceUID), int(d.NumberOfStudyRelatedInstances)) for d in found] == [
        (study.uid, len(study.files))]


def test_plain_dicom_on_the_tls_port_fails_and_the_server_carries_on(tls_server: ServerInfo, pki: Pki) -> None:
    result = scu(tls_server, "echoscu", aet="ECHOSCU", tls=None, check=False)
    assert result.returncode != 0
    assert tls_server.alive()
    assert scu(tls_server, "echoscu", aet="ECHOSCU", tls=tls_options(pki, pki.client)).returncode == 0
    assert dcmtk.run("echoscu", "-aet", "ECHOSCU", "-aec", tls_server.aet, "127.0.0.1",
                     str(tls_server.dicom_port)).returncode == 0, "the plain port is unaffected"
    assert eventually(lambda: [r for r in audit_rows(tls_server, "association.reject")
                               if r.reason.startswith("TLS handshake failed") and r.source == "127.0.0.1"])


def test_a_silent_connection_does_not_block_other_callers(tls_server: ServerInfo, pki: Pki) -> None:
    """The handshake runs on the connection's thread, not in the accept loop.

    (With pynetdicom's own server, echoscu hangs here: dcmtk's timeouts do not cover the handshake.)
    """
    with socket.create_connection(("127.0.0.1", tls_server.extra["tls_port"])):
        result = scu(tls_server, "echoscu", aet="ECHOSCU", tls=tls_options(pki, pki.client), check=False,
                     timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_client_certificate_from_another_ca_is_rejected(tls_server: ServerInfo, pki: Pki) -> None:
    result = scu(tls_server, "echoscu", aet="ECHOSCU", tls=tls_options(pki, pki.rogue_client), check=False)
    assert result.returncode != 0
    rows = eventually(lambda: [r for r in audit_rows(tls_server, "association.reject")
                               if "certificate verify failed" in r.reason])
    assert rows and rows[0].outcome == "failure"
    assert tls_server.alive()


def test_anonymous_tls_is_rejected_when_a_ca_is_configured(tls_server: ServerInfo, pki: Pki) -> None:
    result = scu(tls_server, "echoscu", aet="ECHOSCU", tls=tls_options(pki, None), check=False)
    assert result.returncode != 0


def test_ae_allow_list_applies_on_the_tls_port(tls_server: ServerInfo, pki: Pki) -> None:
    result = scu(tls_server, "echoscu", "-v", aet="NOBODY", tls=tls_options(pki, pki.client), check=False)
    assert result.returncode != 0
    assert "calling ae title not recognized" in (result.stdout + result.stderr).lower()
    # The rejection is sent before it is audited: wait for the record.
    rows = eventually(lambda: [r for r in audit_rows(tls_server, "association.reject") if r.actor == "NOBODY"])
    assert rows and rows[0].source == "NOBODY@127.0.0.1 [TLS CN=modality1,O=good test]"
    assert "not a configured peer" in rows[0].reason


def test_tls_without_a_ca_encrypts_but_asks_no_certificate(server_factory: Callable[..., ServerInfo], pki: Pki,
                                                            tmp_path: Path) -> None:
    port = free_port()
    server = server_factory(dicom_tls_port=port, dicom_tls_cert=pki.node.cert, dicom_tls_key=pki.node.key)
    server.extra["tls_port"] = port
    study = make_study(tmp_path, "TLSANON1", 3, n_instances=1)
    scu(server, "storescu", aet="STORESCU", tls=tls_options(pki, None), files=(str(study.files[0]),))
    assert stored_count(server, study.uid) == 1
    assert {r.source for r in audit_rows(server, "instance.store")} == {"STORESCU@127.0.0.1 [TLS]"}


# -- us calling TLS peers ---------------------------------------------------------------------------


def plain_movescu(server: ServerInfo, destination: str, study_uid: str,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    return dcmtk.run("movescu", "-v", "-aet", "MOVESCU", "-aec", server.aet, *TIMEOUTS, "-S", "-aem", destination,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1",
                     str(server.dicom_port), check=check)


def test_send_and_move_to_a_tls_storescp(tls_server: ServerInfo, pki: Pki, tmp_path: Path) -> None:
    study = make_study(tmp_path / "data", "TLSSEND1", 4, n_series=2)
    scu(tls_server, "storescu", "+sd", "+r", aet="STORESCU", tls=tls_options(pki, pki.client),
        files=(str(study.directory),))
    with storescp(tmp_path / "sent", pki, pki.storescp) as port:
        added = tls_server.cli("peer", "add", "tlsstore", "TLSSTORE", "127.0.0.1", str(port), "--tls")
        assert "TLS" in added.stdout
        listed = tls_server.cli("peer", "list").stdout
        assert "tlsstore" in listed and "yes" in listed

        sent = tls_server.cli("send", study.uid, "tlsstore", check=False)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"sent {len(study.files)}, failed 0" in sent.stdout
        assert len(list((tmp_path / "sent").iterdir())) == len(study.files)
        sends = [r for r in audit_rows(tls_server, "study.send") if r.resource_id == study.uid]
        assert sends and sends[0].detail["destination"] == f"TLSSTORE@127.0.0.1:{port} tls"

        # C-MOVE to the TLS peer: the sub-operations go over TLS too. (dcmtk's movescu has no TLS,
        # so the request itself comes in on the plain port.)
        for f in (tmp_path / "sent").iterdir():
            f.unlink()
        plain_movescu(tls_server, "TLSSTORE", study.uid)
        assert len(list((tmp_path / "sent").iterdir())) == len(study.files)
        moved = eventually(lambda: [r for r in audit_rows(tls_server, "study.retrieve") if r.resource_id == study.uid])
        assert moved and moved[0].outcome == "success"
        assert moved[0].detail["destination"] == f"TLSSTORE@127.0.0.1:{port} tls"


def test_send_refuses_a_peer_with_an_untrusted_certificate(tls_server: ServerInfo, pki: Pki, tmp_path: Path) -> None:
    study = make_study(tmp_path / "data", "TLSROGUE1", 5, n_instances=1)
    scu(tls_server, "storescu", aet="STORESCU", tls=tls_options(pki, pki.client), files=(str(study.files[0]),))
    with storescp(tmp_path / "rogue", pki, pki.rogue_storescp, aet="ROGUE") as port:
        tls_server.cli("peer", "add", "roguestore", "ROGUE", "127.0.0.1", str(port), "--tls")
        sent = tls_server.cli("send", study.uid, "roguestore", check=False)
        assert sent.returncode == 1
        assert "TLS handshake failed: certificate verify failed" in " ".join(sent.stdout.split())
        assert not list((tmp_path / "rogue").iterdir())

        # The same through C-MOVE: refused with 0xA801, and the audit trail says why.
        moved = plain_movescu(tls_server, "ROGUE", study.uid, check=False)
        assert "Refused: MoveDestinationUnknown" in moved.stdout + moved.stderr
        assert eventually(lambda: [r for r in audit_rows(tls_server, "study.retrieve")
                                   if "TLS handshake failed: certificate verify failed" in r.reason])
        assert not list((tmp_path / "rogue").iterdir())


def test_plain_peer_cannot_reach_a_tls_storescp(tls_server: ServerInfo, pki: Pki, tmp_path: Path) -> None:
    study = make_study(tmp_path / "data", "TLSPLAIN1", 6, n_instances=1)
    scu(tls_server, "storescu", aet="STORESCU", tls=tls_options(pki, pki.client), files=(str(study.files[0]),))
    with storescp(tmp_path / "plain", pki, pki.storescp, aet="PLAINTRY") as port:
        tls_server.cli("peer", "add", "plaintry", "PLAINTRY", "127.0.0.1", str(port))
        sent = tls_server.cli("send", study.uid, "plaintry", check=False)
        assert sent.returncode == 1 and "sent 0" in sent.stdout


# -- configuration ----------------------------------------------------------------------------------


def test_peers_api_takes_and_returns_tls(tls_server: ServerInfo) -> None:
    with tls_server.client() as http:
        created = http.post("/api/v1/peers", json={"name": "apitls", "ae_title": "APITLS", "host": "192.0.2.9",
                                                    "port": 2762, "tls": True})
        assert created.status_code == 201, created.text
        assert created.json()["tls"] is True
        listed = {p["name"]: p for p in http.get("/api/v1/peers").json()}
        assert listed["apitls"]["tls"] is True and listed["storescu"]["tls"] is False
        bad = http.post("/api/v1/peers", json={"name": "badtls", "ae_title": "BADTLS", "host": "192.0.2.9",
                                                "port": 2762, "tls": "sometimes"})
        assert bad.status_code == 422
    adds = [r for r in audit_rows(tls_server, "peer.add") if r.resource_id == "apitls"]
    assert adds and adds[0].actor == "admin" and adds[0].detail["tls"] is True


@pytest.mark.parametrize(("settings", "message"), [
    ({"dicom_tls_cert": "CERT"}, "dicom_tls_key"),
    ({"dicom_tls_cert": "CERT", "dicom_tls_key": "MISSING"}, "does not exist"),
    ({"dicom_tls_cert": "GARBAGE", "dicom_tls_key": "KEY"}, "holds no PEM certificate"),
    ({"dicom_tls_cert": "CERT", "dicom_tls_key": "KEY", "dicom_tls_ca": "GARBAGE"}, "dicom_tls_ca"),
])
def test_serve_refuses_to_start_with_unusable_tls_settings(server_factory: Callable[..., ServerInfo], pki: Pki,
                                                           tmp_path: Path, settings: dict[str, str],
                                                           message: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = {"CERT": pki.node.cert, "KEY": pki.node.key, "GARBAGE": garbage, "MISSING": tmp_path / "nope.key"}
    server = server_factory(start=False, dicom_tls_port=free_port(),
                            **{k: files[v] for k, v in settings.items()})
    result = server.cli("serve", check=False, timeout=60)
    assert result.returncode == 2
    said = " ".join(result.stderr.split())  # the console wraps long lines
    assert message in said and "DICOM TLS" in said
