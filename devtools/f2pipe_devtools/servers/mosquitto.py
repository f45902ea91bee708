"""Mosquitto with a configuration we write: plain for harness tests, TLS when asked."""

from __future__ import annotations

import os
from pathlib import Path

from f2pipe_devtools.servers.base import ServerProcess, find_binary

# As in production (services/mqtt_broker/f2pipe_mqtt_broker/mosquitto.conf; a unit test keeps
# them equal): a crash loses at most 5 s of queued messages, QoS 0 messages wait for an
# absent persistent session, and the log is written at once (stdout is block-buffered).
PRODUCTION_OPTIONS = {
    "autosave_interval": "5",
    "queue_qos0_messages": "true",
    "log_dest": "stderr",
}


class MosquittoServer(ServerProcess):
    name = "mosquitto"

    def __init__(
        self, directory: Path, port: int | None = None, *, config: str | None = None,
        allow_anonymous: bool = False,
    ) -> None:  # fmt: skip
        """`config` replaces the listener section; it may use {port}, {host} and {dir}."""
        super().__init__(directory, port)
        self.binary = find_binary("mosquitto")
        self.config_path = directory / "mosquitto.conf"
        self.listener_config = config
        self.allow_anonymous = allow_anonymous

    def render_config(self) -> str:
        common = [
            f"persistence true\npersistence_location {self.directory}/",
            *(f"{option} {value}" for option, value in PRODUCTION_OPTIONS.items()),
            "log_type error\nlog_type warning\nlog_type notice",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto would switch to the `mosquitto` user, which cannot read
            # files in our temporary directories.
            common.append("user root")
        if self.listener_config is None:
            listener = f"listener {self.port} {self.host}\n" + (
                f"allow_anonymous {'true' if self.allow_anonymous else 'false'}"
            )
        else:
            listener = self.listener_config.format(
                port=self.port, host=self.host, dir=self.directory
            )
        return "\n".join([*common, listener]) + "\n"

    def prepare(self) -> None:
        self.config_path.write_text(self.render_config())

    def command(self) -> list[str]:
        return [str(self.binary), "-c", str(self.config_path)]
