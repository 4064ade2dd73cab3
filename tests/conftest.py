"""Fixtures: databases on SQLite and on a real PostgreSQL server, and the running platform.

Every test that takes ``database_url`` (or ``db``) runs twice: on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime

import pytest

from quota_service import db as database
from tests.postgres import PostgresServer

BACKENDS = os.environ.get("AIPOWER_TEST_BACKENDS", "sqlite,postgresql").split(",")
_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    """A fresh, empty database (per test) on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'quota.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"t{next(_names)}")


@pytest.fixture
def engine(database_url):
    engine = database.make_engine(database_url)
    database.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine):
    return database.make_session_factory(engine)


@pytest.fixture
def db(session_factory):
    """A unit of work committed at the end of the test (like one request)."""
    with database.transaction(session_factory) as session:
        yield session


def at(text: str) -> datetime:
    """A moment written in Asia/Taipei time, e.g. at("2026-10-30 23:59:59")."""
    from quota_service.timewindow import TAIPEI

    return datetime.fromisoformat(text).replace(tzinfo=TAIPEI).astimezone(UTC)
