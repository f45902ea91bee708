"""Entry point of `f2pipe bench`."""

from __future__ import annotations

from pathlib import Path

from f2pipe.bench import codec
from f2pipe.bench.report import Report

SUITES = {"codec": codec.run}


def run(suite: str, repeats: int, out_dir: Path, quick: bool = False) -> int:
    report = Report(suite)
    SUITES[suite](report, repeats=3 if quick else repeats, min_seconds=0.05 if quick else 0.3)
    print(report.table())
    path = report.write_json(out_dir)
    print(f"\nwritten: {path}")
    return 0
