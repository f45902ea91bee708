"""One simulator stack per module: the real certgen, Mosquitto (production configuration
under run-broker.sh) and a migrated, seeded registry with 50 controllers; one state directory
shared by every run (as an operator's would be) and one operator identity (svc-operator,
persistent session) that reads stat/# and tele/# and sends the commands.

Every test gets what it needs from a fixture, so each passes alone and in any order
(`make test` shuffles them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from f2pipe_devtools.servers import PostgresServer
from tests.integration.simkit import Operator, SimStack
from tests.integration.simulator.kit import CONTROLLERS


@pytest.fixture(scope="module")
def stack(
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[SimStack]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    conninfo = postgres_server.create_database(f"simulator_{module}_{os.getpid()}")
    started = SimStack.start(tmp_path_factory.mktemp("sim"), conninfo, CONTROLLERS)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def operator(stack: SimStack) -> Iterator[Operator]:
    client = Operator(stack.broker.port, stack.pki).connect()
    yield client
    client.close()


@pytest.fixture(scope="module")
def state_dir(stack: SimStack) -> Path:
    return stack.root / "state"
