"""`f2pipe bridge`: every setting comes from the environment (docs/configuration.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from f2pipe_bridge.service import main as run


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="f2pipe bridge",
        description="MQTT stat/# and tele/# -> Kafka raw-iot-data, acknowledged after Kafka confirmed",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser().parse_args(argv)
    return run()
