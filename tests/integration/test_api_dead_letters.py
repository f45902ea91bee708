"""GET /v1/dead-letters against the real Kafka-protocol broker: dead letters produced as the
bridge, the processor and the sink produce them (`DeadLetter.headers()`, keyed by MQTT topic),
listed newest first, filtered, previews bounded, a record that is not a dead letter passed over,
and Kafka unreachable answered 503 without blocking the api."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from f2pipe_api.app import create_app
from f2pipe_api.dead_letters import PREVIEW_BYTES, DeadLetterQuery, KafkaDeadLetters
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.ports import DeadLetterPort
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.servers import KafkaBroker, free_port
from f2pipe_shared.deadletters import DeadLetter, Reason, Stage
from f2pipe_shared.kafka import ensure_topics, producer_config
from f2pipe_shared.settings import KafkaSettings
from tests.conftest import running
from tests.integration.apikit import Api, problem

# Not `database`: nothing here depends on the storage engine, so the plain-PostgreSQL pass
# (make test) does not run it again.
pytestmark = pytest.mark.integration

MAC1, MAC2 = "aabbccddee01", "aabbccddee02"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
URL = "/v1/dead-letters"


@contextmanager
def api_with(migrated: str, reader: DeadLetterPort | None) -> Iterator[Api]:
    """apikit's api, with this dead-letter reader."""
    tokens = {role: create_token(migrated, f"test-{role.value}", role)[0] for role in Role}
    app = create_app(db=PostgresStore(migrated), metrics=ApiMetrics(), dead_letters=reader)
    with TestClient(app) as http:
        yield Api(http, migrated, tokens)


def kafka(bootstrap: str, partitions: int) -> KafkaSettings:
    """Settings naming a new dead-letter topic of its own, created with `partitions`."""
    settings = KafkaSettings(
        kafka_bootstrap_servers=bootstrap, kafka_deadletter_topic=f"dlq-{uuid.uuid4().hex[:8]}"
    )
    assert ensure_topics(settings, {settings.kafka_deadletter_topic: partitions}) != []
    return settings


def produce(settings: KafkaSettings, *records: DeadLetter | tuple[bytes, list[Any]]) -> None:
    """Each dead letter as the stages produce it; a (value, headers) pair as it is."""
    producer = Producer(producer_config(settings))
    for record in records:
        if isinstance(record, DeadLetter):
            value, key = record.original, record.key()
            headers: list[Any] = list(record.headers())
        else:
            (value, headers), key = record, None
        producer.produce(settings.kafka_deadletter_topic, value, key=key, headers=headers)
    assert producer.flush(30) == 0


def letter(minutes: int, stage: Stage, reason: Reason, mac: str | None, **more: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "stage": stage,
        "reason": reason,
        "detail": f"{reason.value} at minute {minutes}",
        "original": b"{}",
        "mqtt_topic": None if mac is None else f"tele/f2-{mac}/sensor-mode/J1/sensor-1",
        "failed_at": T0 + timedelta(minutes=minutes),
    }
    return DeadLetter.model_validate({**fields, **more})


FLEET = (
    letter(0, Stage.bridge, Reason.bad_topic, MAC1, mqtt_topic=f"tele/f2-{MAC1}/nonsense"),
    letter(1, Stage.processor, Reason.unknown_mac, MAC2),
    letter(2, Stage.processor, Reason.bad_hex, MAC1, original=b"A" * 2000),
    letter(3, Stage.bridge, Reason.oversize, MAC1, original=b"\xff" * 300_000),
    letter(4, Stage.sink, Reason.invalid_record, None, source_topic="processed-iot-data"),
)
GARBAGE = (
    (b"not a dead letter", [("dlq.stage", b"nonsense")]),
    (b"\x00\x01", [("dlq.reason", b"\xff\xfe not utf-8")]),
)


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap: str) -> KafkaSettings:
    """A two-partition dead-letter topic holding FLEET and GARBAGE, interleaved."""
    settings = kafka(kafka_bootstrap, partitions=2)
    produce(settings, *FLEET[:2], GARBAGE[0], *FLEET[2:], GARBAGE[1])
    return settings


@pytest.fixture
def api(migrated: str, fleet: KafkaSettings) -> Iterator[Api]:
    with api_with(migrated, KafkaDeadLetters(fleet, window=1000, timeout=20)) as api:
        yield api


def listed(api: Api, query: str = "") -> dict[str, Any]:
    r = api.http.get(f"{URL}{query}", headers=api.as_(Role.viewer))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_lists_every_dead_letter_newest_first_and_passes_over_garbage(api: Api) -> None:
    page = listed(api)
    assert [i["detail"] for i in page["items"]] == [f.detail for f in reversed(FLEET)]
    assert (page["scanned"], page["skipped"], page["complete"]) == (7, 2, True)
    first = page["items"][-1]
    assert first["stage"] == "bridge"
    assert first["reason"] == "bad_topic"
    assert first["mac"] == MAC1
    assert first["mqtt_topic"] == f"tele/f2-{MAC1}/nonsense"
    assert datetime.fromisoformat(first["failed_at"]) == T0
    assert (first["preview_text"], first["size"], first["truncated"]) == ("{}", 2, False)
    sink = page["items"][0]
    assert (sink["mac"], sink["source_topic"]) == (None, "processed-iot-data")
    assert {(i["partition"], i["offset"]) for i in page["items"]}.__len__() == 5


def test_filters_by_controller_reason_and_stage(api: Api) -> None:
    by_mac = listed(api, "?mac=AA:BB:CC:DD:EE:01")["items"]
    assert [i["reason"] for i in by_mac] == ["oversize", "bad_hex", "bad_topic"]
    assert [i["mac"] for i in listed(api, "?reason=unknown_mac")["items"]] == [MAC2]
    assert [i["reason"] for i in listed(api, "?stage=sink")["items"]] == ["invalid_record"]
    both = listed(api, f"?mac={MAC1}&reason=unknown_mac")
    assert both["items"] == []
    assert [i["reason"] for i in listed(api, "?limit=2")["items"]] == ["invalid_record", "oversize"]


def test_a_preview_is_bounded_whatever_the_payload(api: Api) -> None:
    r = api.http.get(f"{URL}?mac={MAC1}", headers=api.as_(Role.viewer))
    assert len(r.content) < 8 * 1024  # 300 kB and 2 kB payloads among them
    oversize, bad_hex, _ = r.json()["items"]
    assert bad_hex["preview_hex"] == "41" * PREVIEW_BYTES
    assert bad_hex["preview_text"] == "A" * PREVIEW_BYTES
    assert (bad_hex["size"], bad_hex["truncated"], bad_hex["sha256"]) == (2000, True, None)
    # The bridge kept only the first KiB of it; the letter says how large it was.
    assert oversize["size"] == 300_000
    assert oversize["sha256"] == FLEET[3].original_sha256
    assert bytes.fromhex(oversize["preview_hex"]) == b"\xff" * PREVIEW_BYTES
    assert oversize["preview_text"] == "\\xff" * PREVIEW_BYTES
    assert oversize["truncated"] is True


def test_bad_filters_are_refused(api: Api) -> None:
    viewer = api.as_(Role.viewer)
    r = api.http.get(f"{URL}?mac=zz-evil", headers=viewer)
    problem(r, 422, "invalid_mac")
    assert "evil" not in r.text
    problem(api.http.get(f"{URL}?reason=nope", headers=viewer), 422, "invalid_request")
    problem(api.http.get(f"{URL}?stage=nope", headers=viewer), 422, "invalid_request")
    problem(api.http.get(f"{URL}?limit=0", headers=viewer), 422, "invalid_request")
    problem(api.http.get(f"{URL}?limit=501", headers=viewer), 422, "invalid_request")
    problem(api.http.get(URL), 401, "missing_token")


def test_only_the_window_of_each_partition_is_read(migrated: str, kafka_bootstrap: str) -> None:
    settings = kafka(kafka_bootstrap, partitions=1)
    for minute in range(5):  # one by one: Tansu's high watermark is right then
        produce(settings, letter(minute, Stage.processor, Reason.bad_hex, MAC1))
    with api_with(migrated, KafkaDeadLetters(settings, window=2, timeout=20)) as api:
        page = listed(api)
        assert [i["detail"] for i in page["items"]] == [
            "bad_hex at minute 4", "bad_hex at minute 3"]  # fmt: skip
        assert (page["scanned"], page["window"], page["complete"]) == (2, 2, True)


def test_an_empty_or_missing_topic_lists_nothing(migrated: str, kafka_bootstrap: str) -> None:
    empty = kafka(kafka_bootstrap, partitions=1)
    missing = KafkaSettings(
        kafka_bootstrap_servers=kafka_bootstrap, kafka_deadletter_topic=f"dlq-{uuid.uuid4().hex}"
    )
    for settings in (empty, missing):
        reader = KafkaDeadLetters(settings, window=100, timeout=20)
        page = reader.scan(DeadLetterQuery())
        assert (page.items, page.scanned, page.complete) == ([], 0, True)


def test_kafka_unreachable_is_503_and_the_api_keeps_answering(migrated: str) -> None:
    nowhere = KafkaSettings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    with api_with(migrated, KafkaDeadLetters(nowhere, window=100, timeout=3)) as api:
        answers: list[Any] = []
        slow = threading.Thread(
            target=lambda: answers.append(api.http.get(URL, headers=api.as_(Role.viewer)))
        )
        started = time.monotonic()
        slow.start()
        time.sleep(0.5)
        # The scan runs in a thread: the event loop answers others meanwhile.
        assert api.http.get("/healthz").status_code == 200
        assert slow.is_alive()
        slow.join(30)
        assert time.monotonic() - started < 10
        body = problem(answers[0], 503, "kafka_unavailable")
        assert answers[0].headers["retry-after"] == "5"
        assert "127.0.0.1" not in body["detail"]


def test_without_kafka_configured_it_is_503_after_the_role_check(migrated: str) -> None:
    with api_with(migrated, None) as api:
        problem(api.http.get(URL, headers=api.as_(Role.viewer)), 503, "kafka_unavailable")
        problem(api.http.get(URL), 401, "missing_token")


def test_a_refused_kafka_login_is_503_naming_the_settings_never_the_password(
    migrated: str, servers_dir: Path
) -> None:
    password = "not-the-password-5c1e"
    for broker in running(lambda: KafkaBroker(servers_dir / "kafka-api-auth", authentication=True)):
        locked = KafkaSettings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username="svc-api",
            kafka_sasl_password=password,
        )
        with api_with(migrated, KafkaDeadLetters(locked, window=100, timeout=5)) as api:
            r = api.http.get(URL, headers=api.as_(Role.viewer))
            body = problem(r, 503, "kafka_unavailable")
            assert "KAFKA_SASL" in body["detail"]
            assert password not in r.text
