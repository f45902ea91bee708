"""`f2pipe dev up | status | down`: run the local stack in the foreground or detached."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from f2pipe_devtools.dev import http, probes, status
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
from f2pipe_devtools.servers import port_open

STATE_FILE = "state.json"
NOT_RUNNING = 3
TICK = 0.5  # seconds between looks at the processes (restarts); status lines are rarer


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


def _read_any_state(state_dir: Path) -> dict[str, Any] | None:
    """The state file, also when the `dev up` that wrote it is gone (killed)."""
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


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


def _state(stack: DevStack, phase: str) -> dict[str, Any]:
    """What `dev status` and `dev down` need: ports, every process we started (PID and start
    time, so `dev down` never signals a PID reused by another program), server restarts and
    when the Kafka broker lost its contents."""
    return {
        "pid": os.getpid(),
        "phase": phase,
        "ports": stack.options.ports.as_dict(),
        "services": list(stack.services),
        "pids": _pids(stack),
        "started": {name: probes.start_time(pid) for name, pid in _pids(stack).items() if pid},
        "servers": {name: s.state() for name, s in stack.supervised.items()},
        "kafka_lost_at": stack.kafka_lost_at,
        "conninfo": stack.conninfo,
        "env": {k: v for k, v in stack.env().items() if k in status.KafkaView.SETTINGS},
    }


def _write_state(stack: DevStack, phase: str, state: dict[str, Any] | None = None) -> None:
    state = state or _state(stack, phase)
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
    """Restart crashed services and servers, print the status line, until ``stop`` is set."""
    urls = {name: stack.metrics_url(name) for name in stack.services if name not in HTTP_SERVICES}
    kafka = status.KafkaView(stack.env())
    server_probes = stack.server_probes()
    before = status.take_sample(urls)
    written = _state(stack, "running")
    next_line = time.monotonic() + interval
    while not stop.wait(min(TICK, interval)):
        failed = stack.check()
        state = _state(stack, "running")
        if state != written:  # restarts, new PIDs: `dev status`, `dev down` and tests read them
            _write_state(stack, "running", state)
            written = state
        if time.monotonic() < next_line:
            continue
        next_line = time.monotonic() + interval
        after = status.take_sample(urls)
        # certgen logs every request: its liveness is enough here, `dev status` asks /healthz.
        unhealthy = failed + [n for n, s in stack.services.items()
                              if not (s.running if n == "certgen" else s.healthy())]  # fmt: skip
        # A server counts as healthy when it answers, not when its process merely exists.
        unhealthy += [n for n, probe in server_probes.items() if n not in failed and not probe()]
        per_second, names = status.rates(before, after), sorted(set(unhealthy))
        if "kafka" in failed:  # dead: asking it for lags would hold up its restart for seconds
            line = status.status_line(per_second, dict.fromkeys(kafka.groups), None, names)
        else:
            line = kafka.status_line(per_second, names)
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
    print(f"f2pipe dev: running (pid {state['pid']}, {state['phase']})")
    unhealthy = _show_servers(state_dir, state)
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
    lost = status.kafka_lost(state.get("kafka_lost_at", []))
    if lost:
        print("  " + lost)
    return 0 if not unhealthy else 1


def _show_servers(state_dir: Path, state: dict[str, Any]) -> list[str]:
    """A line per server, from a real probe of each; the names of those not answering."""
    ports: dict[str, int] = state["ports"]
    recorded: dict[str, dict[str, Any]] = state.get("servers", {})
    down = []
    for name, probe in probes.probes(state_dir.resolve(), ports).items():
        ok = probe()
        port = ports[probes.PORT_NAMES[name]]
        print(f"  {name:<10} :{port:<6} {'healthy' if ok else 'NOT ANSWERING'}"
              f"{status.restart_note(recorded.get(name, {}))}")  # fmt: skip
        if not ok:
            down.append(name)
    return down


def down(state_dir: Path, timeout: float) -> int:
    state = _read_any_state(state_dir)
    if state is None:
        print(f"f2pipe dev: not running in {state_dir}")
        return 0
    pid = int(state["pid"])
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            print(f"f2pipe dev: pid {pid} still running after {timeout:.0f} s", file=sys.stderr)
            return 1
    else:
        print(f"f2pipe dev: `dev up` (pid {pid}) is gone; stopping what it left running")
    # What it started and did not stop (it was killed, or a stop failed): by the PIDs recorded.
    for name, leftover in _recorded(state).items():
        _stop_group(name, leftover)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    held = {name: port for name, port in state["ports"].items() if port_open(HOST, port)}
    for name, port in held.items():
        print(f"f2pipe dev: port {port} ({name}) is still held by "
              f"{probes.describe_holder(port)}, not started by f2pipe dev: stop it yourself",
              file=sys.stderr)  # fmt: skip
    print("f2pipe dev: stopped")
    return 1 if held else 0


def _recorded(state: dict[str, Any]) -> dict[str, int]:
    """Recorded processes still running as recorded: the same PID with the same start time."""
    pids: dict[str, tuple[int | None, int | None]] = {
        name: (pid, state.get("started", {}).get(name)) for name, pid in state["pids"].items()
    }
    for name, server in state.get("servers", {}).items():
        pids[name] = (server.get("pid"), server.get("started"))
    return {name: pid for name, (pid, started) in pids.items()
            if pid and started is not None and probes.start_time(pid) == started}  # fmt: skip


def _stop_group(name: str, pid: int, timeout: float = 30.0) -> None:
    """Stop a process group we started (each led its own session): politely, then SIGKILL."""
    print(f"f2pipe dev: stopping {name} (pid {pid})")
    # PostgreSQL's fast shutdown is SIGINT; SIGTERM would wait for every client to leave.
    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while probes.start_time(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
