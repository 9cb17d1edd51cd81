"""Settings read every environment variable the product uses: the ones that are not plain values."""

from __future__ import annotations

import pytest

from billing.settings import Settings

CLEARED = ("BILLING_ACTOR", "USER", "METRICS_BIND_ADDRESS", "EMULATOR_SUMMARY_LAG_SECONDS",
           "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)


def test_actor_is_billing_actor_else_the_login_name_else_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().actor() == "cli"
    monkeypatch.setenv("USER", "alice")
    assert Settings().actor() == "alice"
    monkeypatch.setenv("BILLING_ACTOR", "ci-job-7")
    assert Settings().actor() == "ci-job-7"
    monkeypatch.setenv("BILLING_ACTOR", "")
    assert Settings().actor() == "alice"


def test_an_empty_metrics_address_is_set_and_means_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Settings().metrics_bind_address_set()
    monkeypatch.setenv("METRICS_BIND_ADDRESS", "")
    settings = Settings()
    assert settings.metrics_bind_address_set() and settings.metrics_bind_address == ""


def test_empty_summary_lag_is_unset_and_tracing_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_SUMMARY_LAG_SECONDS", "")
    assert Settings().emulator_summary_lag_seconds is None
    monkeypatch.setenv("EMULATOR_SUMMARY_LAG_SECONDS", "2.5")
    assert Settings().emulator_summary_lag_seconds == 2.5
    assert not Settings().tracing_configured()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
    assert Settings().tracing_configured()
