"""The capacity benchmark's arithmetic and parsing: the sink's counter from a /metrics page,
the database against the ledger, CPU per message, the bare subscriber's output, the rates."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from f2pipe_devtools.bench import capacity
from f2pipe_devtools.bench.capacity import (
    FIRST_IN,
    MILESTONES,
    PipelineDrain,
    acl_entry,
    canary,
    counter,
    cpu_deltas,
    ledger_diff,
    ledger_summary,
    parse_drain_line,
    passed,
    payload_bytes,
    per_message_us,
    pipeline_rates,
    readings_written,
    stage_rate,
)
from f2pipe_devtools.bench.main import SUITES
from f2pipe_devtools.bench.report import Report

SINK_PAGE = """# HELP f2pipe_sink_rows_written_total Rows inserted, by table
# TYPE f2pipe_sink_rows_written_total counter
f2pipe_sink_rows_written_total{table="readings"} 84123.0
f2pipe_sink_rows_written_total{table="events"} 3001.0
# HELP f2pipe_sink_rows_duplicate_total Rows skipped
# TYPE f2pipe_sink_rows_duplicate_total counter
f2pipe_sink_rows_duplicate_total{table="readings"} 7.0
"""


def samples(page: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(page) for s in family.samples]


def test_the_sink_counter_is_its_readings_rows_not_its_events() -> None:
    assert readings_written(samples(SINK_PAGE)) == 84123.0


def test_a_sink_that_did_not_answer_has_no_count() -> None:
    assert readings_written([]) is None
    assert readings_written(samples("# nothing yet\n")) is None


def test_a_counter_sums_its_labels() -> None:
    assert counter(samples(SINK_PAGE), "f2pipe_sink_rows_written_total") == 87124.0
    assert counter(samples(SINK_PAGE), "f2pipe_bridge_received_total") is None


def test_the_ledger_diff_counts_missing_unexpected_and_duplicated() -> None:
    expected = {(1, 1, 1, 1.0), (2, 1, 1, 2.0), (3, 1, 1, 3.0)}
    stored = [(1, 1, 1, 1.0), (2, 1, 1, 2.0), (2, 1, 1, 2.0), (9, 9, 9, 9.0)]
    assert ledger_diff(expected, stored) == (1, 2)  # (3, ...) missing; (9, ...) and a repeat
    assert ledger_diff(expected, sorted(expected)) == (0, 0)


def test_cpu_deltas_take_the_start_up_off_a_restarted_process() -> None:
    before = {"mosquitto": 10.0, "postgres": 50.0}  # the pipeline was stopped
    after = {"mosquitto": 12.5, "postgres": 58.0, "bridge": 9.0, "certgen": 0.5}
    startup = {"bridge": 1.5, "postgres": 1.0, "mosquitto": 0.2}
    assert cpu_deltas(before, after, startup) == {
        "mosquitto": 2.5,
        "postgres": 8.0,
        "bridge": 7.5,
        "certgen": 0.5,  # started in between with nothing known about it
    }


def test_cpu_deltas_are_never_negative() -> None:
    assert cpu_deltas({}, {"bridge": 1.0}, {"bridge": 1.4}) == {"bridge": 0.0}


def test_cpu_per_message_in_microseconds() -> None:
    assert per_message_us(3.0, 300_000) == pytest.approx(10.0)
    assert math.isnan(per_message_us(1.0, 0))


def test_the_bare_subscribers_last_line_is_parsed() -> None:
    assert parse_drain_line("warming up\n30000 1.25 0.9\n") == (30000, 1.25, 0.9)
    with pytest.raises(ValueError, match="printed nothing"):
        parse_drain_line("\n")
    with pytest.raises(ValueError, match="unpack"):
        parse_drain_line("30000 1.25\n")


def test_payload_bytes_sum_mosquitto_subs_length_lines() -> None:
    assert payload_bytes(b"87\n120\n87\n") == 294
    assert payload_bytes(b"") == 0
    with pytest.raises(ValueError, match="invalid literal"):
        payload_bytes(b"87\n{not a length}\n")


def test_pipeline_rates_from_the_start_and_from_the_first_message() -> None:
    drained = PipelineDrain(started=100.0, done=124.0, written=84_000)
    drained.reached[FIRST_IN] = 104.0
    assert pipeline_rates(drained, 30_000) == (30_000 / 24.0, 30_000 / 20.0)
    never_seen = PipelineDrain(started=100.0, done=110.0, written=1)
    assert pipeline_rates(never_seen, 10) == (1.0, 1.0)


def test_an_incomplete_drain_has_no_rate() -> None:
    stalled = PipelineDrain(started=100.0, done=None, written=5)
    stalled.reached[FIRST_IN] = 101.0
    assert all(math.isnan(r) for r in pipeline_rates(stalled, 10))


BRIDGE_PAGE = """# TYPE f2pipe_bridge_received_total counter
f2pipe_bridge_received_total 30000.0
# TYPE f2pipe_bridge_acknowledged_total counter
f2pipe_bridge_acknowledged_total 29999.0
"""


def test_milestones_pass_on_the_first_message_or_the_whole_backlog() -> None:
    first, every = MILESTONES[0], MILESTONES[1]
    assert (first.service, first.whole, every.whole) == ("bridge", False, True)
    page = samples(BRIDGE_PAGE)
    assert passed(first, page, 30_000)
    assert not passed(every, page, 30_000)  # one still unacknowledged
    assert passed(every, page, 29_999)
    assert not passed(first, [], 30_000)  # not answering yet
    assert first.label == "bridge: first message"


def test_a_stage_rate_runs_from_its_first_message_to_its_last() -> None:
    drained = PipelineDrain(started=100.0, done=130.0, written=1)
    first, acked, processor_first, processor_every = MILESTONES
    drained.reached |= {first: 101.0, acked: 106.0, processor_first: 104.0}
    assert stage_rate(drained, "bridge", 30_000) == 6_000.0
    assert drained.since_start(processor_first) == 4.0
    assert math.isnan(stage_rate(drained, "processor", 30_000))  # never saw its last
    assert math.isnan(drained.since_start(processor_every))


def test_the_acl_entry_lets_one_user_read_the_topics() -> None:
    text = acl_entry("svc-bench-sub", ("stat/#", "tele/#"))
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["user svc-bench-sub", "topic read stat/#", "topic read tele/#"]
    assert text.startswith("\n")  # after whatever the file ended with
    assert text.endswith("\n")


def test_the_ledger_summary_is_its_last_line(tmp_path: Path) -> None:
    ledger = tmp_path / "backlog.jsonl"
    summary = {"type": "summary", "messages": 3, "load_rate": 1234.5}
    lines = [{"type": "header"}, *({"type": "publish", "n": i} for i in range(500)), summary]
    ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert ledger_summary(ledger) == summary


def test_a_ledger_cut_short_has_no_summary(tmp_path: Path) -> None:
    ledger = tmp_path / "backlog.jsonl"
    ledger.write_text('{"type": "header"}\n{"type": "publish", "n": 1}\n{"type": "pub')
    assert ledger_summary(ledger) == {}
    ledger.write_text("")
    assert ledger_summary(ledger) == {}


def test_the_canary_measures_decoding_the_fixed_payload() -> None:
    assert json.loads(capacity.CANARY_PAYLOAD)["data"].startswith("01 03")
    assert canary(loops=1000, repeats=3) > 0


def test_the_bare_subscriber_script_compiles() -> None:
    compile(capacity.TLS_SUBSCRIBER, "<bare subscriber>", "exec")


def test_the_suite_is_registered_and_takes_quick() -> None:
    assert SUITES["capacity"] == "f2pipe_devtools.bench.capacity"
    assert "quick" in inspect.signature(capacity.run).parameters


def test_with_two_instances_the_pipeline_is_every_instance_bridges_first() -> None:
    assert capacity.pipeline_names(1) == ["bridge", "processor", "sink"]
    assert capacity.pipeline_names(2) == [
        "bridge", "bridge-2", "processor", "processor-2", "sink", "sink-2",
    ]  # fmt: skip


def test_by_stage_sums_a_stage_s_instances_and_leaves_the_servers_out() -> None:
    cpu = {"bridge": 3.0, "bridge-2": 2.5, "processor": 1.0, "sink-2": 0.5, "mosquitto": 9.0}
    assert capacity.by_stage(cpu) == {"bridge": 5.5, "processor": 1.0, "sink": 0.5}


def test_instances_reach_the_suite_that_takes_them_and_no_other(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from f2pipe_devtools.bench import main

    with pytest.raises(ValueError, match="instances per stage"):  # before any stack starts
        capacity.run(Report("capacity"), repeats=1, min_seconds=0.1, instances=0)
    got: dict[str, object] = {}

    def fake_run(report: object, repeats: int, min_seconds: float, quick: bool = False,
                 instances: int = 1) -> None:  # fmt: skip
        got.update(quick=quick, instances=instances)

    monkeypatch.setattr(capacity, "run", fake_run)
    monkeypatch.setattr(Report, "table", lambda self: "")  # nothing measured
    assert main.run("capacity", repeats=1, out_dir=tmp_path, quick=True, instances=2) == 0
    assert got == {"quick": True, "instances": 2}
    main.run("capacity", repeats=1, out_dir=tmp_path)
    assert got["instances"] == 1  # the suite's own default
    with pytest.raises(SystemExit, match="no --instances"):
        main.run("codec", repeats=1, out_dir=tmp_path, instances=2)


def test_each_instance_s_share_of_its_stage_s_work() -> None:
    done = {"bridge": 600.0, "bridge-2": 400.0, "sink": 0.0, "sink-2": 0.0}
    shares = capacity.shares(done)
    assert (shares["bridge"], shares["bridge-2"]) == (0.6, 0.4)
    assert math.isnan(shares["sink"])  # nothing written: no share to speak of
    page = samples(SINK_PAGE + "f2pipe_bridge_received_total 42.0\n")
    assert capacity.work_done("sink", page) == 84123.0  # readings, not events
    assert capacity.work_done("bridge", page) == 42.0
    assert capacity.work_done("processor", page) == 0.0
