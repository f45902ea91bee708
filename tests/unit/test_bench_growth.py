"""The growth benchmark's pure logic: the fleet's topics and traffic, the hit ratios, the
percentiles, the fill's plan, the sink's batches, and Grafana's SQL as the bench runs it."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from f2pipe_devtools.bench import growth
from f2pipe_devtools.bench.growth import (
    DASHBOARDS,
    TimeRange,
    expand,
    fill_plan,
    fleet_topics,
    grafana_interval,
    interval_seconds,
    layer_shares,
    panel_queries,
    percentile,
    reads_readings,
    series_workload,
    sql_list,
    traffic,
    variable_queries,
    window_batches,
)
from f2pipe_devtools.bench.main import SUITES
from f2pipe_shared.topics import parse_topic

SIX_HOURS = TimeRange(datetime(2026, 12, 5, 16, tzinfo=UTC), datetime(2026, 12, 5, 22, tzinfo=UTC))


def test_the_suite_is_registered() -> None:
    assert SUITES["growth"] == "f2pipe_devtools.bench.growth"


def test_chunk_interval_reaches_growth_and_no_other_suite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from f2pipe_devtools.bench import main
    from f2pipe_devtools.bench.report import Report

    got: dict[str, object] = {}

    def fake_run(
        report: object, repeats: int, min_seconds: float, quick: bool = False,
        out_dir: Path | None = None, *, chunk_interval: str | None = None,
    ) -> None:  # fmt: skip
        got.update(chunk_interval=chunk_interval)

    monkeypatch.setattr(growth, "run", fake_run)
    monkeypatch.setattr(Report, "table", lambda self: "")  # nothing measured
    assert main.run("growth", repeats=1, out_dir=tmp_path, chunk_interval="6 hours") == 0
    assert got == {"chunk_interval": "6 hours"}
    main.run("growth", repeats=1, out_dir=tmp_path)
    assert got == {"chunk_interval": None}
    with pytest.raises(SystemExit, match="no --chunk-interval"):
        main.run("codec", repeats=1, out_dir=tmp_path, chunk_interval="6 hours")


def test_fleet_topics_are_valid_and_sensors_send_ten_times_as_often() -> None:
    topics, rates = fleet_topics([growth.mac_of(0), growth.mac_of(1)])
    assert len(topics) == len(set(topics)) == 24  # seed-demo's 12 devices per controller
    assert {parse_topic(t).mac for t in topics[:12]} == {growth.mac_of(0)}
    sensors = [r for t, r in zip(topics, rates, strict=True) if "/sensor-" in t]
    others = [r for t, r in zip(topics, rates, strict=True) if "/sensor-" not in t]
    assert len(sensors) == 10
    assert set(sensors) == {1 / 30}
    assert set(others) == {1 / 300}
    assert topics[0].startswith("stat/f2-02f300000000/access-control-mode/J1/")
    assert any(t.startswith("tele/") and t.endswith("/J3/sensor-1") for t in topics)


def test_window_batches_is_the_fleets_traffic_with_a_floor() -> None:
    assert window_batches([1.0] * 10_000, 60.0) == 1_200  # 600,000 messages / 500
    assert window_batches([0.01], 60.0) == growth.MIN_WINDOW_BATCHES


def test_traffic_draws_topics_by_rate() -> None:
    batches = traffic(["a", "b"], [9.0, 1.0], 200, random.Random(1))
    assert len(batches) == 200
    assert all(len(b) == growth.BATCH for b in batches)
    share = sum(b.count("a") for b in batches) / (200 * growth.BATCH)
    assert 0.88 < share < 0.92


def test_every_topic_once_covers_the_fleet() -> None:
    topics = [f"t{i}" for i in range(1_234)]
    batches = growth.every_topic_once(topics, random.Random(2))
    assert [len(b) for b in batches] == [500, 500, 234]
    assert sorted(t for b in batches for t in b) == sorted(topics)


def test_layer_shares_sum_the_resolvers_stats() -> None:
    shares = layer_shares(
        [
            {"memory_hits": 400, "memory_misses": 100, "redis_hits": 90, "postgres": 10},
            {"memory_hits": 500, "memory_misses": 0},
            {"memory_hits": 0, "memory_misses": 0},
        ]
    )
    assert (shares.lookups, shares.memory, shares.redis, shares.postgres) == (1000, 900, 90, 10)
    assert shares.memory_hit_ratio == pytest.approx(0.9)
    assert shares.redis_share == pytest.approx(0.09)
    assert shares.postgres_share == pytest.approx(0.01)


def test_layer_shares_of_nothing_are_zero() -> None:
    shares = layer_shares([])
    assert shares.memory_hit_ratio == shares.redis_share == shares.postgres_share == 0.0


def test_percentile_interpolates_as_numpy() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([5.0, 1.0], 0) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_fill_plan_ends_one_period_before_the_end() -> None:
    ticks, start = fill_plan(50_000_000, 15_000, 30_000_000, 10**15)
    assert ticks == 3_334  # whole ticks: at least the rows asked for
    assert start == 10**15 - 3_334 * 30_000_000


def test_fill_plan_refuses_an_empty_registry() -> None:
    with pytest.raises(ValueError, match="no series"):
        fill_plan(1_000, 0, 30_000_000, 0)


def test_series_workload_is_batches_of_records_in_tick_order() -> None:
    series = [(7, 1), (7, 2), (8, 1)]
    batches = series_workload(series, 10_000, 1_000)
    assert [len(b.readings) for b in batches] == [5_000, 5_000]
    assert all(len(b.records) == 4 for b in batches)
    first = batches[0].readings
    assert first[:4] == [
        (1_000, 7, 1, 20.0),
        (1_000, 7, 2, 20.1),
        (1_000, 8, 1, 20.2),
        (1_000 + growth.READING_PERIOD_US, 7, 1, 20.3),
    ]
    assert sum(r.n_readings for b in batches for r in b.records) == 10_000  # none refused


@pytest.mark.parametrize(
    ("seconds", "interval"),
    [(6 * 3600, "20s"), (24 * 3600, "1m"), (3600, "5s"), (7 * 86400, "10m"), (10, "10ms")],
)
def test_grafana_interval_rounds_as_grafana(seconds: float, interval: str) -> None:
    assert grafana_interval(seconds) == interval


def test_interval_seconds() -> None:
    assert interval_seconds("20s") == 20
    assert interval_seconds("1m") == 60
    assert interval_seconds("500ms") == 0.5
    assert interval_seconds("1d") == 86_400
    with pytest.raises(ValueError):
        interval_seconds("soon")


def test_sql_list_quotes_as_grafana() -> None:
    assert sql_list([12, "a'b"]) == "'12','a''b'"


def test_expand_time_macros_and_variables() -> None:
    sql = (
        'SELECT $__timeGroupAlias("timestamp", $__interval), avg(value) FROM t '
        'WHERE $__timeFilter("timestamp") AND device_id IN ($device) AND k IN (${datapoint}) '
        "AND d IN ($devices) AND $__timeFrom() < $__timeTo() GROUP BY $__timeGroup(x, 5m)"
    )
    out = expand(sql, SIX_HOURS, {"device": [1, 2], "devices": [3], "datapoint": ["co2"]})
    assert out == (
        'SELECT time_bucket(\'20s\',"timestamp") AS "time", avg(value) FROM t '
        "WHERE \"timestamp\" BETWEEN '2026-12-05T16:00:00Z' AND '2026-12-05T22:00:00Z' "
        "AND device_id IN ('1','2') AND k IN ('co2') AND d IN ('3') "
        "AND '2026-12-05T16:00:00Z' < '2026-12-05T22:00:00Z' GROUP BY time_bucket('300s',x)"
    )


def test_expand_refuses_what_it_cannot_fill() -> None:
    with pytest.raises(ValueError, match=r"\$kind"):
        expand("SELECT 1 WHERE kind IN ($kind)", SIX_HOURS, {})


def test_the_dashboards_sql_panels_all_expand() -> None:
    """Every SQL panel of the shipped dashboards: found, and expanded to plain SQL."""
    variables: dict[str, list[object]] = {
        "controller": ["02f300000000"], "device": [1], "datapoint": ["co2"], "kind": ["scan"]
    }  # fmt: skip
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for query in panel_queries(dashboard):
            found.append(query)
            assert "$" not in expand(query.sql, SIX_HOURS, variables)
        for sql in variable_queries(dashboard).values():
            assert "$" not in expand(sql, SIX_HOURS, variables)
    readings = [q for q in found if reads_readings(q.sql)]
    assert len(readings) >= 5
    assert len(found) > len(readings)
    assert {q.panel for q in readings} >= {"Readings", "Hourly min / avg / max"}


def test_panel_queries_walk_rows_and_skip_other_datasources() -> None:
    sql_source = {"type": growth.SQL_DATASOURCE, "uid": "x"}
    dashboard = {
        "title": "d",
        "panels": [
            {"title": "row", "type": "row", "panels": [
                {"title": "inner", "datasource": sql_source,
                 "targets": [{"refId": "A", "rawSql": "SELECT 1"}]},
            ]},
            {"title": "prom", "datasource": {"type": "prometheus"},
             "targets": [{"refId": "A", "expr": "up"}]},
            {"title": "own", "targets": [{"refId": "B", "datasource": sql_source,
                                          "rawSql": "SELECT 2"}]},
        ],
    }  # fmt: skip
    assert panel_queries(dashboard) == [
        growth.PanelQuery("d", "inner", "A", "SELECT 1"),
        growth.PanelQuery("d", "own", "B", "SELECT 2"),
    ]


def test_variable_queries_of_the_readings_dashboard() -> None:
    dashboard = json.loads((DASHBOARDS / "f2pipe-readings.json").read_text())
    assert list(variable_queries(dashboard)) == ["controller", "device", "datapoint"]


def test_reads_readings() -> None:
    assert reads_readings("SELECT 1 FROM telemetry.readings_hourly_labeled")
    assert not reads_readings("SELECT 1 FROM telemetry.events_labeled")


def test_sink_windows_never_share_a_key() -> None:
    starts = growth.sink_windows(0, 3, 150_000, 15_000, 30)
    assert starts == [0, 330, 660]  # 10 ticks of 30 each, and one tick between runs
    ticks = 150_000 // 15_000
    assert all(b - a > (ticks - 1) * 30 for a, b in itertools.pairwise(starts))


def test_tunable_postgres_replaces_only_shared_buffers(tmp_path: Path) -> None:
    server = growth.TunablePostgres(tmp_path)
    server.shared_buffers = "4096MB"
    command = server.command()
    assert "shared_buffers=4096MB" in command
    assert not any(a.startswith("shared_buffers=128MB") for a in command)
    assert growth.tuned_shared_buffers().endswith("MB")
