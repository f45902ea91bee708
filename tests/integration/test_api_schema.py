"""The api's OpenAPI document, driven by schemathesis: for every operation it generates
requests from the schema (valid ones and, with negative data, invalid ones) and sends them
over real HTTP to the api served by uvicorn on the real PostgreSQL, wired to a real certgen
(HTTPS, same database) and a real Kafka dead-letter topic, with an admin token so every
handler runs to its end. No answer may be a 5xx, and each must match what the document says
(status codes, content types, response schemas).

A new route is covered without touching this file; one that can 500 fails here."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from f2pipe.migrate import apply_migrations
from f2pipe_api.app import create_app
from f2pipe_api.certgen_client import CertgenClient
from f2pipe_api.command_link import MqttCommander, MqttLink
from f2pipe_api.dead_letters import KafkaDeadLetters
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.servers import PostgresServer, free_port
from f2pipe_shared.kafka import ensure_topics
from f2pipe_shared.settings import KafkaSettings
from tests.integration.apikit import api_conninfo
from tests.integration.certgen_harness import ADMIN_TOKEN, HttpsCertgen, certgen_env
from tests.integration.certgen_harness import start_https as start_certgen

# Not `database`: nothing here depends on the storage engine, so the plain-PostgreSQL pass
# (make test) does not run it again.
pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
# Per operation and generation mode: 15 take ~40 s over every route on 2 cores (30: ~52 s);
# F2PIPE_SCHEMA_EXAMPLES=300 for a deeper search (the two 500s it found were found at 30).
EXAMPLES = int(os.environ.get("F2PIPE_SCHEMA_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Served:
    base_url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> str:
    conninfo = postgres_server.create_database(f"api_schema_{os.getpid()}")
    apply_migrations(conninfo)
    return conninfo


@pytest.fixture(scope="module")
def certgen(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsCertgen]:
    root = tmp_path_factory.mktemp("certgen")
    env = certgen_env(database, root / "ca", root / "issued", CERTGEN_ADMIN_TOKEN=ADMIN_TOKEN)
    server = start_certgen(env, root / "certgen.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def served(database: str, certgen: HttpsCertgen, kafka_bootstrap: str) -> Iterator[Served]:
    token, _ = create_token(database, "schema-admin", Role.admin)
    client = CertgenClient(
        certgen.url, SecretStr(ADMIN_TOKEN), ca_file=str(certgen.ca_file), timeout=10
    )
    kafka = KafkaSettings(kafka_bootstrap_servers=kafka_bootstrap)
    ensure_topics(kafka, {kafka.kafka_deadletter_topic: 1})
    db = PostgresStore(api_conninfo(database))
    # Commands: a client whose broker never answers, so a command runs to its end (stored,
    # audited, then failed: not connected) rather than stopping at 503 commands_unavailable.
    nowhere = MqttLink(HOST, free_port(), ca_file="", cert_file="", key_file="", tls=False)
    app = create_app(
        db=db,
        metrics=ApiMetrics(),
        certgen=client,
        dead_letters=KafkaDeadLetters(kafka, window=100, timeout=10),
        commands=MqttCommander(nowhere, db),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_config=None))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the api stopped while starting"
        assert time.monotonic() < deadline, "the api did not start within 30 s"
        time.sleep(0.05)
    try:
        yield Served(f"http://{HOST}:{port}", {"Authorization": f"Bearer {token}"})
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _document() -> dict[str, Any]:
    """The document the app serves at /openapi.json; generating it needs no database."""
    document: dict[str, Any] = create_app(
        db=PostgresStore("dbname=unused"), metrics=ApiMetrics()
    ).openapi()
    return document


# GET /v1/stream answers 200 with an endless Server-Sent Events stream, which a generated
# request would wait on for ever; without a stream wired it is a 503 (a "server error" here).
# Its parameters, refusals and frames are tested by tests/integration/test_api_stream.py
# (served by uvicorn, real Kafka, read with httpx-sse).
schema = schemathesis.openapi.from_dict(_document()).exclude(path="/v1/stream", method="GET")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_request_the_schema_allows_gets_a_5xx_or_an_undocumented_answer(
    case: Any, served: Served
) -> None:
    case.call_and_validate(base_url=served.base_url, headers=served.headers, checks=CHECKS)
