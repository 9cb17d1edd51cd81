"""The Temporal UI metadata helpers (common/ui.py, reconcile/details.py), the visibility filters
of `runs`/`audit` (starter/visibility.py) and the dead-man's switch decisions (health/deadman.py):
pure, without a server."""

from __future__ import annotations

from datetime import date

import pytest
import typer
from pydantic import ValidationError

from billing.settings import Settings
from common import ui
from common.types import Mode, RunStatus
from common.ui_setup import tcld_command, type_name
from health.deadman import ping_url
from reconcile.details import outcome_of
from reconcile.types import Counts, ReconcileResult, ReconcileUsageInput
from resync.types import ResyncSubscriptionsInput
from starter.visibility import visibility_query


def test_run_kind_is_the_workflow_type_in_kebab_case():
    assert ui.run_kind("ReconcileUsage") == "reconcile-usage"
    assert ui.run_kind("CatchUpBackfill") == "catch-up-backfill"
    assert ui.run_kind("Smoke") == "smoke"


def test_start_metadata_of_a_reconciliation():
    customers = [f"c{i}" for i in range(25)]
    inp = ReconcileUsageInput(mode=Mode.APPLY, start_date=date(2026, 11, 1), end_date=date(2026, 11, 20),
                              customers=customers, actor="alice")
    meta = ui.start_metadata("ReconcileUsage", "recon-1", inp, correlation_id="corr-1")
    sa = meta.search_attributes
    assert sa.get(ui.RUN_KIND) == "reconcile-usage" and sa.get(ui.MODE) == "apply"
    assert sa.get(ui.OUTCOME) == "running" and sa.get(ui.CORRELATION_ID) == "corr-1"
    assert sa.get(ui.CUSTOMER_IDS) == customers[:ui.MAX_CUSTOMER_IDS]  # bounded
    assert meta.summary == "reconcile-usage apply · 2026-11-01..2026-11-20 · c0, c1, c2 (+22) · by alice"
    assert len(meta.summary) <= ui.MAX_SUMMARY_CHARS
    # The details: what it is, and every command to act on it.
    for text in ("### ReconcileUsage: ", "| correlation id | `corr-1` |", "`billing-recon report recon-1`",
                 'billing-recon approve recon-1 --actor YOU', "temporal workflow describe -w recon-1"):
        assert text in meta.details, text


def test_a_dry_run_offers_no_commands_that_act_on_writes():
    meta = ui.start_metadata("ReconcileUsage", "dry-1", ReconcileUsageInput(), correlation_id=None)
    assert "billing-recon report dry-1" in meta.details
    assert "approve" not in meta.details and "pause" not in meta.details


def test_start_metadata_of_a_job_without_customers_list_or_known_actions():
    meta = ui.start_metadata("ResyncSubscriptions", "resync-1", ResyncSubscriptionsInput(customer="acme"),
                             correlation_id=None)
    sa = meta.search_attributes
    assert sa.get(ui.CUSTOMER_IDS) == ["acme"] and sa.get(ui.MODE) == "dry-run" and sa.get(ui.CORRELATION_ID) is None
    assert "billing-recon audit --workflow-id resync-1" in meta.details
    everyone = ui.start_metadata("ResyncSubscriptions", "r", ResyncSubscriptionsInput(), correlation_id=None)
    assert everyone.search_attributes.get(ui.CUSTOMER_IDS) is None and "all customers" in everyone.summary


def test_render_escapes_table_cells():
    text = ui.render("t", facts=[("a", "x|y\nz")], needs_human=["approve"], actions=[("do", "cmd")])
    assert "| a | x\\|y z |" in text and "**Needs a human**\n- approve" in text and "- do: `cmd`" in text


def _result(mode: Mode = Mode.APPLY, status: RunStatus = RunStatus.COMPLETED, **counts: int) -> ReconcileResult:
    return ReconcileResult(run_id="r", status=status, mode=mode, window_start=date(2026, 11, 1),
                           window_end=date(2026, 11, 2), counts=Counts(**counts))


@pytest.mark.parametrize(("result", "outcome"), [
    (_result(), ui.Outcome.CLEAN),
    (_result(drift_count=3, corrections_pushed=3), ui.Outcome.DRIFT_FIXED),
    (_result(Mode.DRY_RUN, drift_count=3), ui.Outcome.DRIFT_FOUND),
    (_result(drift_count=1, needs_invoice_adjustment=1), ui.Outcome.NEEDS_ATTENTION),
    (_result(Mode.DRY_RUN, reconcile_failures=2), ui.Outcome.NEEDS_ATTENTION),
    (_result(status=RunStatus.REJECTED, drift_count=2), ui.Outcome.REJECTED),
    (_result(status=RunStatus.FAILED), ui.Outcome.FAILED),
    (_result(drift_count=2).model_copy(update={"observe_only": True}), ui.Outcome.OBSERVE_ONLY),
])
def test_outcome_of_a_reconciliation(result, outcome):
    assert outcome_of(result) == outcome
    assert ui.outcome_of(result) == outcome  # what the interceptor upserts: the result's own


def test_outcome_of_other_results_comes_from_their_status():
    class Done:
        status = "rejected"

    class ObserveOnly:
        outcome = "observe_only"  # e.g. AllocationsResult.outcome
        status = "completed"

    assert ui.outcome_of(Done()) == ui.Outcome.REJECTED
    assert ui.outcome_of(ObserveOnly()) == ui.Outcome.OBSERVE_ONLY
    assert ui.outcome_of(None) == ui.Outcome.COMPLETED


def test_start_metadata_of_raw_json_input_and_state_details():
    meta = ui.start_metadata("ResyncSubscriptions", "child-1", {"mode": "apply", "actor": "bob"}, correlation_id="c")
    assert meta.search_attributes.get(ui.MODE) == "apply" and "by bob" in meta.summary
    state = Counts(drift_count=2, customers_scanned=10)
    details = ui.state_details("Run r: scanning", state)
    assert "| drift_count | 2 |" in details and "| customers_scanned | 10 |" in details and "keys_checked" not in details


def test_visibility_query():
    assert visibility_query() is None
    assert visibility_query(open_only=True) is None  # --open alone: the Postgres listing
    q = visibility_query(kind="reconcile-usage", mode=Mode.APPLY, outcome=ui.Outcome.DRIFT_FIXED, customer="acme",
                         correlation_id="c-1", schedule="usage-sync", open_only=True)
    assert q == ("BillingRunKind = 'reconcile-usage' AND BillingMode = 'apply' AND BillingOutcome = 'drift_fixed' "
                 "AND BillingCustomerIds = 'acme' AND BillingCorrelationId = 'c-1' "
                 "AND TemporalScheduledById = 'billing-usage-sync' AND ExecutionStatus = 'Running'")


@pytest.mark.parametrize("value", ["x' OR 1=1", "a b", "", "é"])
def test_visibility_query_refuses_values_that_could_break_the_query(value):
    with pytest.raises(typer.Exit) as e:
        visibility_query(customer=value)
    assert e.value.exit_code == 2


def _settings(**env: str) -> Settings:
    return Settings.model_validate(env)


def test_deadman_ping_url_decisions():
    url = "https://hc-ping.com/KEY/{schedule}"
    s = _settings(DEADMAN_PING_URL=url)
    assert ping_url(s, "billing-usage-sync", failed=False) == ("https://hc-ping.com/KEY/usage-sync", None)
    assert ping_url(s, "billing-usage-readback", failed=False)[0] == "https://hc-ping.com/KEY/usage-readback"
    assert ping_url(s, "billing-webhook-replay", failed=False) == (
        None, "schedule webhook-replay is not in DEADMAN_PING_SCHEDULES")
    assert ping_url(s, "billing-usage-sync", failed=True) == (
        None, "the run failed (DEADMAN_PING_ON_FAILURE is off)")
    on_failure = _settings(DEADMAN_PING_URL=url, DEADMAN_PING_ON_FAILURE="true")
    assert ping_url(on_failure, "billing-usage-sync", failed=True)[0] == "https://hc-ping.com/KEY/usage-sync/fail"
    assert ping_url(_settings(), "billing-usage-sync", failed=False) == (None, "DEADMAN_PING_URL is not set")
    assert _settings(DEADMAN_PING_URL="").deadman_ping_url is None
    assert _settings(DEADMAN_PING_SCHEDULES=" a, b ,").deadman_schedules() == {"a", "b"}


@pytest.mark.parametrize("url", ["hc-ping.com/x", "ftp://host/x", "https://"])
def test_deadman_ping_url_must_be_http(url):
    with pytest.raises(ValidationError, match="DEADMAN_PING_URL must be an http"):
        _settings(DEADMAN_PING_URL=url)


def test_tcld_command_names_every_attribute_with_its_type():
    assert type_name(int(ui.CUSTOMER_IDS.indexed_value_type)) == "KeywordList"
    command = tcld_command("billing.acct")
    assert command.startswith("tcld namespace search-attributes add --namespace billing.acct ")
    for key in ui.SEARCH_ATTRIBUTES:
        assert f'"{key.name}={type_name(int(key.indexed_value_type))}"' in command
