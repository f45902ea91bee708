"""What certgen reads: its own group (CERTGEN_TLS*, the enrolment throttle, trusted proxies),
the CA group (shared: the simulator and broker-config read parts of it) and the registry
database, besides the common group every service reads."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, PositiveFloat, field_validator

from f2pipe_shared import settings as s

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Host names and IP addresses, comma-separated, as BROKER_SANS takes them.
_NAMES = r"^[A-Za-z0-9.:*,-]*$"
Seconds = Annotated[PositiveFloat, Field(le=86_400)]


class CertgenSettings(s.F2Settings):
    certgen_tls: bool = Field(
        True,
        description="serve HTTPS with ISSUED_DIR/certgen.crt (issued at start-up); off: plain "
        "HTTP, on 127.0.0.1 unless --host says otherwise (only behind a TLS proxy)",
    )
    certgen_tls_cn: str = Field(
        "certgen",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9.-]+$",
        description="CN (and DNS name) of certgen's server certificate",
    )
    certgen_tls_sans: str = Field(
        "",
        pattern=_NAMES,
        description="more DNS names/IPs for it, comma-separated (CERTGEN_API_HOST, localhost, "
        "127.0.0.1 and ::1 are always in)",
    )
    certgen_api_tls_names: str = Field(
        "api",
        pattern=_NAMES,
        description="the api's server certificate (ISSUED_DIR/api.crt, issued at start-up): its "
        "CN first, then more DNS names/IPs, comma-separated (localhost and loopback are always "
        "in); empty: none",
    )
    certgen_source_failures: s.Count = Field(
        10, le=10_000, description="failed claim checks one client address may make in a burst"
    )
    certgen_source_refill: Seconds = Field(
        60.0, description="seconds after which one more is allowed (the sustained rate)"
    )
    certgen_mac_failures: s.Count = Field(
        20,
        le=100_000,
        description="failed claim checks for one MAC, from any address, before it counts as "
        "attacked (a failure on it then throttles the failing address at once)",
    )
    certgen_mac_refill: Seconds = Field(45.0, description="seconds after which one more is allowed")
    certgen_throttle_entries: s.Count = Field(
        50_000,
        le=10_000_000,
        description="most addresses, and most MACs, the throttle remembers (the longest idle go "
        "first)",
    )
    certgen_ipv6_prefix: int = Field(
        64, ge=32, le=128, description="IPv6 clients are throttled per network of this prefix"
    )
    certgen_trusted_proxies: str = Field(
        "",
        pattern=r"^[0-9A-Fa-f.:/, ]*$",
        description="reverse proxies (IPs or networks, comma-separated) whose X-Forwarded-For "
        "names the client; empty: the connection's peer is the client",
    )

    @field_validator("certgen_trusted_proxies")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        _networks(value)  # a ValueError names the variable (settings.load)
        return value

    @property
    def tls_san_list(self) -> list[str]:
        return [name.strip() for name in self.certgen_tls_sans.split(",") if name.strip()]

    @property
    def api_tls_name_list(self) -> list[str]:
        return [name.strip() for name in self.certgen_api_tls_names.split(",") if name.strip()]

    @property
    def trusted_proxy_networks(self) -> tuple[IpNetwork, ...]:
        return _networks(self.certgen_trusted_proxies)


def _networks(value: str) -> tuple[IpNetwork, ...]:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in value.split(",")
        if part.strip()
    )


@dataclass(frozen=True)
class Settings(s.ServiceSettings):
    ca: s.CaSettings
    postgres: s.PostgresSettings
    certgen: CertgenSettings
