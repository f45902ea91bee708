from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from f2pipe.cli import main


@pytest.mark.parametrize("argv", [["f2pipe"], [sys.executable, "-m", "f2pipe"]])
def test_command_works_installed_and_as_module(argv: list[str]) -> None:
    if argv == ["f2pipe"]:
        argv = [str(Path(sys.executable).parent / "f2pipe")]
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, check=True)
    for command in ("migrate", "seed-demo", "bench"):
        assert command in result.stdout


def test_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTGRES_PORT", "not-a-port")
    assert main(["seed-demo", "--controllers", "1"]) == 2
    assert "POSTGRES_PORT='not-a-port'" in capsys.readouterr().err


def test_bench_codec_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "codec", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "raw batch decode" in out
    [written] = tmp_path.glob("*-codec.json")
    doc = json.loads(written.read_text())
    names = {m["name"] for m in doc["measurements"]}
    assert names == {
        "raw batch encode",
        "raw batch decode",
        "processed batch encode",
        "processed batch decode",
    }
    assert all(m["median"] > 0 for m in doc["measurements"])


def test_configuration_doc_lists_every_setting_as_the_code_defines_it() -> None:
    from f2pipe.configdoc import render

    doc = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == render(), "run `f2pipe config-doc --write docs/configuration.md`"
    assert "| `KAFKA_RAW_TOPIC` | `raw-iot-data` |" in render()


@pytest.mark.parametrize("service", ["certgen", "bridge", "processor", "sink", "simulator"])
def test_each_service_parses_its_own_arguments(
    service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main([service, "--help"])
    assert done.value.code == 0
    assert f"usage: f2pipe {service}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([service, "--no-such-option"])
    assert refused.value.code == 2


def test_a_service_with_a_bad_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCH_SIZE", "0")
    assert main(["sink"]) == 2
    assert "BATCH_SIZE='0'" in capsys.readouterr().err
