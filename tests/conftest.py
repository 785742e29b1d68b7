"""Shared fixtures: real server processes, generated DICOM data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ServerInfo, drop_test_database, make_server


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerInfo]]:
    """Start servers with settings overrides; all are stopped at the end of the session."""
    started: list[ServerInfo] = []
    base = tmp_path_factory.mktemp("servers")

    def factory(**overrides: Any) -> ServerInfo:
        info = make_server(base, **overrides)
        started.append(info)
        return info

    yield factory
    for info in started:
        info.stop()
        drop_test_database(info.db_name)


@pytest.fixture(scope="session")
def server(server_factory: Callable[..., ServerInfo]) -> ServerInfo:
    """One shared server for tests that only add data and look at what they added."""
    return server_factory()


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small generated multi-modality dataset (deterministic)."""
    from readingroom.demo.synth import write_demo_dataset

    out = tmp_path_factory.mktemp("demo-data")
    return write_demo_dataset(out, n_studies=6, seed=7)


@pytest.fixture()
def rt(tmp_path: Path) -> Iterator[Any]:
    """An in-process Runtime on a fresh data dir and database (SQLite or PostgreSQL)."""
    from readingroom.config import load_settings
    from readingroom.runtime import Runtime
    from tests.support.servers import create_test_database

    db_url, db_name = create_test_database()
    settings = load_settings(tmp_path / "data", database_url=db_url, stable_age_seconds=1)
    runtime = Runtime.open(settings)
    yield runtime
    runtime.close()
    drop_test_database(db_name)
