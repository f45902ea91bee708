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
}

PROBLEMS = Problems(TYPE_PREFIX, REASONS)
