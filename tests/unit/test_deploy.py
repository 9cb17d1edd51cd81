"""deploy/ and docker-compose.yml: the alert rules pass `promtool check rules` and name only
metrics the project exports; every alert has its runbook; the dashboard uses only exported
metrics; `docker-compose config` accepts the compose file.

promtool (Debian: prometheus) and docker-compose (Debian: docker-compose) are installed by
.ci/run. Without them these tests fail in CI and are skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from billing import metrics
from tests.deploy_helpers import (
    ALERTS,
    DASHBOARD,
    TEMPORAL_METRICS_USED,
    alert_rules,
    deploy_metric_names,
    metric_names,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed: apt-get install {package} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_metric_name_extraction() -> None:
    assert metric_names(
        'time() - max by (kind) (billing_reconciliation_last_success_timestamp) > 24 * 3600'
    ) == {"billing_reconciliation_last_success_timestamp"}
    assert metric_names(
        'sum(rate(x_total{status="429", a=~"b|c"}[10m])) / on () group_left () max(y) > 1e3 or absent(z)'
    ) == {"x_total", "y", "z"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))") == {"h_bucket"}


def test_alert_rules_pass_promtool() -> None:
    promtool = _tool("promtool", "prometheus")
    res = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in res.stdout


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    unknown = deploy_metric_names() - metrics.exported_names() - TEMPORAL_METRICS_USED
    assert unknown == set()
    alerts = {r["alert"] for r in alert_rules()}
    assert {"BillingReconciliationMissing", "BillingDriftBeyondEpsilon", "BillingReconcileFailures",
            "BillingWebhookBacklogGrowing", "BillingAutoHealingPausedTooLong"} <= alerts


def test_every_alert_has_a_runbook_with_cli_commands() -> None:
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        page = ROOT / url
        assert page.name == f"{rule['alert']}.md" and page.exists(), url
        assert "billing-recon " in page.read_text(), f"{url} names no command of this project"


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "billing-recon"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dash["panels"])


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    compose = _tool("docker-compose", "docker-compose")
    # The compose file has no default secrets (tests/unit/test_compose_security.py).
    secrets = {name: f"test-{name.lower()}" for name in
               ("POSTGRES_PASSWORD", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "GRAFANA_ADMIN_PASSWORD")}
    res = subprocess.run([compose, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, **secrets})
    assert res.returncode == 0, res.stdout + res.stderr
    config = yaml.safe_load(res.stdout)
    services = config["services"]
    assert {"temporal", "temporal-ui", "postgres", "stripe-emulator", "worker", "webhooks"} <= set(services)
    for name in ("temporal", "postgres", "stripe-emulator", "worker", "webhooks"):
        assert "healthcheck" in services[name], name
    assert "webhooks serve" in " ".join(services["webhooks"]["command"])
    assert services["worker"]["environment"]["METRICS_BIND_ADDRESS"] == "0.0.0.0:9464"
