"""docs/api.md's curl examples name routes that exist, with their method, and the endpoint
table lists every route the app serves: the page an operator follows cannot drift from the
OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path

from f2pipe_api.app import create_app
from f2pipe_api.metrics import ApiMetrics
from f2pipe_api.store import PostgresStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# `api [-X METHOD] [quote]$API/path…` in the examples; GET when no -X.
_CALL = re.compile(r"\bapi\s+(?:-X\s+(?P<method>[A-Z]+)\s+)?\"?\$API(?P<path>/[^\s\"?]*)")


def routes() -> dict[str, set[str]]:
    paths = create_app(db=PostgresStore("dbname=unused"), metrics=ApiMetrics()).openapi()["paths"]
    return {path: {method.upper() for method in ops} for path, ops in paths.items()}


def matching(path: str, table: dict[str, set[str]]) -> set[str]:
    """The methods of the route `path` (with concrete values) falls under."""
    for template, methods in table.items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return methods
    return set()


def test_every_example_calls_a_route_that_exists_with_its_method() -> None:
    table = routes()
    calls = [(m["method"] or "GET", m["path"]) for m in _CALL.finditer(DOC.read_text())]
    assert len(calls) >= 15, "the examples section lost its calls"
    for method, path in calls:
        assert method in matching(path, table), f"docs/api.md: {method} {path} is not a route"


def test_the_endpoint_tables_list_every_route() -> None:
    text = DOC.read_text()
    for path, methods in routes().items():
        for method in methods:
            shown = re.escape(path).replace(r"\{", r"\{").replace(r"\}", r"\}")
            assert re.search(rf"`{method}[^`]*?\s{shown}(?:\?[^`]*)?`", text), (
                f"docs/api.md does not list {method} {path}"
            )
