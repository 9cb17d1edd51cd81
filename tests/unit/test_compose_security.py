"""docker-compose.yml is secure by default (`docker-compose config`, as test_deploy.py): no secret
has a default, every published port is bound to 127.0.0.1 unless PUBLISH_ADDRESS says
otherwise, Grafana has no anonymous access and a required admin password."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.settings import PUBLISHED_SECRETS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED = ("POSTGRES_PASSWORD", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "GRAFANA_ADMIN_PASSWORD")
# Random values: written nowhere (tests/unit/test_settings_edges.py scans for written ones).
OWN = {name: secrets.token_hex(12) for name in REQUIRED}


def compose(**env: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        message = "`docker-compose` is not installed: apt-get install docker-compose (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Only what the test gives: none of the caller's own settings, and no .env beside the file.
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED and k != "PUBLISH_ADDRESS"}
    with tempfile.TemporaryDirectory() as folder:
        no_env_file = Path(folder) / "empty.env"
        no_env_file.touch()
        return subprocess.run([tool, "-f", str(COMPOSE), "--env-file", str(no_env_file), "config"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT, env={**base, **env})


def services(**env: str) -> dict[str, Any]:
    res = compose(**env)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)["services"]


def published(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


@pytest.mark.parametrize("missing", REQUIRED)
def test_every_secret_is_required(missing):
    res = compose(**{k: v for k, v in OWN.items() if k != missing})
    assert res.returncode != 0
    assert f"set {missing}" in res.stderr


def test_an_empty_secret_counts_as_missing():
    res = compose(**{**OWN, "STRIPE_WEBHOOK_SECRET": ""})
    assert res.returncode != 0 and "set STRIPE_WEBHOOK_SECRET" in res.stderr


def test_secrets_come_from_the_environment_only():
    text = COMPOSE.read_text()
    assert not [s for s in PUBLISHED_SECRETS if s in text]
    assert "billing:billing@" not in text
    config = services(**OWN)
    app_env = config["worker"]["environment"]
    assert app_env["STRIPE_API_KEY"] == OWN["STRIPE_API_KEY"]
    assert app_env["STRIPE_WEBHOOK_SECRET"] == OWN["STRIPE_WEBHOOK_SECRET"]
    assert app_env["DATABASE_URL"] == f"postgresql://billing:{OWN['POSTGRES_PASSWORD']}@postgres:5432/billing"
    assert config["postgres"]["environment"]["POSTGRES_PASSWORD"] == OWN["POSTGRES_PASSWORD"]
    assert config["temporal"]["environment"]["POSTGRES_PWD"] == OWN["POSTGRES_PASSWORD"]
    # The emulator signs with the receiver's secret, from the environment, not its command line.
    assert config["stripe-emulator"]["environment"]["STRIPE_WEBHOOK_SECRET"] == OWN["STRIPE_WEBHOOK_SECRET"]
    assert "--webhook-secret" not in config["stripe-emulator"]["command"]


def test_published_ports_are_bound_to_loopback_by_default():
    config = services(**OWN)
    ports = {name: published(s) for name, s in config.items() if published(s)}
    assert {"temporal", "temporal-ui", "stripe-emulator", "worker", "webhooks", "prometheus", "grafana"} <= set(ports)
    for name, specs in ports.items():
        for spec in specs:
            assert spec.startswith("127.0.0.1:"), (name, spec)


def test_publish_address_opts_in_to_other_interfaces():
    config = services(**OWN, PUBLISH_ADDRESS="0.0.0.0")
    assert published(config["webhooks"]) == ["0.0.0.0:8088:8088/tcp"]
    assert all(spec.startswith("0.0.0.0:") for s in config.values() for spec in published(s))


def test_grafana_has_no_anonymous_access_and_a_required_admin_password():
    grafana = services(**OWN)["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == OWN["GRAFANA_ADMIN_PASSWORD"]
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana
