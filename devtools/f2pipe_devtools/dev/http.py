"""GET on the stack's own endpoints (/healthz, /metrics; certgen's over HTTPS)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path


def get(url: str, timeout: float = 2.0, *, ca_file: Path | None = None) -> tuple[int, str] | None:
    """Status and body; None when nothing answers (or, over https, when the server's
    certificate does not verify against `ca_file`, the stack's CA: the system's otherwise)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        # A missing or unreadable CA file is an OSError too: nothing verifiable answers yet.
        context = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
        # http(s):// only (checked above): the URLs are built from our own host and ports.
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def ok(url: str, *, ca_file: Path | None = None) -> bool:
    answer = get(url, ca_file=ca_file)
    return answer is not None and answer[0] == 200
