"""The local stack's ports: one base, fixed offsets, clear of the servers' standard ports."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

from f2pipe_devtools.dev.instances import extra_offsets
from f2pipe_devtools.servers import free_port, port_open
from f2pipe_devtools.servers.base import FIRST_PORT, bindable, ephemeral_range

# 25400 + offset: nothing of PostgreSQL (5432), Redis (6379), Kafka (9092), MQTT (1883/8883),
# certgen (8080), the api (8090), Prometheus exporters (91xx) or the compose file's host ports.
OFFSETS = {
    "postgres": 32,
    "redis": 79,
    "kafka": 92,
    "mqtt": 83,
    "certgen": 80,
    "api": 90,
    "bridge": 1,
    "processor": 2,
    "sink": 3,
    "simulator": 4,
}


@dataclass(frozen=True)
class Ports:
    postgres: int
    redis: int
    kafka: int
    mqtt: int
    certgen: int
    api: int  # the control plane's HTTP API (its /healthz and /metrics too)
    bridge: int  # the services' /metrics and /healthz
    processor: int
    sink: int
    simulator: int
    # Instances beyond the first of a scaled stage (dev/instances.py): "bridge-2" -> port.
    extra: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_base(cls, base: int, instances: int = 1) -> Ports:
        extra = extra_offsets(instances, OFFSETS)
        top = max([*OFFSETS.values(), *extra.values()])
        if not 1024 <= base <= 65535 - top:
            raise ValueError(f"--base-port {base}: choose 1024..{65535 - top}")
        return cls(**{name: base + offset for name, offset in OFFSETS.items()},
                   extra={name: base + offset for name, offset in extra.items()})  # fmt: skip

    @classmethod
    def free(cls, instances: int = 1) -> Ports:
        """Any free ports (tests, benchmarks)."""
        extra = {name: free_port() for name in extra_offsets(instances, OFFSETS)}
        return cls(**{name: free_port() for name in OFFSETS}, extra=extra)

    @classmethod
    def free_base(cls, host: str = "127.0.0.1") -> int:
        """A base whose every port is free, below the ephemeral range (tests of `dev up`).

        Below that range no outgoing connection can take one of the ports between this
        choice and the servers' binds (see `free_port`).
        """
        low, _ = ephemeral_range()
        rng = random.SystemRandom()
        for _ in range(100):
            base = rng.randrange(FIRST_PORT, low - max(OFFSETS.values()), 100)
            if all(bindable(host, port) for port in cls.from_base(base).as_dict().values()):
                return base
        raise RuntimeError(f"no free block of ports between {FIRST_PORT} and {low}")

    def as_dict(self) -> dict[str, int]:
        """Every port by name, further instances' included (`bridge-2`, …)."""
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return named | self.extra

    def of(self, name: str) -> int:
        """The port of a server or a service instance."""
        return self.as_dict()[name]

    def taken(self, host: str = "127.0.0.1") -> dict[str, int]:
        """The ports something already listens on."""
        return {name: port for name, port in self.as_dict().items() if port_open(host, port)}
