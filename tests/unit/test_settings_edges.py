"""Settings that would disable a protection are refused at startup, in one line, by every entry
point (`billing-recon ...`, `python -m webhooks`, `python -m worker`): a webhook tolerance of 0,
non-positive receiver limits, and secrets published in this repository used outside the local
stack (STRIPE_API_BASE not on a loopback address)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from billing.settings import PUBLISHED_SECRETS, Settings, settings_error_line

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "billing-recon")


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """`command` with the given settings and none of the caller's own (DATABASE_URL, STRIPE_*, ...)."""
    own = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "STRIPE_", "WEBHOOK_"))}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**own, **env})


def error_line(**values: object) -> str:
    with pytest.raises(ValidationError) as refused:
        Settings.model_validate(values)
    return settings_error_line(refused.value)


@pytest.mark.parametrize("value", ["0", "-5", "3601", "soon"])
def test_webhook_tolerance_must_be_positive_and_at_most_an_hour(value):
    line = error_line(WEBHOOK_TOLERANCE_SECONDS=value)
    assert line.startswith("invalid settings: WEBHOOK_TOLERANCE_SECONDS: ") and "\n" not in line
    assert Settings.model_validate({"WEBHOOK_TOLERANCE_SECONDS": "1"}).webhook_tolerance_seconds == 1


def test_receiver_limits_must_be_positive():
    line = error_line(WEBHOOK_MAX_BODY_BYTES=0, WEBHOOK_READ_TIMEOUT_SECONDS=0, WEBHOOK_MAX_CONNECTIONS=0)
    for name in ("WEBHOOK_MAX_BODY_BYTES", "WEBHOOK_READ_TIMEOUT_SECONDS", "WEBHOOK_MAX_CONNECTIONS"):
        assert f"{name}: Input should be greater than 0 (got 0)" in line


@pytest.mark.parametrize("command", [[CLI, "webhooks", "serve"], [sys.executable, "-m", "webhooks"],
                                     [sys.executable, "-m", "worker"]],
                         ids=["cli", "python-m-webhooks", "python-m-worker"])
def test_a_bad_value_is_a_one_line_startup_error(command):
    res = run(command, WEBHOOK_TOLERANCE_SECONDS="0")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        "invalid settings: WEBHOOK_TOLERANCE_SECONDS: Input should be greater than 0 (got '0')"]


# ------------------------------------------------------------------ published default secrets

# Secrets of one's own: random, so written nowhere.
OWN_KEY = "rk_live_" + secrets.token_hex(12)
OWN_WEBHOOK_SECRET = "whsec_" + secrets.token_hex(24)
OWN_PASSWORD = secrets.token_hex(12)
SECRET_LITERAL = re.compile(r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9_]+|\bwhsec_[A-Za-z0-9_]+")
NOT_SOURCE = {".git", ".venv", ".state", "__pycache__", ".pytest_cache", ".ruff_cache", "build"}


def test_every_secret_written_in_the_repository_is_a_published_one():
    """A secret in a default, a test, a bench or a doc is public: it must be refused outside the
    local stack. A new one fails here until it is added to PUBLISHED_SECRETS."""
    found: dict[str, str] = {}
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if not path.is_file() or parts & NOT_SOURCE or any(p.endswith(".egg-info") for p in parts):
            continue
        if path.stat().st_size > 5_000_000:
            continue
        data = path.read_bytes()
        if b"\x00" in data:  # binary (a saved emulator state): no secret is written there by hand
            continue
        for literal in SECRET_LITERAL.findall(data.decode(errors="ignore")):
            found.setdefault(literal, str(path.relative_to(ROOT)))
    assert {"sk_test_emulator", "whsec_emulator"} <= set(found)
    unlisted = {literal: where for literal, where in found.items() if literal not in PUBLISHED_SECRETS}
    assert unlisted == {}, "add these to billing.settings.PUBLISHED_SECRETS"


@pytest.mark.parametrize("base", ["http://127.0.0.1:12111", "http://localhost:12111", "http://[::1]:12111",
                                  "http://127.0.0.2:8000"])
def test_published_secrets_are_fine_with_a_local_emulator(base):
    s = Settings.model_validate({"STRIPE_API_BASE": base, "DATABASE_URL": "postgresql://billing:billing@db/billing"})
    assert (s.stripe_api_key, s.stripe_webhook_secret) == ("sk_test_emulator", "whsec_emulator")


@pytest.mark.parametrize(("values", "named"), [
    ({}, "STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET and the DATABASE_URL password are published default secrets"),
    ({"STRIPE_API_KEY": OWN_KEY}, "STRIPE_WEBHOOK_SECRET and the DATABASE_URL password are"),
    ({"STRIPE_API_KEY": OWN_KEY, "STRIPE_WEBHOOK_SECRET": "whsec_chaos",
      "DATABASE_URL": f"postgresql://billing:{OWN_PASSWORD}@db/billing"}, "STRIPE_WEBHOOK_SECRET is a published default secret,"),
], ids=["all-defaults", "key-set", "a-bench-secret"])
def test_published_secrets_are_refused_with_real_stripe(values, named):
    line = error_line(**{"STRIPE_API_BASE": "https://api.stripe.com",
                         "DATABASE_URL": "postgresql://billing:billing@db/billing", **values})
    assert line.startswith(f"invalid settings: {named}")
    assert "not https://api.stripe.com" in line and "\n" not in line
    assert OWN_PASSWORD not in line and OWN_KEY not in line


def test_own_secrets_are_fine_with_real_stripe_and_with_a_compose_emulator():
    own = {"STRIPE_API_KEY": OWN_KEY, "STRIPE_WEBHOOK_SECRET": OWN_WEBHOOK_SECRET,
           "DATABASE_URL": f"postgresql://billing:{OWN_PASSWORD}@db/billing"}
    for base in ("https://api.stripe.com", "http://stripe-emulator:12111"):
        assert Settings.model_validate({"STRIPE_API_BASE": base, **own}).stripe_api_base == base
    # docker-compose's emulator is not on a loopback address: the defaults are refused there too.
    line = error_line(STRIPE_API_BASE="http://stripe-emulator:12111")
    assert "STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET are" not in line and "STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET are" in line


def test_the_cli_refuses_published_secrets_in_one_line():
    res = run([CLI, "runs"], STRIPE_API_BASE="https://api.stripe.com", STRIPE_API_KEY="sk_test_emulator",
              STRIPE_WEBHOOK_SECRET=OWN_WEBHOOK_SECRET)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        "invalid settings: STRIPE_API_KEY is a published default secret, accepted only with a local "
        "Stripe emulator (STRIPE_API_BASE on a loopback address, not https://api.stripe.com): set your own"]
