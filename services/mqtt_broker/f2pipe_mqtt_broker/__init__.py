"""Mosquitto's configuration, the ACL and `run-broker.sh`, shipped as package data.

docker-compose mounts this directory as `/mosquitto/config`; `f2pipe broker-config` reads
the same files through `files()`, wherever the package is installed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

TEMPLATE = "mosquitto.conf"
ACL = "acl"
SUPERVISOR = "run-broker.sh"


def path(name: str) -> Path:
    """A file of this package on disk (the package is always installed as plain files)."""
    return Path(str(files(__name__) / name))
