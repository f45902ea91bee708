"""An api change reaches a running processor (`python -m f2pipe processor`, real Kafka,
PostgreSQL and Redis) within 5 s, through the registry's NOTIFY invalidation: a datapoint's
decimals changed, then a pin re-pointed to another template."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from f2pipe.seed import demo_mac
from f2pipe_api.tokens import Role
from f2pipe_devtools.testkit.samples import Sample, Slot, load_fleet, make_sample
from f2pipe_shared.records import Reading
from tests.integration.apikit import Api
from tests.integration.test_processor_worker import (  # noqa: F401 (fixtures used by name)
    TopicReader,
    Worker,
    produce,
    start_worker,
    worker_env,
)

# Not `database`: nothing here depends on the storage engine, so the plain-PostgreSQL pass
# (make test) does not run it again.
pytestmark = pytest.mark.integration

WITHIN_SECONDS = 5.0


class Stream:
    """Sends fresh messages of one device and watches the processed topic for its readings."""

    def __init__(self, env: dict[str, str]) -> None:
        self.raw = env["KAFKA_RAW_TOPIC"]
        self.producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
        self.reader = TopicReader(env["KAFKA_BOOTSTRAP_SERVERS"], env["KAFKA_PROCESSED_TOPIC"])
        self.rng = random.Random(5)

    def send(self, slot: Slot) -> Sample:
        sample = make_sample(slot, int(time.time() * 1e6), self.rng)
        produce(self.producer, self.raw, [sample])
        self.producer.flush(5)
        return sample

    def until(self, slot: Slot, expect: Callable[[Sample], list[Reading]], within: float) -> float:
        """Seconds until a message sent now comes out as `expect` says; fails after `within`."""
        started = time.monotonic()
        sent: list[tuple[Sample, list[Reading]]] = []
        while time.monotonic() - started < within:
            sample = self.send(slot)
            sent.append((sample, expect(sample)))
            self.reader.poll(0.2)
            got = self.reader.readings()
            for _, wanted in sent:
                keys = {(r.timestamp_us, r.device_id, r.datapoint_id): r.value for r in wanted}
                if keys and all(got.get(k) == pytest.approx(v) for k, v in keys.items()):
                    return time.monotonic() - started
        raise AssertionError(f"not within {within} s")

    def close(self) -> None:
        self.reader.close()


def test_api_changes_reach_a_running_processor_within_five_seconds(
    worker_env: dict[str, str],  # noqa: F811 (the fixture imported above)
    start_worker: Callable[[str], Worker],  # noqa: F811
    api: Api,
) -> None:
    fleet = load_fleet(worker_env["CONNINFO"])
    mac = demo_mac(1)
    (env_slot,) = [s for s in fleet if (s.mac, s.connector, s.component) == (mac, "J3", "sensor-1")]
    power = next(s.template for s in fleet if s.template and s.template.key == "power-monitor-v1")
    assert env_slot.template is not None
    temperature = next(dp.id for dp in env_slot.template.datapoints if dp.key == "temperature")
    worker = start_worker("processor")
    stream = Stream(worker_env)
    timings: dict[str, float] = {}
    try:
        # Warm: the location and the template are cached in memory and Redis before a change.
        stream.until(env_slot, lambda s: s.readings, 60)

        # 1. Temperature gets one decimal, not two: the same frame reads ten times larger.
        template = api.http.get("/v1/templates/environmental-sensor-v1",
                                headers=api.as_(Role.viewer)).json()  # fmt: skip
        body = _body(template)
        body["datapoints"][0]["decimals"] = 1
        r = api.http.put("/v1/templates/environmental-sensor-v1", json=body,
                         headers=api.as_(Role.operator))  # fmt: skip
        assert r.status_code == 200, r.text

        def tenfold(sample: Sample) -> list[Reading]:
            return [r._replace(value=r.value * 10) if r.datapoint_id == temperature else r
                    for r in sample.readings]  # fmt: skip

        timings["decimals changed"] = stream.until(env_slot, tenfold, WITHIN_SECONDS)

        # 2. The pin's device is re-pointed to the power monitor's template.
        pin = f"/v1/controllers/{mac}/connectors/J3/pins/sensor-1"
        name = f"f2-{mac}/J3/sensor-1"  # seed-demo's name: the same device, re-pointed
        r = api.http.put(pin, json={"device_name": name, "template": "power-monitor-v1"},
                         headers=api.as_(Role.operator))  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["device"]["id"] == env_slot.device_id
        as_power = Slot(mac, "J3", env_slot.mode, "sensor-1", env_slot.device_id, power)
        timings["pin re-pointed"] = stream.until(as_power, lambda s: s.readings, WITHIN_SECONDS)
    finally:
        stream.close()
    assert all(t < WITHIN_SECONDS for t in timings.values()), (timings, worker.tail())
    assert worker.stop() == 0


def _body(template: dict[str, Any]) -> dict[str, Any]:
    """A template as GET shows it -> the PUT body that keeps it as it is."""
    keep = ("device_type", "name", "description", "frame_format", "verify_crc", "modbus_address",
            "modbus_function", "modbus_register", "modbus_register_count")  # fmt: skip
    body = {k: copy.deepcopy(template[k]) for k in keep}
    body["datapoints"] = [{k: v for k, v in dp.items() if k != "id"}
                          for dp in template["datapoints"]]  # fmt: skip
    return body
