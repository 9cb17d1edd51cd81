"""deploy/alertmanager/: the routes send every alert rule somewhere other than the default by
its severity, every receiver and template they name exists, and `amtool check-config` accepts
it where amtool is installed (Debian: prometheus-alertmanager)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_helpers import alert_rules

ROOT = Path(__file__).resolve().parents[2]
AM = ROOT / "deploy" / "alertmanager"
CONFIG = AM / "alertmanager.yml"
TEMPLATES = AM / "templates"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _routes(route: dict) -> list[dict]:
    out = []
    for r in route.get("routes", []):
        out.append(r)
        out += _routes(r)
    return out


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    for m in matchers:
        name, op, value = re.fullmatch(r'(\w+)\s*(=~|!=|=)\s*"(.*)"', m).groups()  # type: ignore[union-attr]
        have = labels.get(name, "")
        if (op == "=" and have != value) or (op == "!=" and have == value) or \
                (op == "=~" and not re.fullmatch(value, have)):
            return False
    return True


def test_every_receiver_named_by_a_route_exists_and_every_receiver_is_used() -> None:
    cfg = _config()
    receivers = {r["name"] for r in cfg["receivers"]}
    used = {cfg["route"]["receiver"]} | {r["receiver"] for r in _routes(cfg["route"])}
    assert used == receivers


def test_every_alert_rule_is_routed_by_its_severity() -> None:
    routes = _routes(_config()["route"])
    for rule in alert_rules():
        labels = {"alertname": rule["alert"], **rule.get("labels", {})}
        hits = [r["receiver"] for r in routes if _matches(r.get("matchers", []), labels)]
        assert hits, f"{rule['alert']} (severity {labels.get('severity')}) falls through to the default route"
        if labels.get("severity") == "page":
            assert "pagerduty-billing" in hits, rule["alert"]


def test_inhibitions_name_existing_alerts() -> None:
    alerts = {r["alert"] for r in alert_rules()}
    for rule in _config()["inhibit_rules"]:
        for m in rule["source_matchers"] + rule["target_matchers"]:
            value = re.search(r'"(.*)"', m).group(1)  # type: ignore[union-attr]
            named = set(value.split("|"))
            assert named <= alerts, named - alerts


def test_templates_define_every_template_the_receivers_use() -> None:
    text = "".join(p.read_text() for p in TEMPLATES.glob("*.tmpl"))
    defined = set(re.findall(r'define "([^"]+)"', text))
    used = set(re.findall(r'template "([^"]+)"', CONFIG.read_text()))
    assert used and used <= defined, used - defined
    assert _config()["templates"] == ["/etc/alertmanager/templates/*.tmpl"]


def test_amtool_accepts_the_config(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        message = "`amtool` is not installed: apt-get install prometheus-alertmanager (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + "; the checks above ran")
    # amtool resolves the secret files and templates: point them at copies under tmp_path.
    (tmp_path / "secret").write_text("https://hooks.slack.com/services/T/B/X\n")
    (tmp_path / "templates").mkdir()
    for p in TEMPLATES.glob("*.tmpl"):
        (tmp_path / "templates" / p.name).write_text(p.read_text())
    cfg = CONFIG.read_text().replace("/etc/alertmanager/secrets/slack_webhook_url", str(tmp_path / "secret")) \
        .replace("/etc/alertmanager/secrets/pagerduty_routing_key", str(tmp_path / "secret")) \
        .replace("/etc/alertmanager/templates", str(tmp_path / "templates"))
    (tmp_path / "am.yml").write_text(cfg)
    res = subprocess.run([amtool, "check-config", str(tmp_path / "am.yml")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
