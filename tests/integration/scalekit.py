"""What the scale-out tests share: /latest checks against what was sent, and a local stack
(`f2pipe dev`'s DevStack, in this process) with several instances of each stage.

`wrong_answers` and `wait_all_right` serve test_processor_latest_workers.py (workers started
by the test) and test_scale_out.py (the stack's workers) alike.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from f2pipe_devtools.bench.capacity import ledger_diff
from f2pipe_devtools.bench.e2e import stored_since
from f2pipe_devtools.dev import http, status
from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console
from f2pipe_devtools.dev.stack import DevOptions, DevStack
from f2pipe_devtools.servers import free_port
from f2pipe_devtools.testkit.ledger import datapoint_ids, expected_rows, iter_ledger
from f2pipe_shared.timestamps import parse_device_timestamp, to_epoch_us
from tests.integration.devkit import dev_stack_top

Newest = dict[int, dict[int, tuple[int, float]]]  # device -> datapoint -> (timestamp_us, value)


class AnswersLatest(Protocol):
    """A processor worker's web server, as the /latest checks ask it."""

    @property
    def base(self) -> str: ...

    def get(self, path: str) -> tuple[int, Any]: ...

    def tail(self, lines: int = 40) -> str: ...


def wrong_answers(worker: AnswersLatest, expected: Newest) -> dict[int, object]:
    """Device -> what `worker` answered, for every device it did not answer right."""
    wrong: dict[int, object] = {}
    for device, points in expected.items():
        status_code, body = worker.get(f"/latest/{device}")
        if status_code != 200:
            wrong[device] = (status_code, body)
            continue
        served = {p["datapoint_id"]: (p["timestamp_us"], p["value"]) for p in body["datapoints"]}
        if served != points:
            wrong[device] = served
    return wrong


def wait_all_right(workers: Sequence[AnswersLatest], expected: Newest, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        wrong = {w.base: wrong_answers(w, expected) for w in workers}
        if not any(wrong.values()) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    summary = {base: f"{len(bad)} of {len(expected)} wrong, e.g. {list(bad.items())[:2]}"
               for base, bad in wrong.items() if bad}  # fmt: skip
    logs = "\n".join(w.tail(15) for w in workers)
    assert not summary, f"{summary}\n{logs}"


def newest_in_ledger(lines: Iterable[dict[str, Any]]) -> Newest:
    """Each device's newest value of each datapoint, as a simulator's ledger says it sent."""
    newest: Newest = {}
    ids: dict[tuple[int, str], int] = {}
    for line in lines:
        if line["type"] == "header":
            ids = datapoint_ids(line)
        elif line["type"] == "publish":
            ts = to_epoch_us(parse_device_timestamp(line["timestamp"]))
            points = newest.setdefault(line["device_id"], {})
            for key, value in line["readings"].items():
                dp = ids[(line["template_id"], key)]
                if dp not in points or points[dp][0] <= ts:
                    points[dp] = (ts, value)
    return {device: points for device, points in newest.items() if points}


# --- a stack with several instances of each stage -------------------------------------------


def trouble(log: str, limit: int = 4000) -> str:
    """The first error lines of a service's log and the traceback lines after each, up to
    `limit` characters: a crash's cause, which the log's last lines (its shutdown) hide."""
    picked: list[str] = []
    size = 0
    following = False
    for line in log.splitlines():
        starts_entry = line[:4].isdigit()  # our log lines begin with the date
        if starts_entry:
            following = " ERROR " in line or " CRITICAL " in line
        elif "Traceback (most recent call last)" in line or " crashed: " in line:
            following = True  # printed to stderr, not logged (mode's ServiceThread.on_crash)
        if following:
            picked.append(line)
            size += len(line) + 1
            if size > limit:
                break
    return "\n".join(picked)[:limit]


def logs_report(logs: Mapping[str, str], tail: int = 1500) -> str:
    """Each service's errors (whole tracebacks), then its last lines: a test's failure
    message, which CI shows only in part, with the causes first."""
    errors, tails = [], []
    for name, log in logs.items():
        if found := trouble(log):
            errors.append(f"--- {name}: errors\n{found}")
        tails.append(f"--- {name}\n{log[-tail:]}")
    return "\n".join(errors + tails)


def stack_logs(stack: DevStack, tail: int = 1500) -> str:
    """``logs_report`` of every service of a stack this process runs."""
    logs = {}
    for name, service in stack.services.items():
        try:
            logs[name] = service.log_path.read_text(errors="replace")
        except OSError:
            logs[name] = service.tail()
    return logs_report(logs, tail)


@contextmanager
def scaled_stack(prefix: str, controllers: int, instances: int) -> Iterator[DevStack]:
    """A fresh local stack (no simulator of its own) with ``instances`` bridges, processors
    and sinks (dev/instances.py); stopped and removed afterwards."""
    top = dev_stack_top(prefix)
    console = Console(open(top / "stack.log", "w"))  # noqa: SIM115 - closed with the stack
    options = DevOptions(top / "dev", Ports.free(instances), controllers=controllers,
                         simulator=False, instances=instances)  # fmt: skip
    stack = DevStack(options, console)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        console.out.close()
        shutil.rmtree(top, ignore_errors=True)


@dataclass(frozen=True)
class Instance:
    """One running instance of the stack (`processor-2`): its web server and its log."""

    stack: DevStack
    name: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.stack.options.ports.of(self.name)}"

    def get(self, path: str) -> tuple[int, Any]:
        answer = http.get(self.base + path, timeout=5)
        if answer is None:
            return 0, None
        try:
            return answer[0], json.loads(answer[1])
        except ValueError:
            return answer

    def metrics(self) -> dict[str, float]:
        """Each sample's value by name, labels summed away; {} when it does not answer."""
        return status.scrape(self.stack.metrics_url(self.name))

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """Its running process."""
        service = self.stack.services[self.name]
        assert service.proc is not None
        assert service.running, f"{self.name} is not running"
        return service.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        proc = self.proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.stack.services[self.name].tail().splitlines()[-lines:])


def load(
    stack: DevStack, macs: list[str], ledger: Path, count: int, rate: int
) -> subprocess.Popen[bytes]:
    """The simulator's load mode on the stack: ``count`` messages of ``macs`` at ``rate``/s,
    each the broker acknowledged written to ``ledger``; it exits once all are."""
    env = {**stack.env(), **stack.database_env("simulator"), "METRICS_PORT": str(free_port()),
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    argv = [sys.executable, "-m", "f2pipe", "simulator", "--load", "--count", str(count),
            "--rate", str(rate), "--seed", "7", "--ledger", str(ledger)]  # fmt: skip
    for mac in macs:
        argv += ["--mac", mac]
    log = (ledger.parent / f"{ledger.stem}.log").open("ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def exactly_the_ledger(stack: DevStack, ledger: Path, since_us: int, within: float) -> None:
    """Wait until the database holds every reading of ``ledger`` (or ``within`` passed),
    then 3 s more for a late duplicate: 0 missing, 0 unexpected or duplicated, since
    ``since_us``."""
    expected = expected_rows(iter_ledger(ledger))
    assert expected.published > 0
    deadline = time.monotonic() + within
    while not expected.readings <= set(stored_since(stack, since_us)):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(3)
    missing, extra = ledger_diff(expected.readings, stored_since(stack, since_us))
    assert (missing, extra) == (0, 0), (
        f"{missing} missing, {extra} unexpected or duplicated of {len(expected.readings)} "
        f"readings ({expected.published} messages)"
    )
