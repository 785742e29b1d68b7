"""The CLI end to end, as subprocesses on a fresh data dir."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.dicom import new_study, sample
from tests.support.servers import create_test_database, drop_test_database


@pytest.fixture()
def cli(tmp_path: Path):
    db_url, db_name = create_test_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("READINGROOM_")}
    env["READINGROOM_DATA_DIR"] = str(tmp_path / "data")
    if db_url:
        env["READINGROOM_DATABASE_URL"] = db_url

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "readingroom", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        if ok:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    yield run
    drop_test_database(db_name)


def test_users_tokens_peers(cli) -> None:
    cli("user", "add", "alice", "--role", "radiologist", "--password", "s3cret")
    assert "already exists" in cli("user", "add", "alice", "--password", "x", ok=False).stderr
    assert "unknown role" in cli("user", "add", "bob", "--role", "wizard", "--password", "x", ok=False).stderr
    token = cli("token", "create", "alice").stdout.strip()
    assert token.startswith("rr_")
    assert cli("token", "create", "nobody", ok=False).returncode != 0
    cli("peer", "add", "pacs", "PACS_AE", "127.0.0.1", "4242", "--description", "main PACS")
    listing = cli("peer", "list").stdout
    assert "PACS_AE" in listing and "main PACS" in listing
    assert "invalid AE title" in cli("peer", "add", "bad", "THIS_AE_TITLE_IS_TOO_LONG", "h", "104",
                                     ok=False).stderr
    cli("peer", "remove", "pacs")
    assert "PACS_AE" not in cli("peer", "list").stdout
    assert cli("peer", "remove", "pacs", ok=False).returncode != 0


def test_import_folders_and_zips_then_check(cli, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    files = new_study("CT_small.dcm", folder / "study", 4)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.dcm").write_bytes(sample("MR_small.dcm").read_bytes()[:3000])
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        for path in new_study("MR_small.dcm", tmp_path / "z", 3):
            zf.write(path, f"sub/{path.name}")
        zf.writestr("README", "hello")
    out = cli("import", str(folder), str(tmp_path / "more.zip")).stdout
    assert "stored 7" in out and "skipped 3" in out
    assert "notes.txt" in out and "broken.dcm" in out and "README" in out
    again = cli("import", str(files[0])).stdout
    assert "already present 1" in again
    check = cli("check")
    assert "clean" in check.stdout and "instances 7" in check.stdout


def test_check_reports_damage(cli, tmp_path: Path) -> None:
    cli("import", str(sample("CT_small.dcm")))
    blobs = list((tmp_path / "data" / "blobs" / "objects").rglob("*.dcm"))
    assert len(blobs) == 1
    blobs[0].write_bytes(blobs[0].read_bytes()[:-10] + b"0123456789")
    proc = cli("check", ok=False)
    assert proc.returncode == 1 and "hash mismatch" in proc.stdout


def test_db_upgrade_is_idempotent(cli) -> None:
    cli("db", "upgrade")
    cli("db", "upgrade")


def test_demo_seeds_without_serving(cli, tmp_path: Path) -> None:
    out = cli("demo", "--no-serve", "--studies", "5")
    text = out.stdout + out.stderr
    assert "Bearer token" in text and "storescu" in text
    assert "clean" in cli("check", "--quick").stdout
    # Running it again reuses the data (no second import).
    again = cli("demo", "--no-serve", "--studies", "5")
    assert "Imported" not in again.stdout + again.stderr
