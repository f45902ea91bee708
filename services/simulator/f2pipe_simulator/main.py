"""`f2pipe simulator [options]`: simulated controllers, or with --load a load generator."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from f2pipe_simulator.options import add_arguments
from f2pipe_simulator.service import main as run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="f2pipe simulator",
        description="simulated F2 controllers (enrol, publish, answer commands); --load",
    )
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser().parse_args(argv))
