"""Alert rules and Grafana panels name only metrics our services export; alerts are documented."""

from __future__ import annotations

import re
from pathlib import Path

import yaml  # type: ignore[import-untyped]

from tests.unit.test_compose import exported_metric_names

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b((?:f2pipe|certgen|simulator)_[a-z0-9_]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def exported() -> set[str]:
    return exported_metric_names()


def rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def metrics_in(text: str) -> set[str]:
    """Metric families named in PromQL (the _total/_bucket… sample suffixes stripped)."""
    return {
        next((token.removesuffix(s) for s in SUFFIXES if token.endswith(s)), token)
        for token in METRIC.findall(text)
    }


def test_every_metric_an_alert_uses_is_exported() -> None:
    used = set().union(*(metrics_in(str(rule["expr"])) for rule in rules()))
    assert used, "no metric found in the rules"
    assert used <= exported(), sorted(used - exported())


def test_every_metric_a_dashboard_panel_uses_is_exported() -> None:
    dashboards = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    used = set().union(*(metrics_in(d.read_text()) for d in dashboards))
    assert used, "no metric found in the dashboards"
    assert used <= exported(), sorted(used - exported())


def test_every_alert_is_explained_in_the_operations_doc() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for rule in rules():
        assert f"`{rule['alert']}`" in doc, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")  # type: ignore[index]


def test_prometheus_loads_the_rules_file() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]
