"""The command line of `f2pipe simulator`: its arguments, and the ``Options`` of a run
(`main.options_from` fills in the environment's defaults)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

DEFAULT_METRICS_PORT = 9104


@dataclass(frozen=True)
class Options:
    """What this run does: the command line over the environment's defaults."""

    state_dir: Path
    certgen_url: str
    seed: int
    claim_codes: Path | None = None
    controllers: int | None = None
    shard: tuple[int, int] | None = None
    macs: list[str] | None = None
    enrol_only: bool = False
    load: bool = False
    rate: float | None = None
    count: int | None = None
    duration: float | None = None
    event_share: float = 0.1
    start_time: datetime | None = None
    ledger: Path | None = None
    metrics_port: int = DEFAULT_METRICS_PORT


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, e.g. 1/4, not {text}") from None
    if not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= K <= N, not {text}")
    return shard


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fleet = parser.add_argument_group("fleet and enrolment")
    fleet.add_argument(
        "--claim-codes",
        type=Path,
        metavar="PATH",
        help="claim codes: the CSV `f2pipe seed-demo --claim-codes` writes, or JSON "
        "(default: SIMULATOR_CLAIM_CODES)",
    )
    fleet.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="keys and certificates, reused across runs (default: SIMULATOR_STATE_DIR)",
    )
    fleet.add_argument(
        "--controllers",
        type=_positive_int,
        metavar="N",
        help="simulate the first N controllers (by MAC) that have a claim code or a certificate",
    )
    fleet.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="simulate every N-th of those controllers, starting with the K-th: N processes "
        "with --shard 1/N ... N/N share a fleet (one process uses one core)",
    )
    fleet.add_argument(
        "--mac",
        action="append",
        dest="macs",
        metavar="MAC",
        help="simulate this controller (repeatable); default: every controller it can enrol",
    )
    fleet.add_argument(
        "--certgen-url", metavar="URL", help="default: SIMULATOR_CERTGEN_URL or CERTGEN_API_*"
    )
    fleet.add_argument(
        "--enrol-only",
        action="store_true",
        help="enrol every controller that needs a certificate, then exit",
    )
    load = parser.add_argument_group("load mode (tests and benchmarks)")
    load.add_argument(
        "--load",
        action="store_true",
        help="publish a deterministic stream instead of behaving like real devices",
    )
    load.add_argument(
        "--rate",
        type=_positive_float,
        metavar="MSG_PER_S",
        help="messages per second over the whole fleet (default: as fast as the broker takes)",
    )
    load.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after N messages (acknowledged)"
    )
    load.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS", help="stop after this long"
    )
    load.add_argument(
        "--event-share",
        type=_share,
        default=0.1,
        metavar="F",
        help="fraction of state changes and scans among the messages (default 0.1)",
    )
    load.add_argument(
        "--start-time",
        metavar="TIMESTAMP",
        help="virtual device clock: the n-th message of a topic is stamped TIMESTAMP + n x "
        "PUBLISH_INTERVAL ('YYYY-MM-DD HH:MM:SS', UTC); a rerun then repeats every message",
    )
    both = parser.add_argument_group("both modes")
    both.add_argument(
        "--seed",
        type=int,
        help="random seed: values, events and the load stream repeat with it (default: random)",
    )
    both.add_argument(
        "--ledger",
        type=Path,
        metavar="PATH",
        help="write what was published (JSON lines) to PATH",
    )
    both.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="default: METRICS_PORT or 9104"
    )
