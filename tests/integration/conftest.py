"""Fixtures the database tests share: a migrated database, a connection to it, and the api
on it (apikit.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from f2pipe.migrate import apply_migrations
from tests.integration.apikit import Api, running_api


@pytest.fixture
def migrated(pg_conninfo: str) -> str:
    """A fresh database with every migration applied."""
    apply_migrations(pg_conninfo)
    return pg_conninfo


@pytest.fixture
def conn(migrated: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to `migrated`."""
    with psycopg.connect(migrated, autocommit=True) as connection:
        yield connection


@pytest.fixture
def api(migrated: str) -> Iterator[Api]:
    """The api app on a fresh migrated database, with a token per role (apikit.py)."""
    yield from running_api(migrated)
