"""Prometheus metrics: enrolments, refusals by reason, revocations.

`CertgenMetrics` owns its registry and is made once, in `main.build()`: two certgens in one
process (tests) never share counters, and /metrics shows certgen's series plus the process
and Python ones.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from f2pipe_shared.metrics import ServiceMetrics

# The reasons an enrolment can be refused for, pre-created at 0 so a dashboard's rate() has a
# series before the first refusal happens. These are the real causes: the client is answered
# `enrolment_refused` for unknown_mac, no_claim_code and wrong_claim_code alike.
ENROLMENT_FAILURE_REASONS = (
    "invalid_json",
    "invalid_request",
    "invalid_mac",
    "unknown_mac",
    "no_claim_code",
    "wrong_claim_code",
    "locked_out",
    "bad_csr",
    "wrong_cn",
    "weak_key",
)


class CertgenMetrics(ServiceMetrics):
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        super().__init__("certgen_")
        self.enrolments = self.counter(
            "enrolments",
            "Device certificates issued by enrolment, by flow (csr: device sent a CSR; "
            "generated: certgen made the key pair)",
            ["flow"],
        )
        self.enrolment_failures = self.counter(
            "enrolment_failures",
            "Enrolments refused, by cause (unknown_mac, no_claim_code, wrong_claim_code: "
            "answered enrolment_refused alike; locked_out: the address is throttled)",
            ["reason"],
        )
        self.revocations = self.counter(
            "revocations",
            "Certificates revoked, by RFC 5280 reason (superseded: replaced by a re-enrolment)",
            ["reason"],
        )
        self.service_certificates = self.counter(
            "service_certificates", "Service client certificates issued through the admin API"
        )
        for flow in ("csr", "generated"):
            self.enrolments.labels(flow=flow)
        for reason in ENROLMENT_FAILURE_REASONS:
            self.enrolment_failures.labels(reason=reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
