"""Run a throw-away Orthanc (Debian's ``Orthanc`` binary) as a real DICOM peer for tests.

Orthanc is the reference peer of the interop tests and the benchmarks: a
well-known archive whose behaviour is not ours. Each instance gets its own
directory, free ports and a JSON configuration; it listens on 127.0.0.1 only
(``RemoteAccessAllowed`` false) without authentication, and is stopped when
the context manager exits.

    with orthanc(tmp_path, modalities={"readingroom": ("READINGROOM", "127.0.0.1", 11112)}) as peer:
        peer.get("/studies")
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port
from tests.support.tools import require_tool


@dataclass
class OrthancInfo:
    """A running Orthanc and how to reach it."""

    aet: str
    dicom_port: int
    http_port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, **params: Any) -> Any:
        """GET a REST resource and return its JSON."""
        response = httpx.get(f"{self.base_url}{path}", params=params or None, timeout=60)
        response.raise_for_status()
        return response.json()

    def get_bytes(self, path: str) -> bytes:
        response = httpx.get(f"{self.base_url}{path}", timeout=60)
        response.raise_for_status()
        return response.content

    def post(self, path: str, body: Any) -> Any:
        response = httpx.post(f"{self.base_url}{path}", json=body, timeout=120)
        response.raise_for_status()
        return response.json()

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc's id of a study, by Study Instance UID."""
        response = httpx.post(f"{self.base_url}/tools/lookup", content=study_uid, timeout=60)
        response.raise_for_status()
        for item in response.json():
            if item.get("Type") == "Study":
                return str(item["ID"])
        return None

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The instances Orthanc holds for a study (empty if it has none)."""
        study_id = self.find_study(study_uid)
        if study_id is None:
            return []
        return list(self.get(f"/studies/{study_id}/instances"))

    def log(self) -> str:
        path = self.directory / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def orthanc(
    base_dir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    extra: dict[str, Any] | None = None,
    timeout: float = 60,
) -> Iterator[OrthancInfo]:
    """Start Orthanc with its own storage under ``base_dir``; stop it on exit.

    ``modalities`` maps a symbolic name to (AE title, host, port), Orthanc's
    ``DicomModalities``; ``extra`` overrides any configuration option.
    """
    binary = require_tool("Orthanc")
    directory = base_dir / f"orthanc-{free_port()}"
    (directory / "storage").mkdir(parents=True)
    dicom_port, http_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": f"test-{aet}",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {name: list(value) for name, value in (modalities or {}).items()},
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "StableAge": 60,
    }
    config.update(extra or {})
    config_path = directory / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = open(directory / "orthanc.log", "ab")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=directory)
    info = OrthancInfo(aet=aet, dicom_port=dicom_port, http_port=http_port, directory=directory, process=process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{info.log()[-3000:]}")
            try:
                if httpx.get(f"{info.base_url}/system", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start in {timeout}s:\n{info.log()[-3000:]}")
            time.sleep(0.2)
        yield info
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()
