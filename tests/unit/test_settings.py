from __future__ import annotations

import dataclasses
import importlib

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
        (s.PostgresSettings, "POSTGRES_PORT", "0"),
        (s.TimescaleSettings, "TIMESCALE_PORT", "65536"),
        (s.TimescaleSettings, "TIMESCALE_SSLMODE", "sometimes"),
        (s.ObservabilitySettings, "METRICS_PORT", "-1"),
        (s.KafkaSettings, "KAFKA_DEADLETTER_TOPIC", "dead letters"),
        (SinkSettings, "SINK_GROUP_ID", "a/b"),
        (s.KafkaSettings, "KAFKA_RAW_PARTITIONS", "0"),
        (s.KafkaSettings, "KAFKA_RAW_PARTITIONS", "1025"),
        (SimulatorSettings, "SIMULATOR_RECONNECT_MIN", "0"),
        (SimulatorSettings, "SIMULATOR_DRAIN_SECONDS", "-0.5"),
        (SimulatorSettings, "SIMULATOR_DRAIN_SECONDS", "601"),
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


@pytest.mark.parametrize(
    ("module", "default"),
    [
        ("f2pipe_bridge", 9101),
        ("f2pipe_processor", 6066),
        ("f2pipe_sink", 9103),
        ("f2pipe_simulator", 9104),
    ],
)
def test_metrics_port_is_the_service_default_unless_metrics_port_is_set(
    monkeypatch: pytest.MonkeyPatch, module: str, default: int
) -> None:
    settings_cls = importlib.import_module(f"{module}.settings").Settings
    assert issubclass(settings_cls, s.ObservedServiceSettings)
    monkeypatch.delenv("METRICS_PORT", raising=False)
    assert settings_cls.load().metrics_port == default
    monkeypatch.setenv("METRICS_PORT", "0")  # 0: any free port
    assert settings_cls.load().metrics_port == 0
    monkeypatch.setenv("METRICS_PORT", "9999")
    assert settings_cls.load().metrics_port == 9999


def test_metrics_listen_on_loopback_unless_metrics_host_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Outside a container /metrics and /healthz stay on this machine; compose sets 0.0.0.0.
    monkeypatch.delenv("METRICS_HOST", raising=False)
    assert s.load(s.ObservabilitySettings).metrics_host == "127.0.0.1"
    monkeypatch.setenv("METRICS_HOST", "0.0.0.0")
    assert s.load(s.ObservabilitySettings).metrics_host == "0.0.0.0"


def test_the_processor_port_is_its_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from f2pipe_processor.settings import Settings as Processor

    monkeypatch.setenv("METRICS_PORT", "7077")
    assert Processor.load().port == 7077


def test_the_base_groups_come_first_in_load_order() -> None:
    from f2pipe_certgen.settings import Settings as Certgen
    from f2pipe_sink.settings import Settings as Sink

    assert [f.name for f in dataclasses.fields(Certgen)] == ["common", "ca", "postgres", "certgen"]
    assert [f.name for f in dataclasses.fields(Sink)][:2] == ["common", "observability"]


def test_the_bounds_of_optional_fields_apply_to_a_set_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from f2pipe_processor.settings import ProcessorSettings

    monkeypatch.setenv("PROCESSOR_MAX_AGE_DAYS", "0")
    with pytest.raises(s.SettingsError, match="PROCESSOR_MAX_AGE_DAYS"):
        s.load(ProcessorSettings)
    monkeypatch.setenv("SIMULATOR_DRAIN_SECONDS", "0")
    assert s.load(SimulatorSettings).simulator_drain_seconds == 0


def test_every_timescale_variable_has_a_postgres_twin() -> None:
    twins = [
        name.replace("timescale_", "postgres_", 1) for name in s.TimescaleSettings.model_fields
    ]
    assert twins == list(s.PostgresSettings.model_fields)


def test_timescale_takes_each_set_value_and_the_registry_s_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in s.TimescaleSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("POSTGRES_PASSWORD", "registry-secret")
    monkeypatch.setenv("POSTGRES_PORT", "5433")
    monkeypatch.setenv("TIMESCALE_PORT", "6432")
    monkeypatch.setenv("TIMESCALE_SSLMODE", "require")
    monkeypatch.setenv("TIMESCALE_HOST", "")  # empty: as if unset
    registry = s.load(s.PostgresSettings)
    telemetry = s.load(s.TimescaleSettings).resolved(registry)
    assert telemetry.postgres_port == 6432
    assert telemetry.postgres_sslmode == "require"
    assert telemetry.postgres_host == registry.postgres_host
    assert telemetry.postgres_password.get_secret_value() == "registry-secret"
    assert registry.postgres_port == 5433  # the registry's own settings are left as they were
