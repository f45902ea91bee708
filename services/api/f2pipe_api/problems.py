"""RFC 9457 problem details: the api's catalogue of reasons over `f2pipe_shared.problems`
(the module certgen uses too). docs/api.md lists every reason."""

from __future__ import annotations

from collections.abc import Mapping

from f2pipe_shared.problems import COMMON_REASONS, Problems, Reason

TYPE_PREFIX = "urn:f2pipe:api:problem:"

REASONS: Mapping[str, Reason] = {
    **COMMON_REASONS,
    "missing_token": Reason(401, "A bearer token is required"),
    "wrong_token": Reason(401, "The bearer token is not valid"),
    "expired_token": Reason(401, "The bearer token has expired"),
    "revoked_token": Reason(401, "The bearer token has been revoked"),
    "forbidden": Reason(403, "The token's role may not do this"),
    "unknown_mac": Reason(404, "No controller is registered with this MAC"),
    "unknown_token": Reason(404, "No token with this name"),
    "mac_taken": Reason(409, "A controller with this MAC exists"),
    "name_taken": Reason(409, "A token with this name exists"),
    # The registry (device_types.py, templates.py, layout.py, decode.py).
    "unknown_device_type": Reason(404, "No device type with this key"),
    "unknown_template": Reason(404, "No template with this key"),
    "unknown_connector": Reason(404, "The controller has no such connector"),
    "unknown_pin": Reason(404, "Nothing sits on this pin"),
    "key_taken": Reason(409, "A device type or template with this key exists"),
    "in_use": Reason(409, "Other registry rows refer to it"),
    "conflict": Reason(409, "It would duplicate a registry row"),
    "mode_conflict": Reason(409, "The connector has pins of its current mode"),
    "unknown_reference": Reason(
        422, "The body names a device type or template that does not exist"
    ),
    "bad_datapoint": Reason(422, "A datapoint's decoding is not valid"),
    "frame_overflow": Reason(422, "A datapoint does not fit the frame"),
    "form_mismatch": Reason(422, "Frame and field datapoints do not match the template or type"),
    "wrong_mode": Reason(422, "The device type's mode does not match"),
    "wrong_component": Reason(422, "The device type does not answer to this component"),
    "no_frame": Reason(422, "The template decodes no frame"),
    "constraint_violation": Reason(422, "The registry refused the change"),
    # Certificates (certificates.py, through certgen) and dead letters (dead_letters.py).
    "unknown_serial": Reason(404, "The controller has no certificate with this serial"),
    "already_revoked": Reason(409, "The certificate is already revoked"),
    "certgen_unavailable": Reason(503, "certgen's admin API is not reachable"),
    "kafka_unavailable": Reason(503, "Kafka is not reachable"),
    # The live stream (stream.py).
    "stream_unavailable": Reason(
        503, "The api streams nothing (no Kafka) or has API_STREAM_MAX_CLIENTS streams open"
    ),
    # Bulk import (bulk_routes.py); each bad row's own reason is in the answer's `errors`.
    "import_invalid": Reason(422, "The import file has bad rows; nothing was changed"),
    "unsupported_media_type": Reason(415, "The body's Content-Type is not one this route reads"),
    # Commands (commands.py).
    "bad_command": Reason(422, "The command does not fit its component"),
    "unknown_command": Reason(404, "No command with this id"),
    "commands_unavailable": Reason(503, "The api has no MQTT identity for commands"),
}

PROBLEMS = Problems(TYPE_PREFIX, REASONS)
