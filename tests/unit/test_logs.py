from __future__ import annotations

import json
import logging

import pytest

from f2pipe_shared.logs import configure_logging


def test_json_lines_carry_service_message_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("bridge", "INFO", "json")
    logging.getLogger("f2pipe.test").warning("kafka unreachable", extra={"device": "f2-aa"})
    logging.getLogger("f2pipe.test").debug("not shown at INFO")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["service"] == "bridge"
    assert line["level"] == "warning"
    assert line["msg"] == "kafka unreachable"
    assert line["device"] == "f2-aa"


def test_text_lines_are_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("sink", "DEBUG", "text")
    logging.getLogger("x").info("flushed", extra={"rows": 5})
    err = capsys.readouterr().err
    assert "INFO    sink x: flushed rows=5" in err
