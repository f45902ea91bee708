"""`f2pipe dev`'s arguments (kept light: `f2pipe --help` must not load the stack)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# Ports are this + fixed offsets (f2pipe/dev/ports.py): clear of the standard ones.
DEFAULT_BASE = 25400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    up = commands.add_parser("up", help="start the whole pipeline (Ctrl-C stops it)")
    _state_dir(up)
    up.add_argument(
        "--base-port",
        type=int,
        default=int(os.environ.get("F2PIPE_DEV_BASE_PORT", DEFAULT_BASE)),
        help=f"ports are this + fixed offsets (default {DEFAULT_BASE}: PostgreSQL "
        f"{DEFAULT_BASE + 32}, MQTT {DEFAULT_BASE + 83}; docs/development.md)",
    )
    up.add_argument("--controllers", type=int, default=20, help="demo controllers (default 20)")
    up.add_argument("--no-simulator", action="store_true", help="start no simulated controllers")
    up.add_argument("--detach", action="store_true", help="start in the background and return")
    up.add_argument(
        "--status-interval", type=float, default=5.0, help="seconds between status lines"
    )
    st = commands.add_parser("status", help="each process's health and the status line")
    _state_dir(st)
    down = commands.add_parser("down", help="stop a detached stack (reverse order, gracefully)")
    _state_dir(down)
    down.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")


def _state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=Path(".dev"),
                        help="where everything lives (default .dev/)")  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`f2pipe dev`: found by the `f2pipe` command through the `f2pipe.commands` entry point."""
    parser = sub.add_parser("dev", help="the whole pipeline on this machine: up, status, down")
    add_arguments(parser)
    parser.set_defaults(handler=_dev)


def _dev(args: argparse.Namespace) -> int:
    from f2pipe_devtools.dev.cli import main as dev_main

    return dev_main(args)
