"""docker-compose.yml, .env.example, Prometheus and Grafana files: checked without Docker.

- The compose file validates with the Compose tool found here (`docker compose` or Debian's
  `docker-compose`), against .env.example, and refuses to start without its secrets.
- Its structure: a healthcheck on every long-running service, start-up order by health and
  completed init jobs, non-root users, named volumes, no secret with a value.
- Every setting the services read is in .env.example and in the compose file; nothing in
  either is unknown to the services, except the third-party names listed here.
- Every metric a Prometheus expression in the dashboards names is exported by a service.

Dashboards' SQL runs against a migrated database in tests/integration/test_compose_sql.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "f2pipe.yml"

# The containers built from our Dockerfile.
F2PIPE_INIT_JOBS = {"migrate", "ca-init"}
F2PIPE_SERVERS = {"certgen", "api", "bridge", "processor", "sink", "simulator"}
F2PIPE_SERVICES = F2PIPE_INIT_JOBS | F2PIPE_SERVERS
# Third-party init job: copies the broker's key pair to Mosquitto's uid (runs as root,
# without a network).
OTHER_INIT_JOBS = {"broker-certs", "kafka-certs"}
INIT_JOBS = F2PIPE_INIT_JOBS | OTHER_INIT_JOBS

# Where each service serves /metrics and /healthz; certgen and the api on their HTTPS port.
METRICS_PORTS = {"bridge": 9101, "processor": 6066, "sink": 9103, "simulator": 9104}
HTTPS_PORTS = {"certgen": 8080, "api": 8090}

# Variables in .env.example and docker-compose.yml that no f2pipe service reads: Compose's
# own, the published ports, and the third-party containers' settings.
COMPOSE_ONLY = {
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "F2PIPE_IMAGE",
    "DEMO_CONTROLLERS",
    "PUBLISH_MQTT_PORT",
    "PUBLISH_CERTGEN_PORT",
    "PUBLISH_API_PORT",
    "PUBLISH_GRAFANA_PORT",
    "PUBLISH_PROMETHEUS_PORT",
    "PUBLISH_POSTGRES_PORT",
    "GRAFANA_ADMIN_USER",
    "GRAFANA_ADMIN_PASSWORD",
    "GRAFANA_DB_USER",
    "GRAFANA_DB_PASSWORD",
    "PROMETHEUS_RETENTION",
    "CRL_POLL_SECONDS",
    "KAFKA_BRIDGE_PASSWORD",
    "KAFKA_PROCESSOR_PASSWORD",
    "KAFKA_SINK_PASSWORD",
    "KAFKA_API_PASSWORD",
}
SECRETS = {
    "POSTGRES_PASSWORD",
    "TIMESCALE_PASSWORD",
    "REDIS_PASSWORD",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_BRIDGE_PASSWORD",
    "KAFKA_PROCESSOR_PASSWORD",
    "KAFKA_SINK_PASSWORD",
    "POSTGRES_SINK_PASSWORD",
    "POSTGRES_PROCESSOR_PASSWORD",
    "POSTGRES_CERTGEN_PASSWORD",
    "POSTGRES_SIMULATOR_PASSWORD",
    "POSTGRES_API_PASSWORD",
    "KAFKA_API_PASSWORD",
    "CERTGEN_ADMIN_TOKEN",
    "API_CERTGEN_ADMIN_TOKEN",
    "GRAFANA_ADMIN_PASSWORD",
    "GRAFANA_DB_PASSWORD",
}
PLACEHOLDER = "change-me"
# .env.example values that differ from the service's default: the compose network's names.
COMPOSE_VALUES = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "POSTGRES_HOST": "timescaledb",
    "REDIS_HOST": "redis",
    "MQTT_BROKER_HOST": "mqtt_broker",
    "CERTGEN_API_HOST": "certgen",
    "BROKER_SANS": "localhost,kafka",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SIMULATOR_CERTGEN_URL": "https://certgen:8080",
}
# Prometheus' own series, not a service's.
PROMETHEUS_BUILTIN = {"up"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "by", "without", "le",
    "histogram_quantile", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "delta", "deriv",
}  # fmt: skip

_INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_ENV_LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


# --- what the services read --------------------------------------------------------------


def settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of every service: the shared groups and the services' own."""
    from f2pipe.configdoc import _service_groups
    from f2pipe_shared.settings import GROUPS

    return [cls for cls, _ in [*GROUPS, *_service_groups()]]


@cache
def settings_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for cls in settings_classes():
        for name, field in cls.model_fields.items():
            defaults[name.upper()] = (cls, name, field.default)
    return defaults


def known_settings() -> set[str]:
    return set(settings_defaults())


# --- the files ------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result = compose()["services"]
    assert isinstance(result, dict)
    return result


def environment(service: str) -> dict[str, Any]:
    env = services()[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return env


@cache
def env_example() -> dict[str, tuple[bool, str]]:
    """NAME -> (active, value); `#NAME=value` lines are inactive (unset or fixed settings)."""
    result: dict[str, tuple[bool, str]] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match is None:
            continue
        name = match[2]
        assert name not in result, f".env.example lists {name} twice"
        value = match[3].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[name] = (match[1] == "", value)
    return result


def interpolations() -> Iterator[tuple[str, str | None, str | None]]:
    """(NAME, operator, default) of every ${...} in docker-compose.yml."""
    text = COMPOSE_FILE.read_text(encoding="utf-8").replace("$$", "")
    for match in _INTERPOLATION.finditer(text):
        yield match[1], match[2], match[3]


def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no Grafana dashboards"
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in files}


def prometheus_expressions() -> Iterator[tuple[str, str]]:
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                if "expr" in target:
                    yield f"{name}: {panel['title']}", target["expr"]


# --- the compose file validates ------------------------------------------------------------


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def run_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        message = "neither `docker compose` nor `docker-compose` is installed (make setup)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    # A clean environment: only the env file may supply variables.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False, timeout=60,
    )  # fmt: skip


def test_compose_file_validates_with_env_example() -> None:
    result = run_compose("--profile", "demo", "config", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == set(services())
    # What Compose made of the settings: exactly .env.example's values.
    env = rendered["services"]["sink"]["environment"]
    assert env["BATCH_SIZE"] == env_example()["BATCH_SIZE"][1]
    assert env["POSTGRES_PASSWORD"] == PLACEHOLDER
    assert rendered["services"]["certgen"]["environment"]["CA_CN"] == "f2pipe CA"


def test_compose_file_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = run_compose("config", env_file=empty)
    assert result.returncode != 0
    assert re.search(r"(POSTGRES_PASSWORD|CERTGEN_ADMIN_TOKEN|GRAFANA_\w+PASSWORD)", result.stderr)


def test_the_simulator_runs_only_with_the_demo_profile() -> None:
    # Structural: docker-compose 1.29's `config --services` ignores profiles.
    assert services()["simulator"]["profiles"] == ["demo"]
    assert env_example()["COMPOSE_PROFILES"] == (True, "demo")
    others = [name for name, service in services().items() if name != "simulator"]
    assert all("profiles" not in services()[name] for name in others)


# --- structure -------------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name, service in services().items():
        if name in INIT_JOBS:
            assert service.get("restart") == "no", f"{name}: an init job must not restart"
            assert "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert service.get("restart") == "unless-stopped", name


def test_f2pipe_healthchecks_ask_each_service_s_healthz_on_its_port() -> None:
    for name in F2PIPE_SERVERS:
        port = METRICS_PORTS.get(name) or HTTPS_PORTS[name]
        test = " ".join(services()[name]["healthcheck"]["test"])
        scheme = "https" if name in HTTPS_PORTS else "http"  # they serve HTTPS only
        assert f"{scheme}://127.0.0.1:{port}/healthz" in test, name
        assert "curl" not in test, f"{name}: the image has python only"
        assert "wget" not in test, f"{name}: the image has python only"
        if name in METRICS_PORTS:
            assert environment(name)["METRICS_PORT"] == str(port), name


def test_start_up_order_waits_for_health_and_completed_init_jobs() -> None:
    every = services()
    for name, service in every.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use depends_on with conditions"
        for dependency, spec in depends.items():
            assert dependency in every, f"{name} depends on unknown {dependency}"
            condition = spec.get("condition")
            if dependency in INIT_JOBS:
                assert condition == "service_completed_successfully", (name, dependency)
            else:
                assert condition == "service_healthy", (name, dependency)
                assert "healthcheck" in every[dependency], dependency
    # No cycles: a topological order exists.
    order: list[str] = []
    pending = dict.fromkeys(every)
    while pending:
        ready = [n for n in pending if set(every[n].get("depends_on", {})) <= set(order)]
        assert ready, f"depends_on has a cycle among {sorted(pending)}"
        for n in ready:
            order.append(n)
            del pending[n]
    # The order the issue asks for.
    position = {n: i for i, n in enumerate(order)}
    assert position["timescaledb"] < position["migrate"] < position["ca-init"]
    assert position["ca-init"] < position["broker-certs"] < position["mqtt_broker"]
    assert position["ca-init"] < position["certgen"] < position["simulator"]
    for consumer in ("bridge", "processor", "sink"):
        assert "kafka" in every[consumer]["depends_on"], consumer
    assert "migrate" in every["processor"]["depends_on"]
    assert "migrate" in every["sink"]["depends_on"]


def test_the_simulator_starts_after_a_subscribed_bridge() -> None:
    # On a first start the bridge's MQTT session does not exist until it subscribed: what the
    # simulator published before was dropped. The bridge's /healthz is 200 only once the
    # broker acknowledged its subscriptions (tests/unit/test_bridge.py).
    every = services()
    assert every["simulator"]["depends_on"]["bridge"] == {"condition": "service_healthy"}
    test = " ".join(every["bridge"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{METRICS_PORTS['bridge']}/healthz" in test
    assert "simulator" not in every["bridge"].get("depends_on", {})


def test_init_jobs_run_the_bootstrap_and_the_migrations() -> None:
    assert services()["ca-init"]["command"] == ["certgen", "--bootstrap-only"]
    migrate = " ".join(services()["migrate"]["command"])
    # The image's f2pipe package ships the migrations (tests/integration/test_image.py).
    assert migrate.startswith("f2pipe migrate && ")
    assert "f2pipe seed-demo" in migrate


def test_our_services_run_from_one_image_as_a_non_root_user() -> None:
    images = set()
    for name in F2PIPE_SERVICES:
        service = services()[name]
        images.add((service["image"], json.dumps(service["build"], sort_keys=True)))
        assert service["user"] == "10001:10001", name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        command = service.get("command")
        assert command, f"{name}: one command per service"
    assert len(images) == 1
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["f2pipe"]' in dockerfile
    assert "USER 10001:10001" in dockerfile
    assert re.search(r"^FROM .* AS build$", dockerfile, re.MULTILINE)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    for name, service in services().items():
        user = str(service.get("user", ""))
        if name in OTHER_INIT_JOBS:
            assert service.get("network_mode") == "none", name
            continue
        assert not user.startswith("0"), f"{name} runs as root"


def test_the_broker_can_read_its_key_but_never_the_ca_key() -> None:
    broker = services()["mqtt_broker"]
    assert broker["user"] == "1883:1883"
    volumes = broker["volumes"]
    assert "ca:/mosquitto/ca:ro" in volumes
    assert "broker-certs:/mosquitto/certs:ro" in volumes
    assert "./services/mqtt_broker/f2pipe_mqtt_broker:/mosquitto/config:ro" in volumes
    assert broker["command"][:2] == ["sh", "/mosquitto/config/run-broker.sh"]
    assert broker["stop_grace_period"] == "30s"
    # The CA key belongs to uid 10001 with mode 0600: not 1883, so the broker cannot read it.
    assert "uid 10001" in DOCKERFILE.read_text() or "--uid 10001" in DOCKERFILE.read_text()
    copy = " ".join(services()["broker-certs"]["command"])
    assert "chown 1883:1883" in copy
    assert "chmod 0600 broker.key.new" in copy
    # Mosquitto's configuration names exactly the paths the volumes provide.
    conf = (ROOT / "services" / "mqtt_broker" / "f2pipe_mqtt_broker" / "mosquitto.conf").read_text()
    for path in ("/mosquitto/ca/ca.crt", "/mosquitto/ca/crl.pem", "/mosquitto/certs/broker.key",
                 "/mosquitto/data/", "/mosquitto/config/acl"):  # fmt: skip
        assert path in conf, path


def test_the_broker_saves_often_queues_qos0_and_logs_at_once() -> None:
    # docs/operations.md states the crash window and the QoS 0 promise from these values; the
    # test harness and `f2pipe dev` run the same (f2pipe_devtools.servers.mosquitto).
    from f2pipe_devtools.servers.mosquitto import PRODUCTION_OPTIONS

    conf = (ROOT / "services" / "mqtt_broker" / "f2pipe_mqtt_broker" / "mosquitto.conf").read_text()
    options = dict(
        line.split(" ", 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert options["persistence"] == "true"
    assert options["autosave_interval"] == "5"
    assert "autosave_on_changes" not in options  # the interval is seconds, not changes
    assert options["queue_qos0_messages"] == "true"
    assert options["log_dest"] == "stderr"  # stdout is block-buffered: logs only at exit
    assert {option: options[option] for option in PRODUCTION_OPTIONS} == PRODUCTION_OPTIONS


def test_named_volumes_hold_the_state() -> None:
    declared = set(compose()["volumes"])
    assert {"ca", "issued", "timescaledb-data", "kafka-data", "mosquitto-data"} <= declared
    used = set()
    for service in services().values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, source
                used.add(source)
    assert used == declared


def test_no_secret_has_a_value_in_the_compose_file() -> None:
    for name, service in services().items():
        for variable, value in (service.get("environment") or {}).items():
            if variable in SECRETS or variable.endswith(("PASSWORD", "TOKEN", "SECRET")):
                assert value is None or re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), (
                    f"{name}: {variable} must come from .env, without a default"
                )
    for variable, operator, default in interpolations():
        if variable in SECRETS:
            assert operator != ":-" or not default, f"{variable} has a default"


def test_env_example_secrets_are_placeholders() -> None:
    entries = env_example()
    for name in SECRETS:
        assert name in entries, name
        active, value = entries[name]
        assert not active or value == PLACEHOLDER, f"{name} in .env.example looks real"
    for name in entries:
        if name.endswith(("PASSWORD", "TOKEN", "SECRET")):
            assert name in SECRETS, name


# --- settings: .env.example and the compose file agree with the services ----------------


def test_every_setting_is_in_env_example() -> None:
    missing = known_settings() - set(env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_has_nothing_unknown() -> None:
    unknown = set(env_example()) - known_settings() - COMPOSE_ONLY
    assert not unknown, f".env.example lists what no service reads: {sorted(unknown)}"


def test_env_example_values_are_the_services_defaults() -> None:
    for name, (active, value) in env_example().items():
        if name not in settings_defaults():
            continue
        cls, field, default = settings_defaults()[name]
        if name in COMPOSE_VALUES:
            assert (active, value) == (True, COMPOSE_VALUES[name]), name
            continue
        if default is None or hasattr(default, "get_secret_value"):
            assert not active or name in SECRETS, f"{name} is unset by default: comment it out"
            continue
        if not active:  # fixed in docker-compose.yml
            continue
        parsed = getattr(cls.model_validate({field: value}), field)
        assert parsed == default, f".env.example {name}={value!r}, the default is {default!r}"


def test_every_setting_is_passed_to_the_f2pipe_containers() -> None:
    anchor = compose()["x-f2pipe-env"]
    passed = set(anchor)
    for name in F2PIPE_SERVICES:
        env = environment(name)
        assert set(anchor) <= set(env), f"{name} does not take the common settings"
        passed |= set(env)
    missing = known_settings() - passed
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)}"
    unknown = passed - known_settings()
    assert not unknown, f"docker-compose.yml passes what no service reads: {sorted(unknown)}"


def test_compose_defaults_match_env_example() -> None:
    entries = env_example()
    seen = set()
    for variable, operator, default in interpolations():
        seen.add(variable)
        assert variable in known_settings() | COMPOSE_ONLY, f"${{{variable}}} is unknown"
        assert variable in entries, f"${{{variable}}} is not in .env.example"
        active, value = entries[variable]
        if operator == ":-" and active:
            assert default == value, f"{variable}: compose {default!r}, .env.example {value!r}"
    # Every compose-only variable of .env.example is used by the compose file.
    assert COMPOSE_ONLY - {"COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"} <= seen


def test_unset_settings_pass_through_only_when_set() -> None:
    # A null value passes the variable on only if .env or the shell sets it: an empty string
    # would fail validation (ports) or mean something else than unset.
    anchor = compose()["x-f2pipe-env"]
    for name, value in anchor.items():
        _, _, default = settings_defaults()[name]
        if default is None:
            # ~ (pass through), or a value: never ${X:-} or ${X}, which pass "" when unset.
            assert value is None or not re.search(r"\$\{[A-Z0-9_]+(:?-)?\}", value), name


# --- Prometheus and Grafana ----------------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every sample name the services' /metrics can show (each service's own registry)."""
    from f2pipe_bridge.metrics import BridgeMetrics
    from f2pipe_certgen.metrics import CertgenMetrics
    from f2pipe_processor.metrics import ProcessorMetrics
    from f2pipe_simulator.metrics import SimulatorMetrics
    from f2pipe_sink.metrics import SinkMetrics

    registries = [
        m().registry
        for m in (CertgenMetrics, SinkMetrics, BridgeMetrics, ProcessorMetrics, SimulatorMetrics)
    ]
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            for sample in family.samples:
                names.add(sample.name)
            if family.type == "histogram":
                names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
            if family.type == "counter":
                names.add(f"{family.name}_total")
    return names


def promql_metric_names(expression: str) -> set[str]:
    text = re.sub(r'"[^"]*"', "", expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match[0] in PROMQL_WORDS:
            continue
        names.add(match[0])
    return names


def test_promql_name_extraction() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert promql_metric_names("sum(b) * 60 > 0") == {"b"}


def test_every_dashboard_metric_is_exported_by_a_service() -> None:
    exported = exported_metric_names() | PROMETHEUS_BUILTIN
    expressions = list(prometheus_expressions())
    assert len(expressions) >= 10
    used = set()
    for where, expression in expressions:
        names = promql_metric_names(expression)
        assert names, f"{where}: no metric in {expression!r}"
        unknown = names - exported
        assert not unknown, f"{where}: {sorted(unknown)} not exported by any service"
        used |= names
    # The pipeline dashboard covers throughput, lag, dead letters and enrolments.
    for needed in ("f2pipe_bridge_received_total", "f2pipe_sink_consumer_lag",
                   "f2pipe_processor_dead_letters_total", "certgen_enrolments_total"):  # fmt: skip
        assert needed in used, needed


def test_every_service_serving_metrics_listens_on_the_compose_network() -> None:
    # The services' default is 127.0.0.1, which Prometheus (another container) cannot reach.
    for name in METRICS_PORTS:
        assert environment(name)["METRICS_HOST"] == "0.0.0.0", name
    # Fixed, not taken from .env: a loopback METRICS_HOST there would blind Prometheus.
    assert compose()["x-f2pipe-env"]["METRICS_HOST"] == "0.0.0.0"


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    for name in F2PIPE_SERVERS:
        port = METRICS_PORTS.get(name) or HTTPS_PORTS[name]
        assert targets.get(name) == [f"{name}:{port}"], name
    prometheus = services()["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    # certgen's and the api's /metrics are HTTPS: checked against ca.crt from the trust
    # volume, by the service's name.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    for name in HTTPS_PORTS:
        job = next(job for job in config["scrape_configs"] if job["job_name"] == name)
        assert job["scheme"] == "https", name
        assert job["tls_config"]["server_name"] == name
        assert mounts.get(str(Path(job["tls_config"]["ca_file"]).parent)) == "trust", name
    assert "kafka-certs" in prometheus["depends_on"]  # the job that fills the trust volume


def test_dashboards_use_the_provisioned_datasources_and_defined_variables() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    uids = {ds["uid"]: ds["type"] for ds in provisioned["datasources"]}
    assert set(uids.values()) == {"grafana-postgresql-datasource", "prometheus"}
    titles = set()
    for name, board in dashboards().items():
        assert board["uid"], name
        assert board["title"] not in titles, name
        titles.add(board["title"])
        variables = {v["name"] for v in board["templating"]["list"]}
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        texts = [v["query"] for v in board["templating"]["list"]]
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == panel["datasource"]["uid"]
                texts.append(target.get("rawSql") or target.get("expr"))
        for text in texts:
            for ref in re.findall(r"\$\{?([A-Za-z_]\w*)", text):
                if not ref.startswith("__"):
                    assert ref in variables, f"{name}: ${ref} is not a variable"
    # The sensor dashboard reads names and units from the label views.
    readings = json.dumps(dashboards()["f2pipe-readings.json"])
    assert "telemetry.readings_labeled" in readings
    assert "unit" in readings
    assert "telemetry.events_labeled" in json.dumps(dashboards()["f2pipe-events.json"])
    # Grafana's home dashboard exists.
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).name).is_file()


def test_the_image_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[[line.strip() for line in ignore].index("**")] == "**"  # deny by default
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = []
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), source
        assert path in included or path.split("/")[0] in included, f"{source} is excluded"
    # Never secrets or local state in the context.
    for private in (".env", "ca", "issued", ".venv", ".dev"):
        assert private not in included, private
    for workspace_member in ("shared", "services/certgen", "services/sink"):
        assert f"COPY {workspace_member}/pyproject.toml" in DOCKERFILE.read_text()


# --- Kafka: one user per service, ACLs, TLS ----------------------------------------------

RUN_KAFKA = DEPLOY / "kafka" / "run-kafka.sh"
KAFKA_USERS = {
    "bridge": "svc-bridge",
    "processor": "svc-processor",
    "sink": "svc-sink",
    "api": "svc-api",
}


def kafka_acls() -> list[tuple[str, set[str], str]]:
    """(principal, operations, resource) of every `acl` line in run-kafka.sh."""
    acls = []
    for line in RUN_KAFKA.read_text().splitlines():
        if not line.startswith("acl svc-"):
            continue
        words = line.split()
        operations = {words[i + 1] for i, w in enumerate(words) if w == "--operation"}
        resource = next(
            words[i + 1].strip('"') for i, w in enumerate(words) if w in ("--topic", "--group")
        )
        acls.append((words[1], operations, resource))
    return acls


def test_each_kafka_client_logs_in_as_its_own_user_over_tls() -> None:
    common = compose()["x-f2pipe-env"]
    assert common["KAFKA_SECURITY_PROTOCOL"].startswith("${KAFKA_SECURITY_PROTOCOL:-SASL_SSL}")
    for service, user in KAFKA_USERS.items():
        env = environment(service)
        assert env["KAFKA_SASL_USERNAME"] == user
        password = f"KAFKA_{service.upper()}_PASSWORD"
        assert env["KAFKA_SASL_PASSWORD"].startswith(f"${{{password}:?"), service
        assert environment("kafka")[password] == env["KAFKA_SASL_PASSWORD"]
        ca_file = env["KAFKA_SSL_CA_FILE"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services()[service]["volumes"]}
        assert mounts.get(str(Path(ca_file).parent)) == "trust", service
    # The one listener other containers reach needs SASL over TLS.
    kafka = environment("kafka")
    listeners = dict(item.split(":", 1) for item in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    for name, address in listeners.items():
        assert protocols[name] == "SASL_SSL" or address.startswith("//127.0.0.1:"), name
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert "kafka" in compose()["x-f2pipe-env"]["BROKER_SANS"]  # the name clients verify


def test_only_the_bridge_writes_the_raw_topic() -> None:
    acls = kafka_acls()
    writers = {who for who, ops, res in acls if res == "$RAW" and ops & {"Write", "All"}}
    assert writers == {"svc-bridge"}
    readers = {who for who, ops, res in acls if res == "$RAW" and ops & {"Read", "All"}}
    assert readers == {"svc-processor"}
    processed = {who for who, ops, res in acls if res == "$PROCESSED" and ops & {"Write", "All"}}
    assert processed == {"svc-processor"}
    assert {who for who, _, _ in acls} == set(KAFKA_USERS.values())
    # The api only reads dead letters and (its live stream) processed: no write anywhere.
    api = [(ops, res) for who, ops, res in acls if who == "svc-api"]
    assert all(not ops & {"Write", "All", "Alter", "Delete"} for ops, _ in api)
    assert {res for ops, res in api if "Read" in ops} == {"$DEAD", "$PROCESSED"}
    # It joins no group: the group ids it names get Describe only, never Read.
    assert {res for ops, res in api if res.startswith("f2pipe-api")} == {
        "f2pipe-api-dead-letters",
        "f2pipe-api-stream",
    }


def test_topics_exist_before_any_client_and_are_never_auto_created() -> None:
    assert environment("kafka")["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    script = RUN_KAFKA.read_text()
    for topic in ("$RAW", "$PROCESSED", "$DEAD"):
        assert f'topic "{topic}"' in script
