"""Several instances of the pipeline's stages in one local stack (`DevOptions.instances`).

With N instances, bridge, processor and sink each run N times: `bridge`, `bridge-2`, …, as
an operator scales them (docs/operations.md#scaling-each-service):

- bridges in one MQTT 5 shared subscription (BRIDGE_SHARED_GROUP), each with its own
  certificate and ACL block: the broker makes the CN the client id, so two bridges with one
  certificate would take over each other's session instead of sharing the load. One bridge
  alone subscribes plainly: Mosquitto 2.0 does not save a $share subscription, so after a
  restart of the broker what devices publish before a grouped bridge subscribes again is
  lost, while a plain subscription is kept with the session (docs/operations.md). It names
  the group as its former one (BRIDGE_FORMER_GROUP), so a session left in the group by a
  larger stack drops the group's filters once the plain ones are subscribed;
- processors in one Faust group (the same PROCESSOR_APP_ID), each with its own data directory;
- sinks in one consumer group (the same SINK_GROUP_ID);
- each instance its own /metrics and /healthz port.
"""

from __future__ import annotations

import re

SCALED = ("bridge", "processor", "sink")  # the stages that run N times
MAX_INSTANCES = 9  # per stage: their ports stay inside the stack's block (below base + 200)
SHARED_GROUP = "f2pipe"  # the bridges' $share group
# Instance n (≥ 2) of a stage listens on base + EXTRA_OFFSET + 10 * (n - 2) + the stage's own
# offset (ports.OFFSETS): bridge-2 on base + 101, processor-2 + 102, sink-2 + 103, bridge-3
# + 111, … clear of the fixed offsets below 100.
EXTRA_OFFSET = 100
EXTRA_STEP = 10
_NAME = re.compile(r"^(bridge|processor|sink)-([2-9])$")


def instance_name(stage: str, number: int) -> str:
    """The first instance keeps the stage's name (its port, log and identity as before)."""
    return stage if number == 1 else f"{stage}-{number}"


def parse(name: str) -> tuple[str, int]:
    """(stage, number) of a service name: `processor-2` -> (processor, 2), `api` -> (api, 1)."""
    match = _NAME.match(name)
    return (match[1], int(match[2])) if match else (name, 1)


def names(stage: str, instances: int) -> list[str]:
    """Every instance of ``stage`` (one unless it is scaled)."""
    count = instances if stage in SCALED else 1
    return [instance_name(stage, n) for n in range(1, count + 1)]


def check(instances: int) -> None:
    if not 1 <= instances <= MAX_INSTANCES:
        raise ValueError(f"instances per stage: 1..{MAX_INSTANCES}, not {instances}")


def extra_offsets(instances: int, offsets: dict[str, int]) -> dict[str, int]:
    """Port offsets of the instances beyond the first: `bridge-2` -> 101, …"""
    check(instances)
    return {instance_name(stage, n): EXTRA_OFFSET + EXTRA_STEP * (n - 2) + offsets[stage]
            for n in range(2, instances + 1) for stage in SCALED}  # fmt: skip


def bridge_identity(number: int) -> tuple[str, str]:
    """(file stem in ISSUED_DIR, CN) of a bridge: certgen's bootstrap issues the first's."""
    stem = instance_name("bridge", number)
    return stem, f"svc-{stem}"


def acl_blocks(instances: int) -> str:
    """ACL lines giving bridges 2..N what the ACL gives svc-bridge: read stat/# and tele/#
    (also through $share/<group>/…, which Mosquitto checks as the plain topic)."""
    blocks = []
    for number in range(2, instances + 1):
        cn = bridge_identity(number)[1]
        blocks.append(f"\n# Added by f2pipe dev (instances {instances}): bridge {number}.\n"
                      f"user {cn}\ntopic read stat/#\ntopic read tele/#\n")  # fmt: skip
    return "".join(blocks)


def instance_env(name: str, instances: int, issued_dir: str, data_root: str) -> dict[str, str]:
    """The settings by which instance ``name`` differs from the stage's first instance: the
    bridges in the group when there are several, one alone out of it."""
    stage, number = parse(name)
    env: dict[str, str] = {}
    if stage == "bridge":
        group = "BRIDGE_SHARED_GROUP" if instances > 1 else "BRIDGE_FORMER_GROUP"
        env[group] = SHARED_GROUP
    if number == 1:
        return env
    if stage == "bridge":
        stem = bridge_identity(number)[0]
        env["BRIDGE_CERT_FILE"] = f"{issued_dir}/{stem}.crt"
        env["BRIDGE_KEY_FILE"] = f"{issued_dir}/{stem}.key"
    elif stage == "processor":  # Faust keeps a worker's table state there: one each
        env["PROCESSOR_DATA_DIR"] = f"{data_root}/{name}"
    return env
