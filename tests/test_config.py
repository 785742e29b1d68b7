"""Settings precedence: flags > environment > readingroom.toml > defaults."""

from __future__ import annotations

from pathlib import Path

from readingroom.config import load_settings


def test_defaults(tmp_path: Path, monkeypatch) -> None:
    for key in ("READINGROOM_PORT", "READINGROOM_AET", "READINGROOM_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings(tmp_path)
    assert (s.port, s.dicom_port, s.aet, s.hl7_port) == (8080, 11112, "READINGROOM", 2575)
    assert s.effective_database_url.startswith("sqlite:///") and str(tmp_path) in s.effective_database_url
    assert s.effective_storage_url == f"file://{(tmp_path / 'blobs').resolve()}"


def test_precedence(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "readingroom.toml").write_text('aet = "FROM_TOML"\nport = 9000\ndicom_port = 10400\n'
                                               'cors_origins = ["http://viewer"]\n')
    monkeypatch.setenv("READINGROOM_PORT", "9100")
    s = load_settings(tmp_path, dicom_port=10500)
    assert s.aet == "FROM_TOML"  # toml over default
    assert s.port == 9100  # env over toml
    assert s.dicom_port == 10500  # flag over toml
    assert s.cors_origins == ["http://viewer"]
    # An unset flag (None) never hides the environment.
    assert load_settings(tmp_path, port=None).port == 9100


def test_data_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("READINGROOM_DATA_DIR", str(tmp_path / "x"))
    assert load_settings().data_dir == tmp_path / "x"
