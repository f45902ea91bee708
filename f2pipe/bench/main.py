"""`f2pipe bench`: each suite is a module with `run(report, repeats, min_seconds)`."""

from __future__ import annotations

import importlib
from pathlib import Path

from f2pipe.bench.report import Report

# Imported only when asked for: a suite may start servers and need a service's packages.
SUITES = {
    "codec": "f2pipe.bench.codec",
    "bridge": "f2pipe.bench.bridge",
    "processor": "f2pipe.bench.processor",
    "sink": "f2pipe.bench.sink",
}


def run(suite: str, repeats: int, out_dir: Path, quick: bool = False) -> int:
    report = Report(suite)
    module = importlib.import_module(SUITES[suite])
    module.run(report, repeats=3 if quick else repeats, min_seconds=0.05 if quick else 0.3)
    print(report.table())
    path = report.write_json(out_dir)
    print(f"\nwritten: {path}")
    return 0
