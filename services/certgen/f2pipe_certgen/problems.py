"""RFC 9457 problem details: every error certgen answers is `application/problem+json`.

certgen's catalogue of reasons over the shared machinery (`f2pipe_shared.problems`, which the
api service uses too): the standard members (type, title, status, detail) and a
machine-readable `reason` a device developer can branch on; docs/certgen.md lists every
reason and what to do about it. FastAPI's own errors (validation 422, unknown route 404,
wrong method 405) are rewritten into the same shape, so a client parses one format whatever
went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

from f2pipe_shared.problems import (
    COMMON_REASONS,
    FIELD_RULES,
    MEDIA_TYPE,
    FieldError,
    Problem,
    ProblemError,
    Problems,
    Reason,
    add_problem_schemas,
)

__all__ = [
    "FIELD_RULES",
    "MEDIA_TYPE",
    "PROBLEMS",
    "REASONS",
    "TYPE_PREFIX",
    "FieldError",
    "Problem",
    "ProblemError",
    "Reason",
    "add_problem_schemas",
    "install_handlers",
    "problem_response",
    "responses",
]

# An absolute URI naming the problem kind, without inventing a web address that nobody serves;
# docs/certgen.md documents each one.
TYPE_PREFIX = "urn:f2pipe:certgen:problem:"

# Every reason certgen answers with. A reason's status never changes: clients may rely on it.
REASONS: Mapping[str, Reason] = {
    **COMMON_REASONS,
    "bad_csr": Reason(422, "The CSR cannot be used"),
    "wrong_cn": Reason(422, "The CSR's common name is not the device's"),
    "weak_key": Reason(422, "The CSR's key is not acceptable"),
    "unknown_mac": Reason(404, "No controller is registered with this MAC"),
    # Enrolment answers an unknown MAC, a controller without a claim code and a wrong code
    # alike: MACs are public, and the answer must not tell an outsider which ones exist.
    "enrolment_refused": Reason(403, "Unknown MAC or wrong claim code"),
    "locked_out": Reason(429, "Too many failed enrolments from this address"),
    "missing_token": Reason(401, "Admin token required"),
    "wrong_token": Reason(403, "Wrong admin token"),
    "admin_disabled": Reason(403, "The admin API is disabled"),
    "unknown_serial": Reason(404, "No certificate with this serial"),
    "already_revoked": Reason(409, "The certificate is already revoked"),
}

PROBLEMS = Problems(TYPE_PREFIX, REASONS)
problem_response = PROBLEMS.response
responses = PROBLEMS.responses
install_handlers = PROBLEMS.install_handlers
