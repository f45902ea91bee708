"""GET on the stack's own endpoints (/healthz, /metrics)."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str, timeout: float = 2.0) -> tuple[int, str] | None:
    """Status and body; None when nothing answers."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http URL: {url!r}")
    try:
        # http:// only (checked above): the URLs are built from our own host and ports.
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def ok(url: str) -> bool:
    answer = get(url)
    return answer is not None and answer[0] == 200
