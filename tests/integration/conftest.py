"""Fixtures the database tests share: a migrated database and a connection to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from f2pipe.migrate import apply_migrations


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
