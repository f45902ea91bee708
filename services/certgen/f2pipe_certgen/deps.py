"""The FastAPI dependencies certgen's handlers declare (`ca: CaDep`, `db: DbDep`, …).

Each app carries its own `Parts` (`app.state.certgen`, set by `app.create_app`), so two apps
in one process never share a CA, a pool or a counter, and a unit test builds an app around a
fake store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from f2pipe_certgen.ca import CertificateAuthority
from f2pipe_certgen.lockout import ClaimCheck, Throttle
from f2pipe_certgen.metrics import CertgenMetrics
from f2pipe_certgen.ports import CertificateStore
from f2pipe_certgen.settings import Settings


@dataclass(frozen=True)
class Parts:
    """What the handlers work with, made by `main.build()` (the CA by its bootstrap)."""

    settings: Settings
    ca: CertificateAuthority
    db: CertificateStore
    metrics: CertgenMetrics
    throttle: Throttle
    claims: ClaimCheck


def attach(app: FastAPI, parts: Parts) -> None:
    app.state.certgen = parts


def parts(request: Request) -> Parts:
    attached: Parts = request.app.state.certgen
    return attached


def get_settings(request: Request) -> Settings:
    return parts(request).settings


def get_ca(request: Request) -> CertificateAuthority:
    return parts(request).ca


def get_db(request: Request) -> CertificateStore:
    return parts(request).db


def get_metrics(request: Request) -> CertgenMetrics:
    return parts(request).metrics


def get_throttle(request: Request) -> Throttle:
    return parts(request).throttle


def get_claims(request: Request) -> ClaimCheck:
    return parts(request).claims


SettingsDep = Annotated[Settings, Depends(get_settings)]
CaDep = Annotated[CertificateAuthority, Depends(get_ca)]
DbDep = Annotated[CertificateStore, Depends(get_db)]
MetricsDep = Annotated[CertgenMetrics, Depends(get_metrics)]
ThrottleDep = Annotated[Throttle, Depends(get_throttle)]
ClaimCheckDep = Annotated[ClaimCheck, Depends(get_claims)]
