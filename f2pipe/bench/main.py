"""`f2pipe bench`: each suite is a module with `run(report, repeats, min_seconds)`.

A suite that also takes `quick` and `out_dir` gets them (e2e: shorter phases, its chart).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from f2pipe.bench.report import Report

# Imported only when asked for: a suite may start servers and need a service's packages.
SUITES = {
    "codec": "f2pipe.bench.codec",
    "bridge": "f2pipe.bench.bridge",
    "processor": "f2pipe.bench.processor",
    "sink": "f2pipe.bench.sink",
    "e2e": "f2pipe.bench.e2e",
}


def run(suite: str, repeats: int, out_dir: Path, quick: bool = False) -> int:
    report = Report(suite)
    module = importlib.import_module(SUITES[suite])
    params = inspect.signature(module.run).parameters
    extra = {k: v for k, v in (("quick", quick), ("out_dir", out_dir)) if k in params}
    module.run(report, repeats=3 if quick else repeats, min_seconds=0.05 if quick else 0.3, **extra)
    print(report.table())
    path = report.write_json(out_dir)
    print(f"\nwritten: {path}")
    return 0
