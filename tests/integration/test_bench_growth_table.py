"""bench growth's view of the readings table: which chunk the sink's writes after END land
in, and how many rows it already holds, follow the chunk interval the table was made with
(`f2pipe bench growth --chunk-interval`)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from f2pipe.migrate import apply_migrations
from f2pipe_devtools.bench.growth import END, table_shape, written_chunk


def _insert(conninfo: str, *ages: timedelta) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry.readings VALUES (%s, 1, 1, 20.5)", [(END - a,) for a in ages]
        )


@pytest.mark.engine("timescaledb")
@pytest.mark.parametrize(
    ("interval", "start_hour", "end_hour", "in_chunk"),
    [("6 hours", 18, 24, 2), ("1 day", 0, 24, 3), ("30 minutes", 20, 20, 0)],
)
def test_the_written_chunk_follows_the_chunk_interval(
    pg_conninfo: str, interval: str, start_hour: int, end_hour: int, in_chunk: int
) -> None:
    apply_migrations(pg_conninfo, settings={"chunk_interval": interval})
    # END is 20:00: 30 s, 90 min and 7 h before it.
    _insert(pg_conninfo, timedelta(seconds=30), timedelta(minutes=90), timedelta(hours=7))
    day = END.replace(hour=0)
    if in_chunk == 0:  # END starts a chunk: none holds it before the sink writes
        assert written_chunk(pg_conninfo, END) is None
    else:
        assert written_chunk(pg_conninfo, END) == (
            day + timedelta(hours=start_hour),
            day + timedelta(hours=end_hour),
        )
    shape = table_shape(pg_conninfo, timescaledb=True)
    assert shape["rows"] == 3
    assert shape["rows in the written chunk"] == in_chunk
