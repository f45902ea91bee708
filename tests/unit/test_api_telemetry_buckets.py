"""The console's series buckets: round steps, so bins start at round clock times."""

from __future__ import annotations

from datetime import timedelta

from f2pipe_api.telemetry import BUCKET_STEPS_S, MAX_MINUTES, MAX_POINTS, bucket


def test_every_window_gets_the_shortest_round_step_within_the_point_limit() -> None:
    for minutes in range(1, MAX_MINUTES + 1):
        step = bucket(minutes)
        assert minutes * 60 / step.total_seconds() <= MAX_POINTS, minutes
        shorter = [s for s in BUCKET_STEPS_S if s < step.total_seconds()]
        assert not shorter or minutes * 60 / shorter[-1] > MAX_POINTS, minutes
        # date_bin counts steps from midnight 2000-01-01: a step dividing the hour puts every
        # hour (and every multiple of the step within it) on a bin boundary, whatever the date.
        assert timedelta(hours=1) % step == timedelta(0), (minutes, step)


def test_the_console_s_windows() -> None:
    assert bucket(10) == timedelta(seconds=2)  # 10 min / 360 would be 1.666667 s
    assert bucket(60) == timedelta(seconds=10)
    assert bucket(MAX_MINUTES) == timedelta(minutes=5)
