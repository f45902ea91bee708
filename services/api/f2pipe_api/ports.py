"""What the api talks to that a test replaces: the clock (token expiry, last use), certgen's
admin API (certificates: `certgen_client.CertgenClient`) and the dead-letter topic
(`dead_letters.KafkaDeadLetters`). The registry is `store.PostgresStore`: the api's every
answer is SQL, tested against PostgreSQL.

The ports raise the exceptions below, never an HTTP client's or Kafka's: the routes turn them
into problems (`certgen_unavailable`, `kafka_unavailable`, certgen's own refusals)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # the models live beside the code that fills them; no import cycle at run time
    from f2pipe_api.certgen_client import CertificatePage, CertificateRecord, DeviceRevocation
    from f2pipe_api.dead_letters import DeadLetterPage, DeadLetterQuery
    from f2pipe_api.hub import Hub


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK = SystemClock()

# What an operator may give as the reason of a revocation: certgen's list (RFC 5280 without
# certificate_hold, which certgen cannot lift again).
RevocationReason = Literal[
    "unspecified",
    "key_compromise",
    "ca_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
]
CertificateStatus = Literal["valid", "revoked"]


class CertgenUnavailable(RuntimeError):
    """certgen did not answer, or not as it should (TLS, the admin token, a 5xx, a body that
    is not its schema). The message says which, never a secret nor certgen's body."""


class CertgenRefused(RuntimeError):
    """certgen refused the request for a reason the operator can act on: `unknown_serial`,
    `unknown_mac`, `already_revoked`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CertgenPort(Protocol):
    async def certificates(
        self, mac: str, *, status: CertificateStatus | None, limit: int, offset: int
    ) -> CertificatePage:
        """One page of the controller's certificates (certgen's order: newest first)."""
        ...

    async def revoke_serial(self, serial: str, reason: RevocationReason) -> CertificateRecord:
        """Revoke one certificate; CertgenRefused when unknown or already revoked."""
        ...

    async def revoke_device(self, mac: str, reason: RevocationReason) -> DeviceRevocation:
        """Revoke every valid certificate of the controller (none: an empty list)."""
        ...

    async def aclose(self) -> None:
        """Close the connections (the app's lifespan ends)."""
        ...


class CommandPort(Protocol):
    """The api's MQTT client for commands (command_link.MqttCommander)."""

    async def start(self) -> None:
        """Connect (in the background) and start the deadline sweep: the app's lifespan."""
        ...

    async def stop(self) -> None: ...

    async def send(
        self, command: dict[str, Any], wire: bytes, seconds: float
    ) -> dict[str, Any] | None:
        """Publish a stored command (a registry.commands row, `queued`) QoS 1 on its topic,
        to expire after `seconds` (its deadline) at the broker; its status follows from the
        broker's and the device's answers. Returns the row when it failed at once (not
        connected), else None."""
        ...


class KafkaUnavailable(RuntimeError):
    """Kafka did not answer in time or refused the api's login; the message says which."""


class DeadLetterPort(Protocol):
    async def recent(self, query: DeadLetterQuery) -> DeadLetterPage:
        """The newest dead letters matching `query`, newest first."""
        ...


class StreamPort(Protocol):
    """The live stream's source (processed_feed.ProcessedFeed) and its hub: started and
    stopped by the app's lifespan."""

    hub: Hub

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
