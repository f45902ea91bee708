"""Claim codes and enrolment: each controller gets its certificate from certgen with a CSR.

Claim codes come from the file ``f2pipe seed-demo --claim-codes PATH`` writes (CSV
``mac,name,claim_code``, appended to on later runs) or from JSON: an object ``{mac: code}``
or a list of objects with ``mac`` and ``claim_code``.

Enrolment runs a small pool of concurrent requests (``concurrency``) over one HTTP/1.1
connection pool: certgen spends ~30 ms of scrypt per claim code, so a handful in flight keeps
its cores busy without queueing hundreds of requests. 429 and 503 are retried after
Retry-After, network errors with backoff; other refusals fail that controller only.

``CertgenEnrolment`` is the `ports.EnrolmentEndpoint` of production: ``enrol_all`` with a
state directory, certgen's URL and the limits from the settings.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from f2pipe_shared.certificates import EnrollRequest, EnrollResponse
from f2pipe_shared.topics import device_cn, normalize_mac
from f2pipe_simulator.identity import StateDir, make_csr

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ClaimCodeError(ValueError):
    """The claim codes file cannot be read."""


def read_claim_codes(path: Path) -> dict[str, str]:
    """MAC (12 lowercase hex digits) -> claim code, from a CSV or JSON file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClaimCodeError(f"cannot read claim codes from {path}: {exc}") from exc
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            pairs = _json_pairs(json.loads(text))
        else:
            pairs = _csv_pairs(text)
        return {normalize_mac(mac): code.strip() for mac, code in pairs if code.strip()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ClaimCodeError(f"{path}: not a claim codes file ({exc})") from exc


def _csv_pairs(text: str) -> Iterable[tuple[str, str]]:
    for row in csv.reader(text.splitlines()):
        if not row or row[0].strip().lower() == "mac" or row[0].lstrip().startswith("#"):
            continue  # a header (the file is appended to, so there may be several)
        if len(row) < 2:
            raise ValueError(f"expected mac,name,claim_code or mac,claim_code; got {row!r}")
        yield row[0].strip(), row[-1]


def _json_pairs(data: object) -> Iterable[tuple[str, str]]:
    if isinstance(data, dict):
        return [(str(mac), str(code)) for mac, code in data.items()]
    if isinstance(data, list):
        return [(str(item["mac"]), str(item["claim_code"])) for item in data]
    raise ValueError("expected an object {mac: code} or a list of {mac, claim_code}")


@dataclass
class EnrolmentReport:
    enrolled: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # mac -> reason
    seconds: float = 0.0

    @property
    def ready(self) -> list[str]:
        return sorted([*self.enrolled, *self.reused])


class EnrolmentError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(eq=False)
class CertgenEnrolment:
    """Enrolment through certgen; keys and certificates in ``state`` (created if missing)."""

    certgen_url: str
    state: StateDir
    _: KW_ONLY
    concurrency: int
    renew_before: timedelta
    on_result: Callable[[str], None] | None = None
    transport: httpx.AsyncBaseTransport | None = None
    # How certgen's certificate is checked: an SSLContext trusting our CA (production), or
    # httpx's default (True: the system's CAs; irrelevant for http:// and test transports).
    verify: ssl.SSLContext | bool = True

    async def enrol(self, macs: Sequence[str], codes: Mapping[str, str]) -> EnrolmentReport:
        self.state.create()
        return await enrol_all(
            macs,
            codes,
            self.state,
            self.certgen_url,
            concurrency=self.concurrency,
            renew_before=self.renew_before,
            on_result=self.on_result,
            transport=self.transport,
            verify=self.verify,
        )


async def enrol_all(
    macs: Iterable[str],
    codes: Mapping[str, str],
    state: StateDir,
    certgen_url: str,
    *,
    concurrency: int = 8,
    renew_before: timedelta = timedelta(days=7),
    attempts: int = 6,
    on_result: Callable[[str], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    verify: ssl.SSLContext | bool = True,
) -> EnrolmentReport:
    """Make sure every controller has a usable certificate; enrol those that do not."""
    started = time.monotonic()
    report = EnrolmentReport()
    todo: list[str] = []
    for mac in macs:
        if state.valid_certificate(device_cn(mac), renew_before=renew_before):
            report.reused.append(mac)
            _notify(on_result, "reused")
        elif mac not in codes:
            report.failed[mac] = "no_claim_code"
            _notify(on_result, "failed")
        else:
            todo.append(mac)
    if todo:
        limit = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=certgen_url, timeout=30, limits=limits, transport=transport, verify=verify
        ) as http:

            async def one(mac: str) -> None:
                async with limit:
                    try:
                        await enrol(http, mac, codes[mac], state, attempts=attempts)
                    except EnrolmentError as exc:
                        report.failed[mac] = exc.reason
                        _notify(on_result, "failed")
                        log.error("enrolment failed", extra={"mac": mac, "reason": exc.reason})
                    else:
                        report.enrolled.append(mac)
                        _notify(on_result, "enrolled")

            await asyncio.gather(*(one(mac) for mac in todo))
    report.seconds = time.monotonic() - started
    return report


def _notify(callback: Callable[[str], None] | None, result: str) -> None:
    if callback is not None:
        callback(result)


async def enrol(
    http: httpx.AsyncClient, mac: str, claim_code: str, state: StateDir, *, attempts: int = 6
) -> EnrollResponse:
    """One controller: key (kept or new), CSR, POST /v1/enroll, certificate and CA stored."""
    cn = device_cn(mac)
    key = state.key(cn)
    body = EnrollRequest(mac=mac, claim_code=claim_code, csr_pem=make_csr(cn, key))
    payload = body.model_dump(exclude_none=True)
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            response = await http.post("/v1/enroll", json=payload)
        except httpx.TransportError as exc:
            failure = EnrolmentError(f"network: {exc.__class__.__name__}: {exc}")
        else:
            if response.status_code == 200:
                answer = EnrollResponse.model_validate_json(response.content)
                state.store(cn, answer.certificate_pem, answer.ca_certificate_pem)
                return answer
            failure = _problem(response)
            if response.status_code not in RETRY_STATUSES:
                raise failure
        if attempt == attempts:
            raise failure
        wait = failure.retry_after if failure.retry_after is not None else delay
        await asyncio.sleep(min(wait, 60) * random.uniform(1.0, 1.25))
        delay = min(delay * 2, 30)
    raise AssertionError("unreachable")  # pragma: no cover


def _problem(response: httpx.Response) -> EnrolmentError:
    reason = f"http_{response.status_code}"
    try:
        problem = response.json()
        if isinstance(problem, dict) and isinstance(problem.get("reason"), str):
            reason = problem["reason"]
    except ValueError:
        pass
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    return EnrolmentError(reason, retry_after)
