"""DICOM TLS in process: settings checks, provenance, and our own SCU calling our own TLS listener."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pydicom import dcmread
from sqlalchemy import select

from readingroom.archive.dimse_policy import Caller
from readingroom.archive.dimse_tls import TlsConfigError, client_context, server_context, subject_of
from readingroom.archive.peers import PeerInfo
from readingroom.config import load_settings
from readingroom.governance.models import AuditRecord
from tests.support.pki import Authority, Leaf
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("pki"), "good")


@pytest.fixture(scope="module")
def node(ca: Authority) -> Leaf:
    """Our certificate: used to listen and to call, valid for 127.0.0.1 only (not for 'localhost')."""
    return ca.issue("readingroom", server=True, client=True, hosts=("127.0.0.1",))


def test_server_context_needs_port_cert_and_key(tmp_path: Path, ca: Authority, node: Leaf) -> None:
    assert server_context(load_settings(tmp_path, dicom_tls_cert=node.cert, dicom_tls_key=node.key)) is None
    with pytest.raises(TlsConfigError, match="dicom_tls_cert and dicom_tls_key not"):
        server_context(load_settings(tmp_path, dicom_tls_port=2762))
    with pytest.raises(TlsConfigError, match="is also dicom_port"):
        server_context(load_settings(tmp_path, dicom_tls_port=11112, dicom_tls_cert=node.cert,
                                     dicom_tls_key=node.key))
    other = ca.issue("other", client=True)
    with pytest.raises(TlsConfigError, match="do not load as a certificate and its private key"):
        server_context(load_settings(tmp_path, dicom_tls_port=2762, dicom_tls_cert=node.cert, dicom_tls_key=other.key))
    with pytest.raises(TlsConfigError, match="holds no PEM certificate"):
        server_context(load_settings(tmp_path, dicom_tls_port=2762, dicom_tls_cert=node.key, dicom_tls_key=node.key))
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(node.key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsConfigError, match="is encrypted"):
        server_context(load_settings(tmp_path, dicom_tls_port=2762, dicom_tls_cert=node.cert, dicom_tls_key=encrypted))
    with pytest.raises(TlsConfigError, match="is not a file"):
        server_context(load_settings(tmp_path, dicom_tls_port=2762, dicom_tls_cert=tmp_path, dicom_tls_key=node.key))

    open_ctx = server_context(load_settings(tmp_path, dicom_tls_port=2762, dicom_tls_cert=node.cert,
                                            dicom_tls_key=node.key))
    assert open_ctx is not None and open_ctx.verify_mode == ssl.CERT_NONE
    assert open_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    mutual = server_context(load_settings(tmp_path, dicom_tls_port=2762, dicom_tls_cert=node.cert,
                                          dicom_tls_key=node.key, dicom_tls_ca=ca.cert))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED


def test_client_context_always_verifies(tmp_path: Path, ca: Authority, node: Leaf) -> None:
    ctx = client_context(load_settings(tmp_path))  # system trust store, no client certificate
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(TlsConfigError, match="must be set together"):
        client_context(load_settings(tmp_path, dicom_tls_cert=node.cert))
    with pytest.raises(TlsConfigError, match=r"dicom_tls_ca: .* does not exist"):
        client_context(load_settings(tmp_path, dicom_tls_ca=tmp_path / "missing.pem"))


def test_caller_source_names_the_certificate_and_fits_its_column() -> None:
    assert Caller("CT1", "10.0.0.5").source == "CT1@10.0.0.5"
    assert Caller("CT1", "10.0.0.5", transport="TLS").source == "CT1@10.0.0.5 [TLS]"
    long = Caller("CT1", "10.0.0.5", transport="TLS CN=" + "x" * 300).source
    assert len(long) == 128 and long.startswith("CT1@10.0.0.5 [TLS CN=xx") and long.endswith("]")


def test_subject_of_reads_like_rfc4514() -> None:
    cert = {"subject": ((("countryName", "NL"),), (("organizationName", "Hospital"),),
                        (("commonName", "ct1.example"),))}
    assert subject_of(cert) == "CN=ct1.example,O=Hospital,C=NL"
    assert subject_of({}) == ""


def test_our_scu_over_our_tls_listener(rt: Any, tmp_path: Path, ca: Authority, node: Leaf) -> None:
    """echo and send_study to a TLS peer: verified both ways, provenance carries our certificate."""
    from readingroom.archive.dimse import DimseServer, echo, send_study
    from readingroom.archive.ingest import ingest_path
    from readingroom.archive.peers import add_peer
    from readingroom.demo.synth import DEMO_SITES, StudySpec, write_study

    files = write_study(StudySpec("CR", 1, 2, DEMO_SITES[0], 1, 1, "TLSSELF", rows=16, columns=16), 5, tmp_path)
    for f in files:
        assert ingest_path(rt, f, actor="test").ok
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    settings = rt.settings
    settings.dicom_port, settings.dicom_tls_port = free_port(), free_port()
    settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca = node.cert, node.key, ca.cert
    with rt.db.session() as s:  # we call ourselves: our AE title must be a peer on loopback
        add_peer(s, "self", settings.aet, "127.0.0.1", settings.dicom_tls_port, tls=True)
    server = DimseServer(rt)
    server.start()
    try:
        assert server.tls_port == settings.dicom_tls_port
        me = PeerInfo(0, "self", settings.aet, "127.0.0.1", settings.dicom_tls_port, None, True, True, True, tls=True)
        assert echo(rt, me)
        report = send_study(rt, study_uid, me)
        assert (report.sent, report.failed) == (2, 0), report.errors
        with rt.db.read_session() as s:
            # Our own instances come back (as identical duplicates or, with the receiver's own file
            # meta, as conflicts): either way the record names the transport and our certificate.
            sources = set(s.scalars(select(AuditRecord.source).where(AuditRecord.resource_type == "instance")))
        assert f"{settings.aet}@127.0.0.1 [TLS CN=readingroom,O=good test]" in sources

        # The certificate names 127.0.0.1, not localhost: the peer's host is checked.
        by_name = PeerInfo(0, "self", settings.aet, "localhost", settings.dicom_tls_port, None, True, True, True,
                           tls=True)
        assert not echo(rt, by_name)
        mismatch = send_study(rt, study_uid, by_name)
        assert mismatch.failed == 2 and "certificate verify failed" in mismatch.errors[0]
        assert "localhost" in mismatch.errors[0]

        # A peer not marked tls talks plain DICOM to the TLS port: refused, the listener carries on.
        plain = PeerInfo(0, "self", settings.aet, "127.0.0.1", settings.dicom_tls_port, None, True, True, True)
        assert not echo(rt, plain)
        assert echo(rt, me)
    finally:
        server.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", settings.dicom_tls_port)) != 0
