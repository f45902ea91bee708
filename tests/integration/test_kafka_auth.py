"""A service whose Kafka login is refused says which settings to check, and stops.

Tansu with `--authentication` and no user (servers/kafka.py) refuses every SASL/SCRAM login,
as Apache Kafka refuses a wrong password.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from f2pipe_devtools.env import kafka_env, service_env
from f2pipe_devtools.servers import KafkaBroker
from f2pipe_shared.kafka import KafkaAuthError, ensure_topics
from f2pipe_shared.settings import KafkaSettings, SettingsError, load
from tests.conftest import running

PASSWORD = "not-the-password-7f3a"


@pytest.fixture(scope="module")
def locked_kafka(servers_dir: Path) -> Iterator[KafkaBroker]:
    yield from running(lambda: KafkaBroker(servers_dir / "kafka-auth", authentication=True))


def sasl(broker: KafkaBroker) -> dict[str, str]:
    return {
        **kafka_env(broker.bootstrap_servers),
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "svc-sink",
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }


def test_refused_login_raises_an_error_naming_the_settings(locked_kafka: KafkaBroker) -> None:
    settings = KafkaSettings(
        kafka_bootstrap_servers=locked_kafka.bootstrap_servers,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="svc-sink",
        kafka_sasl_password=PASSWORD,
    )
    started = time.monotonic()
    with pytest.raises(KafkaAuthError) as refused:
        ensure_topics(settings, {"auth-test": 1}, timeout=30)
    message = str(refused.value)
    assert "KAFKA_SASL_USERNAME='svc-sink'" in message
    assert "KAFKA_SASL_PASSWORD" in message
    assert PASSWORD not in message
    assert time.monotonic() - started < 15, "a refused login ends the wait, not the timeout"


@pytest.mark.parametrize("service", ["bridge", "processor", "sink"])
def test_service_with_a_wrong_password_stops_with_a_clear_error(
    locked_kafka: KafkaBroker, service: str, tmp_path: Path
) -> None:
    env = service_env(
        sasl(locked_kafka),
        METRICS_PORT="0",
        LOG_FORMAT="text",
        PROCESSOR_DATA_DIR=str(tmp_path),
        POSTGRES_PORT="1",  # never reached: Kafka comes first
    )
    result = subprocess.run(
        [sys.executable, "-m", "f2pipe", service],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "Kafka refused the login of KAFKA_SASL_USERNAME='svc-sink'" in output
    assert "check KAFKA_SASL_PASSWORD" in output
    assert PASSWORD not in output


def test_sasl_without_credentials_is_a_settings_error_naming_them() -> None:
    with pytest.raises(SettingsError) as bad:
        load(KafkaSettings, kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc-bridge")
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in (
        str(bad.value)
    )


def test_a_password_never_appears_in_a_settings_error() -> None:
    with pytest.raises(SettingsError) as bad:
        load(KafkaSettings, kafka_sasl_password=["x"], kafka_sasl_username="u")  # not a string
    assert "KAFKA_SASL_PASSWORD:" in str(bad.value)
    assert "'x'" not in str(bad.value)
