"""`f2pipe broker-config`: Mosquitto's configuration for a local broker, from the one template.

`services/mqtt_broker/f2pipe_mqtt_broker/mosquitto.conf` is a working configuration for the
container. Mosquitto
cannot expand variables, so the container's own values are the placeholders: the listener
line `listener 8883` and the directories under `/mosquitto/`. `render` swaps them for local
ones; a template that no longer contains one of them is an error, not a silently wrong file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import f2pipe_mqtt_broker as broker_files
from f2pipe_shared import settings as s

# Package data of f2pipe-mqtt-broker (services/mqtt_broker), wherever it is installed.
TEMPLATE = broker_files.path(broker_files.TEMPLATE)
ACL = broker_files.path(broker_files.ACL)
SUPERVISOR = broker_files.path(broker_files.SUPERVISOR)

CONTAINER_LISTENER = "listener 8883"
# Container directory -> the render() argument that replaces it.
CONTAINER_DIRS: Mapping[str, str] = {
    "/mosquitto/ca/": "ca_dir",  # ca.crt, crl.pem (CA_DIR)
    "/mosquitto/certs/": "issued_dir",  # broker.crt, broker.key (ISSUED_DIR)
    "/mosquitto/config/": "config_dir",  # acl
    "/mosquitto/data/": "data_dir",  # persistence
}


def render(
    template: str,
    *,
    ca_dir: Path | str,
    issued_dir: Path | str,
    config_dir: Path | str,
    data_dir: Path | str | None,
    port: int | str = 8883,
    host: str | None = None,
    user: str | None = None,
) -> str:
    """The template with local paths and listener.

    `data_dir=None` leaves `persistence_location` out, for a caller that sets its own (the
    test harness's MosquittoServer: Mosquitto refuses a second one). `port` and `host` may be
    the harness's "{port}" and "{host}". `user` is the account Mosquitto switches to when
    started as root.
    """
    local = {
        "ca_dir": ca_dir,
        "issued_dir": issued_dir,
        "config_dir": config_dir,
        "data_dir": data_dir,
    }
    missing = {CONTAINER_LISTENER, *CONTAINER_DIRS}
    lines = []
    for line in template.splitlines():
        if line == CONTAINER_LISTENER:
            missing.discard(line)
            lines.append(f"listener {port} {host}" if host else f"listener {port}")
            continue
        option, _, value = line.partition(" ")
        prefix = next((p for p in CONTAINER_DIRS if value.startswith(p)), None)
        if prefix is None or line.startswith("#"):
            lines.append(line)
            continue
        missing.discard(prefix)
        directory = local[CONTAINER_DIRS[prefix]]
        if directory is not None:
            lines.append(f"{option} {_absolute(directory)}/{value.removeprefix(prefix)}")
    if missing:
        raise ValueError(f"the broker template no longer contains {sorted(missing)}")
    if user is not None:
        lines += [
            "",
            "# Set by f2pipe broker-config: the account Mosquitto runs as.",
            f"user {user}",
        ]
    return "\n".join(lines) + "\n"


def write(
    out: Path,
    *,
    ca_dir: Path,
    issued_dir: Path,
    data_dir: Path | None = None,
    port: int = 8883,
    host: str | None = "127.0.0.1",
    user: str | None = None,
) -> Path:
    """Write `out`/mosquitto.conf and `out`/acl (and make the data directory); return the conf."""
    out.mkdir(parents=True, exist_ok=True)
    data = data_dir or out / "data"
    data.mkdir(parents=True, exist_ok=True)
    text = render(
        TEMPLATE.read_text(),
        ca_dir=ca_dir,
        issued_dir=issued_dir,
        config_dir=out,
        data_dir=data,
        port=port,
        host=host,
        user=user,
    )
    conf = out / "mosquitto.conf"
    conf.write_text(text)
    shutil.copyfile(ACL, out / "acl")
    return conf


def supervisor_command(conf: Path) -> list[str]:
    """Mosquitto under run-broker.sh, which restarts it when its CRL or certificates change."""
    return ["sh", str(SUPERVISOR), "-c", str(conf)]


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        print(f"f2pipe broker-config: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    ca_settings = s.load(s.CaSettings)
    ca_dir = args.ca_dir or Path(ca_settings.ca_dir)
    issued_dir = args.issued_dir or Path(ca_settings.issued_dir)
    # As root Mosquitto switches to the `mosquitto` account, which cannot read the keys that
    # certgen wrote 0600 for root: a development machine keeps it as root (it warns).
    user = "root" if os.geteuid() == 0 else None
    conf = write(
        args.out,
        ca_dir=ca_dir,
        issued_dir=issued_dir,
        data_dir=args.data_dir,
        port=args.port,
        host=args.host,
        user=user,
    )
    print(f"broker-config: wrote {conf} and {args.out / 'acl'}")
    needed = [ca_dir / "ca.crt", ca_dir / "crl.pem", issued_dir / "broker.crt"]
    absent = [str(path) for path in needed if not path.exists()]
    if absent:
        print(
            f"broker-config: not there yet: {', '.join(absent)}; create them with "
            "`f2pipe certgen --bootstrap-only`",
            file=sys.stderr,
        )
    print("run it with: " + " ".join(supervisor_command(conf)))
    return 0


def _absolute(path: Path | str) -> str:
    # Mosquitto resolves relative paths against its working directory, not the file's.
    return str(Path(path).resolve())
