"""docs/security.md's threat table names the tests that prove each protection: they exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(test_\w+))?`")


def threat_table() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "`" in line]


def test_every_row_names_a_test_and_every_named_test_exists() -> None:
    rows = threat_table()
    assert len(rows) >= 10
    for row in rows:
        proof = row.rstrip(" |").rsplit(" | ", 1)[1]
        path: str | None = None
        named = 0
        for file, test in REFERENCE.findall(proof):
            path = file or path
            assert path is not None, f"a test without its file in: {row[:60]}"
            source = (ROOT / path).read_text()
            if test:
                assert re.search(rf"^(async )?def {test}\(", source, re.M), f"{path}::{test}"
            named += 1
        assert named, f"no proving test in: {row[:60]}"
