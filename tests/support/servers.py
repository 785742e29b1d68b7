"""Start real ``readingroom serve`` processes for tests.

Each server gets its own data dir, free ports and (when
``READINGROOM_TEST_DATABASE_URL`` names PostgreSQL) its own fresh database,
so tests never see each other's data and the suite runs unchanged on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from readingroom.config import Settings, load_settings
from readingroom.runtime import Runtime

TEST_DB_ENV = "READINGROOM_TEST_DATABASE_URL"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str | None:
    """PostgreSQL admin URL for the suite, or None for SQLite."""
    url = os.environ.get(TEST_DB_ENV, "").strip()
    return url or None


def create_test_database() -> tuple[str | None, str | None]:
    """A new empty PostgreSQL database (url, name), or (None, None) on SQLite."""
    admin = test_database_url()
    if not admin:
        return None, None
    import psycopg

    name = f"rr_test_{uuid.uuid4().hex[:12]}"
    plain = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = plain.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_test_database(name: str | None) -> None:
    admin = test_database_url()
    if not admin or not name:
        return
    import psycopg

    plain = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ServerInfo:
    """A running test server and how to reach it."""

    data_dir: Path
    port: int
    dicom_port: int
    aet: str
    token: str
    admin_user: str
    admin_password: str
    env: dict[str, str]
    settings: Settings
    process: subprocess.Popen[bytes] | None = None
    db_name: str | None = None
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicomweb"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.auth_headers, timeout=60)

    def runtime(self) -> Runtime:
        """A Runtime on the server's database and blobs, for inspecting state."""
        return Runtime.open(self.settings, migrate=False)

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``readingroom ARGS --data-dir ...`` against this server's data."""
        return subprocess.run(
            [sys.executable, "-m", "readingroom", *args, "--data-dir", str(self.data_dir)],
            env=self.env, capture_output=True, text=True, check=check, timeout=timeout,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def start(self, timeout: float = 60) -> None:
        """(Re)start the server process and wait until HTTP and DICOM answer."""
        assert self.log_path is not None
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "readingroom", "serve", "--data-dir", str(self.data_dir)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                ok = httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
                if ok and _port_open(self.dicom_port):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()[-4000:]}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def make_server(base_dir: Path, *, start: bool = True, **overrides: Any) -> ServerInfo:
    """Prepare a data dir (admin user, token, test peers) and start a server on it.

    ``overrides`` become ``READINGROOM_*`` settings (e.g. ``stable_age_seconds=1``).
    """
    from readingroom.archive.peers import add_peer
    from readingroom.governance.users import create_token, create_user

    data_dir = base_dir / f"rr-{uuid.uuid4().hex[:8]}"
    db_url, db_name = create_test_database()
    port, dicom_port = free_port(), free_port()
    values: dict[str, Any] = {
        "port": port,
        "dicom_port": dicom_port,
        "hl7_port": free_port(),  # never the default 2575: servers of parallel tests would collide
        "stable_age_seconds": 2,
        "scheduler_interval_seconds": 0.5,
        "log_level": "WARNING",
        **overrides,
    }
    if db_url:
        values["database_url"] = db_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("READINGROOM_")}
    env["READINGROOM_DATA_DIR"] = str(data_dir)
    for key, value in values.items():
        env[f"READINGROOM_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else (
            value if isinstance(value, str) else __import__("json").dumps(value)
            if isinstance(value, list) else str(value)
        )
    settings = load_settings(data_dir, **values)
    rt = Runtime.open(settings)
    with rt.db.session() as s:
        admin = create_user(s, "admin", password="admin-pass", role="admin", full_name="Test Admin")
        _, token = create_token(s, admin, name="tests")
        for ae in ("TESTSCU", "STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "ECHOSCU"):
            add_peer(s, ae.lower(), ae, "127.0.0.1", 104, description="test client")
    rt.close()
    info = ServerInfo(
        data_dir=data_dir, port=settings.port, dicom_port=settings.dicom_port, aet=settings.aet, token=token,
        admin_user="admin", admin_password="admin-pass", env=env, settings=settings, db_name=db_name,
        log_path=data_dir / "server.log",
    )
    if start:
        info.start()
    return info
