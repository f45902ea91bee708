"""The base of every service's Prometheus metrics class.

Each service keeps its metrics in a registry of its own (two services, or two instances of
one, in a test process never share a counter) that also holds the process and platform
collectors, and the garbage collector's where the service showed it before. `/metrics` serves
that registry (`ObservabilityServer`, or the service's own web server).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)


class ServiceMetrics:
    """A registry with the process collectors, and metrics named `prefix + name` in it."""

    def __init__(
        self, prefix: str, registry: CollectorRegistry | None = None, *, gc: bool = False
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._prefix = prefix
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        if gc:
            GCCollector(registry=self.registry)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self._prefix + name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self._prefix + name, doc, labels, registry=self.registry)

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(self._prefix + name, doc, labels, buckets=buckets, registry=self.registry)
