from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from f2pipe_shared.observability import ObservabilityServer


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_are_served() -> None:
    registry = CollectorRegistry()
    Counter("f2pipe_test_messages", "messages", registry=registry).inc(3)
    state: dict[str, Any] = {"ok": True}
    server = ObservabilityServer(
        "127.0.0.1", 0, lambda: (state["ok"], {"kafka": "up"}), registry
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = get(f"{base}/metrics")
        assert status == 200
        assert "f2pipe_test_messages_total 3.0" in body
        status, body = get(f"{base}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "kafka": "up"})
        state["ok"] = False
        status, body = get(f"{base}/healthz")
        assert status == 503
        assert json.loads(body)["status"] == "unhealthy"
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.stop()
