"""What the simulator talks to, as small protocols. Production adapters satisfy them
structurally (`mqtt.PahoBroker` and its `mqtt.Connection`s, `enrolment.CertgenEnrolment`,
`clock.LoopClock`), wired in `main.build`; unit tests pass fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from f2pipe_simulator.enrolment import EnrolmentReport
from f2pipe_simulator.messages import Message

# --- time --------------------------------------------------------------------------------------


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What a controller needs of a clock: the time now, and a callback at a later time."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Cancellable: ...


class Clock(Timers, Protocol):
    """The event loop's clock (monotonic seconds, the pace of a load run) and the wall clock
    that stamps device timestamps."""

    async def sleep(self, seconds: float) -> None: ...

    def epoch_us(self) -> int: ...


# --- MQTT --------------------------------------------------------------------------------------


class MessageOutlet(Protocol):
    """Where a controller's messages go (to its connection, through the fleet's books);
    False when the message was not taken (the connection's queue is full)."""

    def publish(self, message: Message) -> bool: ...


CommandHandler = Callable[[str, str, bytes], None]  # (controller CN, topic, payload)
AckHandler = Callable[[Message, bool], None]  # (message, accepted by the broker)


class DeviceConnection(Protocol):
    """One controller's MQTT connection: it connects, and reconnects, while ``run`` runs."""

    @property
    def cn(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    @property
    def ever_connected(self) -> asyncio.Event: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def outstanding(self) -> int: ...

    def publish(self, message: Message) -> bool: ...

    async def run(self) -> None: ...

    def misc(self) -> None: ...

    async def disconnect(self) -> None: ...


class Broker(Protocol):
    """The MQTT broker: a connection per controller, with the controller's own identity."""

    def connection(
        self, cn: str, *, on_command: CommandHandler, on_ack: AckHandler
    ) -> DeviceConnection: ...


# --- enrolment ---------------------------------------------------------------------------------


class EnrolmentEndpoint(Protocol):
    """certgen's enrolment: makes sure each controller has a usable certificate."""

    async def enrol(self, macs: Sequence[str], codes: Mapping[str, str]) -> EnrolmentReport: ...
