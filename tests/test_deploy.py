"""The files operators deploy: alert rules (promtool), dashboard, compose, Kubernetes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.metrics import RelayMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def exported_metric_names() -> set[str]:
    metrics = RelayMetrics("flag-audit")
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def unknown_metrics(expr: str) -> set[str]:
    """flagtrail_* names in a PromQL expression that the relay does not export."""
    return set(re.findall(r"\bflagtrail_[a-z_]+\b", expr)) - exported_metric_names()


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    check = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alerts_cover_what_operators_and_auditors_need() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert names == {
        "FlagtrailOutboxLagHigh",
        "FlagtrailRelayDown",
        "FlagtrailNoActiveRelay",
        "FlagtrailChainVerificationFailure",
        "FlagtrailUndocumentedGap",
        "FlagtrailRejectionSpike",
        "FlagtrailQuarantinedRows",
        "FlagtrailProducerClockSkew",
        "FlagtrailRelayBackendOutage",
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert not unknown_metrics(rule["expr"]), rule["alert"]


def test_grafana_dashboard_only_queries_metrics_the_relay_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana/flagtrail-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("lag", "relayed", "gaps", "rotations", "blocked"):
        assert topic in titles
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert not unknown_metrics(target["expr"]), panel["title"]


def test_compose_runs_the_whole_stack_with_two_relays() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "kafka", "relay-a", "relay-b", "prometheus", "grafana"} <= set(services)
    for relay in ("relay-a", "relay-b"):
        env = services[relay]["environment"]
        assert env["FLAGTRAIL_OUTBOX_URL"].startswith("postgresql+psycopg://")
        assert env["FLAGTRAIL_LOG_URL"].startswith("kafka://")
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
    scrape = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "flagtrail-relay"


def test_kubernetes_manifests() -> None:
    docs = [
        d
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    kinds = {d["kind"]: d for d in docs}
    assert {
        "Deployment",
        "CronJob",
        "PodDisruptionBudget",
        "Service",
        "ConfigMap",
        "PrometheusRule",
    } <= set(kinds)
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    cron = kinds["CronJob"]
    assert cron["spec"]["schedule"] == "0 6 * * 1"
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "flagtrail export" in script and "flagtrail drift" in script


def test_prometheus_rule_resource_is_in_sync_with_the_rules_file() -> None:
    rendered = subprocess.run(
        [sys.executable, str(DEPLOY / "k8s/render_rules.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (DEPLOY / "k8s/prometheus-rules.yaml").read_text() == rendered


def test_github_workflow_runs_the_weekly_export() -> None:
    workflow = yaml.safe_load((DEPLOY.parent / ".github/workflows/soc2-evidence.yml").read_text())
    assert workflow[True]["schedule"][0]["cron"] == "0 6 * * 1"  # YAML reads `on` as True
    steps = " ".join(str(s) for s in workflow["jobs"]["export"]["steps"])
    assert "flagtrail export" in steps and "flagtrail drift" in steps


def test_dockerfile_copies_the_packages_that_exist() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\w[\w.]*) ", dockerfile, re.MULTILINE):
        assert (DEPLOY.parent / source).exists(), source


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
