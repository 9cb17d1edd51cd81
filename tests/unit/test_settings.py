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


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RECON_PAGE_SIZE", "0", "Input should be greater than or equal to 1"),
    ("RECON_PAGE_SIZE", "-1", "Input should be greater than or equal to 1"),
    ("RECON_PAGE_SIZE", "5001", "Input should be less than or equal to 5000"),
    ("RECON_EPSILON", "1", "Input should be less than 1"),
    ("RECON_EPSILON", "-0.1", "Input should be greater than or equal to 0"),
    ("RECON_EPSILON", "NaN", "Input should be a finite number"),
    ("RECON_SETTLE_SECONDS", "-5", "Input should be greater than or equal to 0"),
    ("RECON_SETTLE_SECONDS", "604801", "Input should be less than or equal to 604800"),
    ("RECON_STRIPE_CONCURRENCY", "0", "Input should be greater than or equal to 1"),
    ("RECON_AUTO_APPROVE_OVER_REPORTING", "perhaps", "Input should be a valid boolean, unable to interpret input"),
])
def test_every_recon_setting_is_bounded_where_it_enters(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    from billing.settings import InvalidSettings, get_settings

    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(InvalidSettings) as err:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert str(err.value) == f"invalid settings: {name}: {message} (got {value!r})"


def test_recon_settings_at_their_bounds_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RECON_PAGE_SIZE": "5000", "RECON_EPSILON": "0", "RECON_SETTLE_SECONDS": "604800",
                        "RECON_STRIPE_CONCURRENCY": "1"}.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.recon_page_size, s.recon_epsilon, s.recon_settle_seconds, s.recon_stripe_concurrency) == (
        5000, 0, 604800, 1)
