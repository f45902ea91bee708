"""Timing helpers and the report every benchmark writes: a table and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class Measurement:
    name: str
    unit: str
    runs: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the runs were."""
        return (max(self.runs) - min(self.runs)) / self.median if self.median else 0.0


@dataclass
class Report:
    suite: str
    measurements: list[Measurement] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        return m

    def table(self) -> str:
        rows = [("measurement", "median", "unit", "spread", "runs", "note")]
        rows += [
            (m.name, _number(m.median), m.unit, f"{m.spread:.0%}", str(len(m.runs)), m.note)
            for m in self.measurements
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)

    def write_json(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"{stamp}-{self.suite}.json"
        doc = {
            "suite": self.suite,
            "started_at": self.started_at,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "measurements": [
                {**asdict(m), "median": m.median, "spread": m.spread} for m in self.measurements
            ],
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path


def _number(value: float) -> str:
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"


def rate(
    fn: Callable[[], object], items: int, repeats: int, min_seconds: float = 0.2
) -> list[float]:
    """Items per second of `fn`, one figure per repeat; each repeat loops for min_seconds."""
    fn()  # warm-up: imports, caches, allocator
    results = []
    for _ in range(repeats):
        loops, start = 0, time.perf_counter()
        while True:
            fn()
            loops += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        results.append(items * loops / elapsed)
    return results


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values)
