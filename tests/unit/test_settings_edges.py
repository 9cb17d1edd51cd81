"""Settings that would disable a protection are refused at startup, in one line, by every entry
point (`billing-recon ...`, `python -m webhooks`, `python -m worker`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from billing.settings import Settings, settings_error_line

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "billing-recon")


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **env})


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
