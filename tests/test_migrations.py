"""Migrations: the scripts build exactly the schema the models describe, and step down and up again.

A model change without its migration (or a hand-edited migration that drifts
from the models) would only show on an upgraded production database; here it
fails at once, on SQLite and (with READINGROOM_TEST_DATABASE_URL) PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine

from readingroom.db import Base, import_all_models
from readingroom.migrations.runner import alembic_config, upgrade
from tests.support.servers import create_test_database, drop_test_database


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    url, name = create_test_database()
    if url:
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    eng = create_engine(url or f"sqlite:///{tmp_path / 'migrations.db'}")
    yield eng
    eng.dispose()
    drop_test_database(name)


def _drift(engine: Engine) -> list[object]:
    import_all_models()
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))


def test_head_matches_the_models(engine: Engine) -> None:
    upgrade(engine)
    assert _drift(engine) == []


def test_every_step_goes_down_and_up_again(engine: Engine) -> None:
    upgrade(engine)
    cfg = alembic_config(engine)
    command.downgrade(cfg, "0001")
    upgrade(engine)
    assert _drift(engine) == []
