"""`f2pipe processor`: every setting comes from the environment (docs/configuration.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from f2pipe_processor.service import main as run


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="f2pipe processor",
        description="Faust worker: raw-iot-data -> processed-iot-data and dead letters",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser().parse_args(argv)
    return run()
