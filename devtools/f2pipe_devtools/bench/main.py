"""`f2pipe bench`: each suite is a module with `run(report, repeats, min_seconds)`.

A suite that also takes `quick` and `out_dir` gets them (e2e: shorter phases, its chart), and
one that takes `instances` gets `--instances` (capacity: N bridges, processors and sinks),
one that takes `chunk_interval` gets `--chunk-interval` (growth: the readings table's chunks).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path

from f2pipe_devtools.bench.report import Report

# Imported only when asked for: a suite may start servers and need a service's packages.
SUITES = {
    "codec": "f2pipe_devtools.bench.codec",
    "bridge": "f2pipe_devtools.bench.bridge",
    "processor": "f2pipe_devtools.bench.processor",
    "sink": "f2pipe_devtools.bench.sink",
    "e2e": "f2pipe_devtools.bench.e2e",
    "capacity": "f2pipe_devtools.bench.capacity",
    "import": "f2pipe_devtools.bench.importer",
    "stream": "f2pipe_devtools.bench.stream",
    "growth": "f2pipe_devtools.bench.growth",
}


def run(
    suite: str,
    repeats: int,
    out_dir: Path,
    quick: bool = False,
    instances: int | None = None,
    *,
    chunk_interval: str | None = None,
) -> int:
    report = Report(suite)
    module = importlib.import_module(SUITES[suite])
    params = inspect.signature(module.run).parameters
    for name, value in (("instances", instances), ("chunk_interval", chunk_interval)):
        if value is not None and name not in params:  # an option the suite does not take
            raise SystemExit(f"f2pipe bench {suite}: no --{name.replace('_', '-')}")
    asked = (("quick", quick), ("out_dir", out_dir), ("instances", instances),
             ("chunk_interval", chunk_interval))  # fmt: skip
    extra = {k: v for k, v in asked if k in params and v is not None}
    module.run(report, repeats=3 if quick else repeats, min_seconds=0.05 if quick else 0.3, **extra)
    print(report.table())
    path = report.write_json(out_dir)
    print(f"\nwritten: {path}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`f2pipe bench`: found by the `f2pipe` command through the `f2pipe.commands` entry point."""
    p = sub.add_parser("bench", help="run benchmarks: print a table, write bench-results/*.json")
    p.add_argument(
        "suite",
        nargs="?",
        default="e2e",
        choices=list(SUITES),
        help="what to measure (default e2e: the whole local stack under load)",
    )
    p.add_argument("--repeats", type=int, default=7, help="runs per measurement (median quoted)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    p.add_argument("--instances", type=int, metavar="N",
                   help="capacity: N bridges, processors and sinks each (default 1)")  # fmt: skip
    p.add_argument(
        "--chunk-interval",
        metavar="INTERVAL",
        help="growth: readings chunks this long, e.g. '30 minutes' (readings only)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="JSON output directory")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    return run(args.suite, repeats=args.repeats, out_dir=args.out, quick=args.quick,
               instances=args.instances, chunk_interval=args.chunk_interval)  # fmt: skip
