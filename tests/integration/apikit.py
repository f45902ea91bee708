"""The api under test: the app in-process (TestClient) on a fresh migrated database, one
token per role made as `f2pipe api-token create` makes them (the `api` fixture, conftest.py),
and `problem()` to check a refusal. Every test_api_*.py module uses this kit.

The app logs in as the api does in production: a login in the `f2pipe_api` group role
(migration 0013, `f2pipe db-roles`), so every api test also proves the role's grants suffice.
`Api.sql` and the tokens use the schema owner's login."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from f2pipe.dbroles import ServiceLogin, apply_roles
from f2pipe_api.app import create_app
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.store import PostgresStore
from f2pipe_api.tokens import Role, create_token
from f2pipe_devtools.env import as_user

PROBLEM = "application/problem+json"
MAC = "aabbccddee01"
# Roles belong to the server: one api login per test process, its password set again per test.
API_LOGIN = ServiceLogin("api", f"api_test_{os.getpid()}", secrets.token_hex(16))


@dataclass
class Api:
    http: TestClient
    conninfo: str
    tokens: dict[Role, str]

    def as_(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def register(self, mac: str = MAC, **extra: Any) -> dict[str, Any]:
        body = {"mac": mac, "name": f"controller {mac}", **extra}
        r = self.http.post("/v1/controllers", json=body, headers=self.as_(Role.operator))
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result


def api_conninfo(migrated: str) -> str:
    """The api's own login to this database (a member of f2pipe_api, nothing more)."""
    apply_roles(migrated, [API_LOGIN])
    return as_user(migrated, API_LOGIN.user, API_LOGIN.password)


def running_api(migrated: str) -> Iterator[Api]:
    tokens = {role: create_token(migrated, f"test-{role.value}", role)[0] for role in Role}
    app = create_app(db=PostgresStore(api_conninfo(migrated)), metrics=ApiMetrics())
    with TestClient(app) as http:
        yield Api(http, migrated, tokens)


def problem(r: Any, status: int, reason: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["reason"] == reason
    assert body["type"] == f"urn:f2pipe:api:problem:{reason}"
    return body
