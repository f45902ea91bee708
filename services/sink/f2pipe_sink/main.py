"""`f2pipe sink`: every setting comes from the environment (docs/configuration.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from f2pipe_sink.service import main as run


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="f2pipe sink",
        description="processed-iot-data -> TimescaleDB, batched and idempotent",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser().parse_args(argv)
    return run()
