"""`f2pipe dev up | status | down`: run the local stack in the foreground or detached."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from f2pipe_devtools.dev import http, status
from f2pipe_devtools.dev.ports import Ports
from f2pipe_devtools.dev.procs import Console, open_private_log
from f2pipe_devtools.dev.stack import (
    API_ADMIN_TOKEN_FILE,
    HOST,
    HTTP_SERVICES,
    SERVICES,
    DevOptions,
    DevStack,
)

STATE_FILE = "state.json"
NOT_RUNNING = 3


def main(args: argparse.Namespace) -> int:
    if args.dev_command == "up":
        return detach(args) if args.detach else foreground(args)
    if args.dev_command == "status":
        return show_status(args.state_dir)
    return down(args.state_dir, args.timeout)


# --- state file ------------------------------------------------------------------------------


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The running stack's state, or None when none runs there."""
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(int(state.get("pid", 0))) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_state(stack: DevStack, phase: str) -> None:
    state = {
        "pid": os.getpid(),
        "phase": phase,
        "ports": stack.options.ports.as_dict(),
        "services": list(stack.services),
        "pids": _pids(stack),
        "conninfo": stack.conninfo,
        "env": {k: v for k, v in stack.env().items() if k in status.KafkaView.SETTINGS},
    }
    path = stack.root / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


# --- up --------------------------------------------------------------------------------------


def foreground(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    running = read_state(state_dir)
    if running is not None:
        print(f"f2pipe dev: already running in {state_dir} (pid {running['pid']}); "
              "`f2pipe dev down` stops it", file=sys.stderr)  # fmt: skip
        return 1
    try:
        ports = Ports.from_base(args.base_port)
    except ValueError as exc:
        print(f"f2pipe dev: {exc}", file=sys.stderr)
        return 2
    taken = ports.taken()
    if taken:
        busy = ", ".join(f"{name} {port}" for name, port in taken.items())
        print(f"f2pipe dev: ports already in use: {busy}. Choose others with --base-port "
              f"(or F2PIPE_DEV_BASE_PORT), e.g. --base-port {args.base_port + 1000}",
              file=sys.stderr)  # fmt: skip
        return 2
    options = DevOptions(state_dir, ports, controllers=args.controllers,
                         simulator=not args.no_simulator)  # fmt: skip
    stack = DevStack(options, Console())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack.up()
        _write_state(stack, "running")
        _announce(stack)
        watch(stack, stop, args.status_interval)
    except Exception as exc:  # start-up failed: stack.up() stopped what it had started
        print(f"f2pipe dev: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        stack.console.line("dev", "stopping (reverse order)")
        stack.down()
        (state_dir / STATE_FILE).unlink(missing_ok=True)
    stack.console.line("dev", "stopped")
    return 0


def watch(stack: DevStack, stop: threading.Event, interval: float) -> None:
    """Restart crashed services and print the status line until ``stop`` is set."""
    urls = {name: stack.metrics_url(name) for name in stack.services if name not in HTTP_SERVICES}
    kafka = status.KafkaView(stack.env())
    before = status.take_sample(urls)
    pids = _pids(stack)
    while not stop.wait(interval):
        failed = stack.check()
        if _pids(stack) != pids:  # a restarted service: `dev status` and tests read its pid
            pids = _pids(stack)
            _write_state(stack, "running")
        after = status.take_sample(urls)
        # certgen logs every request: its liveness is enough here, `dev status` asks /healthz.
        unhealthy = failed + [n for n, s in stack.services.items()
                              if not (s.running if n == "certgen" else s.healthy())]  # fmt: skip
        line = kafka.status_line(status.rates(before, after), sorted(set(unhealthy)))
        stack.console.line("status", line)
        before = after


def _pids(stack: DevStack) -> dict[str, int | None]:
    return {name: service.pid for name, service in stack.services.items()}


def _announce(stack: DevStack) -> None:
    ports = stack.options.ports
    lines = [
        "f2pipe is up. Ctrl-C stops everything.",
        f'  data:     psql "{stack.conninfo}"',
        "            SELECT * FROM telemetry.readings_labeled ORDER BY timestamp DESC LIMIT 20;",
        f"  MQTT:     mqtts://{HOST}:{ports.mqtt} (CA {stack.ca_dir / 'ca.crt'})",
        f"  certgen:  https://{HOST}:{ports.certgen} (CA {stack.ca_dir / 'ca.crt'}, "
        f"admin token in {stack.root / 'admin-token'})",
        f"  api:      https://{HOST}:{ports.api} (docs/api.md; "
        f"admin token in {stack.root / API_ADMIN_TOKEN_FILE})",
        f"  console:  https://{HOST}:{ports.api}/console/ (sign in with that token; the "
        f"browser warns until it trusts {stack.ca_dir / 'ca.crt'})",
        f"  last values: http://{HOST}:{ports.processor}/latest/<device_id>",
        "  metrics:  " + ", ".join(f"{n} :{getattr(ports, n)}" for n in SERVICES),
        f"  logs:     {stack.root / 'logs'}/",
    ]
    for line in lines:
        stack.console.line("dev", line)


def detach(args: argparse.Namespace) -> int:
    """Run `f2pipe dev up` in its own session, logging to <state>/dev.log; return when up."""
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "dev.log"
    argv = [sys.executable, "-m", "f2pipe", "dev", "up", "--state-dir", str(state_dir),
            "--base-port", str(args.base_port), "--controllers", str(args.controllers),
            "--status-interval", str(args.status_interval)]  # fmt: skip
    if args.no_simulator:
        argv.append("--no-simulator")
    with open_private_log(log_path) as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = read_state(state_dir)
        if state is not None and state["pid"] == child.pid and state["phase"] == "running":
            print(f"f2pipe dev: up (pid {child.pid}); logs in {log_path}; "
                  f"`f2pipe dev status`, `f2pipe dev down`")  # fmt: skip
            print(f'  psql "{state["conninfo"]}"')
            return 0
        if child.poll() is not None:
            print(f"f2pipe dev: start-up failed ({child.returncode}); last lines of {log_path}:",
                  file=sys.stderr)  # fmt: skip
            print(_tail(log_path), file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"f2pipe dev: not up after 600 s; see {log_path}", file=sys.stderr)
    return 1


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- status and down -------------------------------------------------------------------------


def show_status(state_dir: Path) -> int:
    state = read_state(state_dir)
    if state is None:
        print(f"f2pipe dev: not running in {state_dir}")
        return NOT_RUNNING
    ports: dict[str, int] = state["ports"]
    unhealthy = []
    print(f"f2pipe dev: running (pid {state['pid']}, {state['phase']})")
    ca_file = state_dir.resolve() / "ca" / "ca.crt"  # DevStack.ca_dir: the HTTPS trust anchor
    for name in state["services"]:
        if name in HTTP_SERVICES:  # HTTPS only
            ok = http.ok(f"https://{HOST}:{ports[name]}/healthz", ca_file=ca_file)
        else:
            ok = http.ok(f"http://{HOST}:{ports[name]}/healthz")
        print(f"  {name:<10} :{ports[name]:<6} {'healthy' if ok else 'NOT HEALTHY'}")
        if not ok:
            unhealthy.append(name)
    urls = {
        n: f"http://{HOST}:{ports[n]}/metrics" for n in state["services"] if n not in HTTP_SERVICES
    }
    before = status.take_sample(urls)
    time.sleep(2)
    after = status.take_sample(urls)
    kafka = status.KafkaView(state["env"])
    print("  " + kafka.status_line(status.rates(before, after), unhealthy))
    return 0 if not unhealthy else 1


def down(state_dir: Path, timeout: float) -> int:
    state = read_state(state_dir)
    if state is None:
        print(f"f2pipe dev: not running in {state_dir}")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _alive(pid):
        print(f"f2pipe dev: pid {pid} still running after {timeout:.0f} s", file=sys.stderr)
        return 1
    print("f2pipe dev: stopped")
    return 0
