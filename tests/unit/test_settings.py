from __future__ import annotations

import pytest

from f2pipe_bridge.settings import BridgeSettings
from f2pipe_shared import settings as s
from f2pipe_simulator.settings import SimulatorSettings
from f2pipe_sink.settings import SinkSettings


def test_defaults_keep_the_original_topic_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KAFKA_RAW_TOPIC", "KAFKA_PROCESSED_TOPIC", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(var, raising=False)
    kafka = s.load(s.KafkaSettings)
    assert kafka.kafka_raw_topic == "raw-iot-data"
    assert kafka.kafka_processed_topic == "processed-iot-data"
    assert kafka.kafka_deadletter_topic == "iot-dead-letter"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SIZE", "1234")
    monkeypatch.setenv("FLUSH_INTERVAL", "0.05")
    sink = s.load(SinkSettings)
    assert sink.batch_size == 1234
    assert sink.flush_interval == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("cls", "variable", "value"),
    [
        (SinkSettings, "BATCH_SIZE", "lots"),
        (SinkSettings, "FLUSH_INTERVAL", "-1"),
        (s.RedisSettings, "REDIS_PORT", "70000"),
        (s.KafkaSettings, "KAFKA_RAW_TOPIC", "raw topic with spaces"),
        (s.PostgresSettings, "POSTGRES_SSLMODE", "sometimes"),
        (s.CaSettings, "DEVICE_EXPIRY", "0"),
        (SimulatorSettings, "PUBLISH_INTERVAL", "soon"),
        (BridgeSettings, "BRIDGE_BATCH_LINGER_MS", "-5"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, cls: type[s.F2Settings], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(s.SettingsError) as info:
        s.load(cls)
    assert str(info.value).startswith(f"invalid settings: {variable}={value!r}: ")


def test_postgres_conninfo_includes_password_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    without = s.load(s.PostgresSettings).conninfo
    assert "host=db.example" in without
    assert "port=6543" in without
    assert "password" not in without
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cret")
    assert "password=s3cret" in s.load(s.PostgresSettings).conninfo


def test_password_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "s3cret")
    assert "s3cret" not in repr(s.load(s.PostgresSettings))


def test_timescale_falls_back_to_postgres_per_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "registry.example")
    monkeypatch.setenv("POSTGRES_DB", "f2")
    monkeypatch.setenv("TIMESCALE_HOST", "tsdb.example")
    monkeypatch.delenv("TIMESCALE_DB", raising=False)
    registry = s.load(s.PostgresSettings)
    telemetry = s.load(s.TimescaleSettings).conninfo(registry)
    assert "host=tsdb.example" in telemetry
    assert "dbname=f2" in telemetry
    monkeypatch.delenv("TIMESCALE_HOST")
    assert s.load(s.TimescaleSettings).conninfo(registry) == registry.conninfo


def test_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache")
    monkeypatch.setenv("REDIS_PORT", "6380")
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    assert s.load(s.RedisSettings).url == "redis://cache:6380/0"


def test_every_service_loads_all_its_groups_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from f2pipe_certgen.settings import Settings as Certgen
    from f2pipe_processor.settings import Settings as Processor
    from f2pipe_sink.settings import Settings as Sink

    monkeypatch.setenv("BATCH_SIZE", "77")
    monkeypatch.setenv("PROCESSOR_APP_ID", "p-1")
    assert Sink.load().sink.batch_size == 77
    assert Processor.load().processor.processor_app_id == "p-1"
    assert Certgen.load().ca.ca_dir == "ca"
    monkeypatch.setenv("REDIS_PORT", "70000")
    with pytest.raises(s.SettingsError, match="REDIS_PORT"):
        Processor.load()


def test_every_settings_group_derives_from_the_one_base() -> None:
    from f2pipe.configdoc import _service_groups

    for cls, _ in [*s.GROUPS, *_service_groups()]:
        assert issubclass(cls, s.F2Settings), cls
