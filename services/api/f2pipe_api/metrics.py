"""Prometheus metrics of the api, in a registry of its own: refusals by reason, changes by
action. `/metrics` serves them with the process and Python collectors."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from f2pipe_shared.metrics import ServiceMetrics

AUTH_REFUSALS = ("missing_token", "wrong_token", "expired_token", "revoked_token", "forbidden")


class ApiMetrics(ServiceMetrics):
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        super().__init__("api_")
        self.auth_refusals = self.counter(
            "auth_refusals", "Requests refused by authentication or role, by reason", ["reason"]
        )
        self.changes = self.counter(
            "changes", "State-changing calls committed (one audit row each), by action", ["action"]
        )
        for reason in AUTH_REFUSALS:
            self.auth_refusals.labels(reason=reason)
        # The live stream (hub.py, processed_feed.py).
        self.stream_clients = self.gauge("stream_clients", "GET /v1/stream clients connected")
        self.stream_items = self.counter(
            "stream_items", "Items (readings, events, commands) written to stream clients"
        )
        self.stream_overflows = self.counter(
            "stream_overflows", "Stream clients disconnected because their buffer was full"
        )
        self.stream_skipped = self.counter(
            "stream_skipped_records", "Processed-topic records the stream could not decode"
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
