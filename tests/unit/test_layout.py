"""The README's layout table is the tree, and the tree refers to nothing outside itself."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Applied migrations are history: their checksum is recorded in every deployed database, so
# a comment naming the controller protocol's document stays as it was written.
FROZEN = {"f2pipe/migrations/0002_registry.sql", "tests/unit/test_layout.py"}  # and this test


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return out.splitlines()


def layout_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return [p for row in re.findall(r"^\| (.+?) \|", section, re.M)
            for p in re.findall(r"`([^`]+)`", row)]  # fmt: skip


def test_every_path_in_the_layout_table_exists() -> None:
    paths = layout_paths()
    assert paths
    for path in paths:
        assert (ROOT / path.replace("<name>", "bridge")).exists(), path


def test_every_top_level_directory_is_in_the_layout_table() -> None:
    named = {p.split("/")[0] for p in layout_paths()}
    directories = {f.split("/")[0] for f in tracked() if "/" in f and not f.startswith(".")}
    assert directories <= named, sorted(directories - named)


def test_nothing_refers_to_a_path_outside_the_repository() -> None:
    # The one exception: the TimescaleDB build `make setup` installs, kept beside the
    # repository (scripts/setup-timescaledb.sh), not a document the project depends on.
    outside = re.compile(r"\.\./shared(?!/timescaledb)|DESIGN\.md|F2_PROTOCOL")
    offenders = [
        name
        for name in tracked()
        if name not in FROZEN
        and (ROOT / name).is_file()
        and not name.endswith(("uv.lock", ".png"))
        and outside.search((ROOT / name).read_text(errors="replace"))
    ]
    assert offenders == []


PACKAGES = {
    "shared": "shared/f2pipe_shared",
    "certgen": "services/certgen/f2pipe_certgen",
    "api": "services/api/f2pipe_api",
    "bridge": "services/bridge/f2pipe_bridge",
    "processor": "services/processor/f2pipe_processor",
    "sink": "services/sink/f2pipe_sink",
    "simulator": "services/simulator/f2pipe_simulator",
    "f2pipe": "f2pipe",
    "devtools": "devtools/f2pipe_devtools",
}


def test_the_architecture_doc_names_every_module_of_every_package() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    modules = doc.split("## Modules per service", 1)[1]
    sections = dict(re.findall(r"^### (\w+): `[^`]+`\n(.*?)(?=^### |\Z)", modules, re.M | re.S))
    for name, directory in PACKAGES.items():
        files = {p.name for p in (ROOT / directory).glob("*.py")} - {"__init__.py", "__main__.py"}
        listed = set(re.findall(r"^\| `(\w+\.py)` \|", sections[name], re.M))
        assert listed == files, (name, sorted(files ^ listed))
