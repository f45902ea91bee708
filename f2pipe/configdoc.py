"""docs/configuration.md, generated from the settings classes so the two never disagree."""

from __future__ import annotations

from enum import Enum

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from f2pipe_shared.settings import GROUPS

HEADER = """# Configuration

Every f2pipe service reads its settings once at start-up from environment variables (the
names of the original deployment are kept). A bad value stops the service with a message that
names the variable, for example:

    f2pipe sink: invalid settings: BATCH_SIZE='lots': Input should be a valid integer

This file is generated from the settings classes (`shared/f2pipe_shared/settings.py` and each
service's `settings.py`) by `f2pipe config-doc`; a test fails when the two disagree.
"""


def _default(field: FieldInfo) -> str:
    value = field.default
    if isinstance(value, SecretStr):
        return "(empty)" if not value.get_secret_value() else "(set)"
    if value is None:
        return "(unset)"
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`"


def _service_groups() -> list[tuple[type[BaseSettings], str]]:
    """Settings that only one service reads live in its package, beside the code using them."""
    from f2pipe.dbroles import DbRolesSettings
    from f2pipe_api.settings import ApiSettings
    from f2pipe_bridge.settings import BridgeSettings
    from f2pipe_certgen.settings import CertgenSettings
    from f2pipe_processor.settings import ProcessorSettings
    from f2pipe_simulator.settings import SimulatorSettings
    from f2pipe_sink.settings import SinkSettings

    return [
        (BridgeSettings, "bridge"),
        (CertgenSettings, "certgen"),
        (ProcessorSettings, "processor"),
        (SinkSettings, "sink"),
        (SimulatorSettings, "simulator"),
        (ApiSettings, "api"),
        (DbRolesSettings, "db-roles (each service reads its own as POSTGRES_USER/_PASSWORD)"),
    ]


def render() -> str:
    parts = [HEADER]
    for cls, readers in [*GROUPS, *_service_groups()]:
        title = cls.__name__.removesuffix("Settings")
        parts.append(f"\n## {title}\n\nRead by: {readers}.\n")
        parts.append("| variable | default | meaning |\n| --- | --- | --- |")
        for name, field in cls.model_fields.items():
            parts.append(f"| `{name.upper()}` | {_default(field)} | {field.description or ''} |")
    return "\n".join(parts) + "\n"
