"""How f2pipe's HTTP services (certgen, api) are served: one uvicorn configuration.

With `tls` a service speaks HTTPS only: TLS 1.2 or newer, TLS 1.2 with forward-secret AEAD
suites only (as the MQTT broker's), with a certificate certgen issued. Its access log names
paths without their query strings (accesslog.py). Without `tls` it is plain HTTP, meant for
loopback or behind a TLS proxy: `is_loopback()` tells the caller when to warn.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from f2pipe_shared.accesslog import drop_query_strings

# TLS 1.2's suites: ECDHE with AES-GCM or ChaCha20-Poly1305 only, as the broker's
# (mosquitto.conf): no CBC, no SHA-1 MACs, no static RSA. TLS 1.3's are all AEAD.
TLS12_CIPHERS = ":".join(
    f"ECDHE-{auth}-{suite}"
    for suite in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
    for auth in ("ECDSA", "RSA")
)


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and its key (the key file mode 0600)."""

    certfile: Path
    keyfile: Path


def server_config(app: FastAPI, *, host: str, port: int, tls: TlsFiles | None) -> uvicorn.Config:
    """uvicorn's configuration for one of our services; loads the TLS files now, so a
    missing or unreadable certificate fails here rather than at the first request."""
    drop_query_strings()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep configure_logging's structured lines for uvicorn's too
        server_header=False,
        # Neither service trusts X-Forwarded-* blindly (certgen reads it from trusted proxies).
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        ssl_certfile=None if tls is None else str(tls.certfile),
        ssl_keyfile=None if tls is None else str(tls.keyfile),
        ssl_ciphers=TLS12_CIPHERS,
    )
    if tls is not None:
        # uvicorn has no setting for the oldest version: load its context now and set it.
        config.load()
        assert config.ssl is not None
        harden(config.ssl)
    return config


def harden(context: ssl.SSLContext) -> None:
    """TLS 1.2 or newer whatever the system's OpenSSL defaults say; no renegotiation."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def is_loopback(host: str) -> bool:
    """Whether a listen address stays on this machine (plain HTTP is only safe there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
