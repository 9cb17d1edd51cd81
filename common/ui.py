"""What the Temporal UI (and `temporal workflow list/describe`) shows of every run: custom search
attributes, a static summary and Markdown details set at start, live current details, and the
outcome upserted at the end (docs/temporal-ui.md).

The calls a workflow makes (all deterministic, all no-ops where they cannot apply):

    ui.show_progress(ui.render("Scanning", facts=[("customers", "1200")], needs_human=[...]))
    ui.set_outcome(ui.Outcome.AWAITING_APPROVAL)

Most of it happens without any call: `common.ui_interceptor.UiInterceptor` (one of the default
interceptors of every client and worker) adds the search attributes, summary and details to
every workflow a client or a workflow starts (`start_metadata`), and upserts the outcome of
every run when it ends (`outcome_of` its result, `failed` when it fails).

Search attributes must be registered in the namespace (`billing-recon temporal setup`, `dev up`).
A workflow upserts only when it was *started* with them: a start carrying them proves they are
registered (the server refuses unregistered ones), so a run started without them (the
time-skipping test server, a hand-typed `temporal workflow start`, a history recorded before
them) never fails a workflow task on an unknown attribute. Upserts also sit behind
`workflow.patched(UI_PATCH)`, so a run started by an older build replays unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

# The custom search attributes (names are part of the operator's contract: docs/temporal-ui.md).
RUN_KIND = SearchAttributeKey.for_keyword("BillingRunKind")
MODE = SearchAttributeKey.for_keyword("BillingMode")
OUTCOME = SearchAttributeKey.for_keyword("BillingOutcome")
CUSTOMER_IDS = SearchAttributeKey.for_keyword_list("BillingCustomerIds")
CORRELATION_ID = SearchAttributeKey.for_keyword("BillingCorrelationId")
SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = (RUN_KIND, MODE, OUTCOME, CUSTOMER_IDS, CORRELATION_ID)
# Temporal's own, set on every run a schedule starts (the schedule's id).
SCHEDULED_BY = SearchAttributeKey.for_keyword("TemporalScheduledById")

# A run naming more customers lists the first ones only: search attributes are small (a
# keyword list is bounded by the namespace's size limits), and a run over many customers is
# found by kind and time, not by one of hundreds of ids.
MAX_CUSTOMER_IDS = 20
# The UI shows the summary on one line; Temporal advises keeping it short.
MAX_SUMMARY_CHARS = 200
# An input value longer than this is cut in the details table.
MAX_VALUE_CHARS = 120

UI_PATCH = "ui-search-attributes"


class Outcome(StrEnum):
    """Values of `BillingOutcome`."""

    RUNNING = "running"  # set at start
    AWAITING_APPROVAL = "awaiting_approval"  # a plan or held over-reporting waits for a human
    CLEAN = "clean"  # completed; nothing disagreed
    DRIFT_FOUND = "drift_found"  # a dry-run found drift; nothing was written
    DRIFT_FIXED = "drift_fixed"  # completed; corrections were written
    NEEDS_ATTENTION = "needs_attention"  # completed, but left something only a human can fix
    OBSERVE_ONLY = "observe_only"  # auto-healing was paused throughout: detected, fixed nothing
    REJECTED = "rejected"  # its plan was rejected (or the approval timed out)
    COMPLETED = "completed"  # completed (a job whose result says no more)
    FAILED = "failed"
    CANCELLED = "cancelled"


# The outcomes a finished run can have (not RUNNING, not AWAITING_APPROVAL).
FINAL_OUTCOMES = frozenset(o.value for o in Outcome) - {Outcome.RUNNING.value, Outcome.AWAITING_APPROVAL.value}

# What an operator does with a run of a given workflow type, beyond following it: (what, command)
# with {id} for the workflow id. Jobs without an entry get `GENERIC_ACTIONS`.
ACTIONS: dict[str, list[tuple[str, str]]] = {
    "ReconcileUsage": [
        ("report", "billing-recon report {id}"),
        ("pause its corrective writes", 'billing-recon pause {id} --reason "..."'),
        ("approve a held plan", 'billing-recon approve {id} --actor YOU --reason "..."'),
        ("reject it", 'billing-recon reject {id} --actor YOU --reason "..."'),
    ],
    "ReconcileAllocations": [
        ("approve a held plan", 'billing-recon allocations approve {id} --actor YOU --reason "..."'),
        ("reject it", 'billing-recon allocations reject {id} --actor YOU --reason "..."'),
    ],
    "RevenueReconciliation": [
        ("apply its fixes", "billing-recon revenue --since SINCE --until UNTIL --apply"),
        ("export its findings", "billing-recon revenue --since SINCE --until UNTIL --export findings.csv"),
    ],
    "DailyChecks": [("see the last results", "billing-recon checks --last")],
    "RepairCustomer": [
        ("see the customer", "billing-recon customer show CUSTOMER"),
        ("apply the repair", "billing-recon customer repair CUSTOMER --apply"),
    ],
}
GENERIC_ACTIONS = [("its corrective writes", "billing-recon audit --workflow-id {id}")]


def run_kind(workflow_type: str) -> str:
    """`BillingRunKind` of a workflow type: ReconcileUsage -> reconcile-usage."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", workflow_type).lower()


def _field(request: object, name: str) -> Any:
    """A field of a workflow input: a model's attribute, or a key of raw JSON (a dict)."""
    return request.get(name) if isinstance(request, dict) else getattr(request, name, None)


def customers_of(request: object) -> list[str]:
    """The customer ids a workflow input names (`customers` or `customer`), in order."""
    many = _field(request, "customers")
    if isinstance(many, list):
        return [str(c) for c in many]
    one = _field(request, "customer")
    return [str(one)] if one else []


@dataclass(frozen=True)
class StartMetadata:
    """What a run carries from its start: search attributes, summary and details."""

    search_attributes: TypedSearchAttributes
    summary: str
    details: str


def start_metadata(workflow_type: str, workflow_id: str, request: object, *,
                   correlation_id: str | None, note: str | None = None) -> StartMetadata:
    """The search attributes, summary and Markdown details of a run of `workflow_type` started
    with `request` (its one input model). `note`: a line for the details (a schedule's note)."""
    kind = run_kind(workflow_type)
    mode = _field(request, "mode")
    customers = customers_of(request)
    pairs: list[SearchAttributePair[Any]] = [SearchAttributePair(RUN_KIND, kind),
                                             SearchAttributePair(OUTCOME, Outcome.RUNNING.value)]
    if mode is not None:
        pairs.append(SearchAttributePair(MODE, str(mode)))
    if customers:
        pairs.append(SearchAttributePair(CUSTOMER_IDS, customers[:MAX_CUSTOMER_IDS]))
    if correlation_id:
        pairs.append(SearchAttributePair(CORRELATION_ID, correlation_id))
    fields = _input_fields(request)
    summary = " · ".join(p for p in (
        f"{kind} {mode}" if mode else kind,
        _window(fields),
        _customers_text(customers) if customers else "all customers" if _scoped(request) else "",
        f"by {fields['actor']}" if "actor" in fields else "",
    ) if p)
    facts = [("workflow", f"`{workflow_id}`")]
    if correlation_id:
        facts.append(("correlation id", f"`{correlation_id}`"))
    facts += [(k, f"`{v}`") for k, v in fields.items()]
    actions = [(what, cmd.format(id=workflow_id)) for what, cmd in ACTIONS.get(workflow_type, GENERIC_ACTIONS)
               if not (str(mode) == "dry-run" and _acts_on_writes(cmd))]
    details = render(f"{workflow_type}: {summary}", facts=facts, note=note, actions=[
        ("progress and outcome", f"temporal workflow describe -w {workflow_id}"), *actions])
    return StartMetadata(TypedSearchAttributes(pairs), summary[:MAX_SUMMARY_CHARS], details)


def render(title: str, *, facts: Sequence[tuple[str, str]] = (), needs_human: Sequence[str] = (),
           actions: Sequence[tuple[str, str]] = (), note: str | None = None) -> str:
    """Markdown details: a title, a table of facts, what needs a human, the commands to act."""
    lines = [f"### {title}"]
    if note:
        lines += ["", note]
    if facts:
        lines += ["", "| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in facts)]
    if needs_human:
        lines += ["", "**Needs a human**", *(f"- {n}" for n in needs_human)]
    if actions:
        lines += ["", "**To act**", *(f"- {what}: `{cmd}`" for what, cmd in actions)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- in a workflow


def registered() -> bool:
    """In a workflow: it was started with our search attributes (so they are registered)."""
    return workflow.info().typed_search_attributes.get(RUN_KIND) is not None


def scheduled_by() -> str | None:
    """In a workflow: the id of the schedule that started this run, if one did."""
    return workflow.info().typed_search_attributes.get(SCHEDULED_BY)


def set_outcome(outcome: Outcome) -> None:
    """In a workflow: upsert `BillingOutcome` (where the run carries our search attributes)."""
    if registered() and workflow.patched(UI_PATCH):
        workflow.upsert_search_attributes([OUTCOME.value_set(outcome.value)])


def show_progress(details: str) -> None:
    """In a workflow: the live current details the UI and `temporal workflow describe` show
    (held by the worker; no history event, so calling it often is free)."""
    workflow.set_current_details(details)


def outcome_of(result: object) -> Outcome:
    """A finished run's outcome from its result: its own `ui_outcome()` when it has one, else
    its `outcome` or `status` where that is one of ours (rejected, observe_only, failed, ...),
    else completed."""
    own = getattr(result, "ui_outcome", None)
    if callable(own):
        return Outcome(own())
    for name in ("outcome", "status"):
        value = str(getattr(result, name, "") or "")
        if value in FINAL_OUTCOMES:
            return Outcome(value)
    return Outcome.COMPLETED


def state_details(title: str, state: BaseModel, *, exclude: set[str] | frozenset[str] = frozenset({"context"})) -> str:
    """Live details of a run from its state or progress model: its phase and every non-zero
    number (counts.drift_count, days_done, ...)."""
    data = state.model_dump(mode="json", exclude=set(exclude))
    facts = [("phase", str(data["phase"]))] if "phase" in data else []
    facts += [(name, str(value)) for name, value in _numbers(data)]
    return render(title, facts=facts[:40])


def result_details(workflow_type: str, outcome: Outcome, result: object) -> str:
    """Current details of a finished run: its result's own `ui_details()` when it has one, else
    its outcome and the numbers of its result."""
    own = getattr(result, "ui_details", None)
    if callable(own):
        return str(own())
    facts = [("outcome", f"`{outcome.value}`")]
    if isinstance(result, BaseModel):
        for name, value in _numbers(result.model_dump(mode="json")):
            facts.append((name, str(value)))
    return render(f"{workflow_type}: {outcome.value}", facts=facts[:40])


# ---------------------------------------------------------------------------- helpers


def unregistered_attribute(error: BaseException) -> bool:
    """An RPC error saying a search attribute is not registered in the namespace."""
    from temporalio.service import RPCError, RPCStatusCode

    return (isinstance(error, RPCError) and error.status == RPCStatusCode.INVALID_ARGUMENT
            and "search attribute" in error.message.lower())


def _input_fields(request: object) -> dict[str, str]:
    """The input's fields an operator set (not defaults, not carried state), as short text."""
    if isinstance(request, BaseModel):
        data = request.model_dump(mode="json", exclude_defaults=True, exclude={"carried"})
    elif isinstance(request, dict):
        data = {k: v for k, v in request.items() if k != "carried"}
    else:
        return {}
    return {k: _short(v) for k, v in data.items() if v not in (None, [], {})}


def _acts_on_writes(command: str) -> bool:
    """Pause, approve, reject: nothing to act on in a dry-run, which writes nothing."""
    return any(f" {verb} " in command for verb in ("pause", "approve", "reject"))


def _scoped(request: object) -> bool:
    """The input can name customers (a `customers` list or a `customer` field)."""
    return isinstance(request, BaseModel) and (
        isinstance(getattr(request, "customers", None), list) or "customer" in type(request).model_fields)


def _window(fields: dict[str, str]) -> str:
    if "start_date" in fields or "end_date" in fields:
        return f"{fields.get('start_date', '…')}..{fields.get('end_date', 'today')}"
    if "lookback_days" in fields:
        return f"last {fields['lookback_days']} days"
    return f"last {fields['days']} days" if "days" in fields else ""


def _customers_text(customers: list[str]) -> str:
    shown = ", ".join(customers[:3])
    return shown + (f" (+{len(customers) - 3})" if len(customers) > 3 else "")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 1] + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numbers(data: Any, prefix: str = "") -> list[tuple[str, int | float]]:
    """Every non-zero number of a result, by dotted path (counts.drift_count)."""
    out: list[tuple[str, int | float]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _numbers(v, f"{prefix}{k}.")
    elif isinstance(data, int | float) and not isinstance(data, bool) and data:
        out.append((prefix.rstrip("."), data))
    return out
