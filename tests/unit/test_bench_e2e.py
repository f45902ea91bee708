"""The end-to-end benchmark's arithmetic: latency quantiles from histogram scrapes, and the
fixed-rate phase saying when it missed its target."""

from __future__ import annotations

import math

import pytest

from f2pipe_devtools.bench.e2e import (
    NOT_NEAR,
    missed_target,
    missing_by_fault,
    quantile,
    recovery_note,
)
from f2pipe_devtools.bench.report import Report

INF = math.inf


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    before = {0.1: 10.0, 0.5: 10.0, 1.0: 10.0, INF: 10.0}
    # 100 new observations: 50 under 0.1 s, 40 in (0.1, 0.5], 10 in (0.5, 1.0].
    after = {0.1: 60.0, 0.5: 100.0, 1.0: 110.0, INF: 110.0}
    assert quantile(before, after, 0.5) == 0.1
    assert math.isclose(quantile(before, after, 0.7) or 0, 0.1 + 0.4 * (20 / 40))
    assert math.isclose(quantile(before, after, 0.99) or 0, 0.5 + 0.5 * (9 / 10))


def test_quantile_without_new_observations_is_unknown() -> None:
    same = {0.1: 5.0, INF: 5.0}
    assert quantile(same, same, 0.99) is None
    assert quantile({}, {}, 0.5) is None


def test_a_restarted_histogram_counts_from_zero() -> None:
    before = {0.1: 500.0, 1.0: 900.0, INF: 900.0}
    after = {0.1: 10.0, 1.0: 20.0, INF: 20.0}  # the sink restarted: counts fell
    assert quantile(before, after, 0.25) == 0.1 * (5 / 10)


def test_observations_beyond_the_last_bound_report_that_bound() -> None:
    assert quantile({1.0: 0.0, INF: 0.0}, {1.0: 0.0, INF: 4.0}, 0.5) == 1.0


def test_a_fixed_rate_phase_that_missed_its_target_says_so_loudly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = Report("e2e")
    assert missed_target(report, 2584.0, 5000.0)
    (share,) = report.measurements
    assert (share.name, share.median) == ("fixed rate: delivered / target", 2584.0 / 5000.0)
    assert share.note.startswith("MISSED: 2,584 of 5,000 msg/s arrived")
    assert "WARNING: the fixed rate phase missed its target" in capsys.readouterr().err
    assert "MISSED" in report.table()


def test_the_half_capacity_phase_is_named_in_its_share_and_its_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = Report("e2e")
    assert missed_target(report, 1000.0, 1700.0, "half capacity")
    assert report.measurements[0].name == "half capacity: delivered / target"
    assert "WARNING: the half capacity phase missed its target" in capsys.readouterr().err


def test_a_fixed_rate_phase_that_met_its_target_stays_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = Report("e2e")
    assert not missed_target(report, 4990.0, 5000.0)
    assert report.measurements[0].note == "target 5,000 msg/s"
    assert capsys.readouterr().err == ""


def test_a_recovery_measured_on_a_stack_below_its_rate_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert recovery_note("bridge kill -9", 8911.0, 8500.0) == "sink rows/s back to 90 % of 8,911"
    assert capsys.readouterr().err == ""
    note = recovery_note("redis kill -9", 8911.0, 5500.0)
    assert note == "MISSED: only 5,500 rows/s before the fault; sink rows/s back to 90 % of 8,911"
    assert "WARNING: recovery from redis kill -9: MISSED" in capsys.readouterr().err


def test_each_missing_reading_is_put_down_to_the_nearest_fault_within_reach() -> None:
    struck = [("bridge kill -9", 100_000_000), ("mosquitto kill -9", 125_000_000)]
    missing = [
        (123_500_000, 1, 1, 1.0),  # 1.5 s before the broker died
        (125_200_000, 1, 2, 1.0),  # just after it
        (113_000_000, 2, 1, 1.0),  # nearer the broker (12 s) than the bridge (13 s)
        (99_000_000, 3, 1, 1.0),  # 1 s before the bridge kill
        (300_000_000, 4, 1, 1.0),  # long after either: no fault explains it
    ]
    near = missing_by_fault(missing, struck)
    assert near == {
        "mosquitto kill -9": [-1.5, 0.2, -12.0],
        "bridge kill -9": [-1.0],
        NOT_NEAR: [175.0],
    }
    assert missing_by_fault([], struck) == {}
    assert missing_by_fault(missing[:1], []) == {NOT_NEAR: [0.0]}
