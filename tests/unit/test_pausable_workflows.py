"""`billing-recon pause` reaches every run that takes a `pause` signal: AutoHealControl broadcasts
to PAUSABLE_WORKFLOWS, so a workflow with `pause`/`resume` handlers must be listed there."""

from __future__ import annotations

from temporalio.workflow import _Definition

from autoheal.workflow import PAUSABLE_WORKFLOWS, AutoHealControl
from workflows import all_workflows


def test_every_workflow_with_pause_and_resume_signals_is_broadcast_to():
    takes_pause = {
        d.name for d in (_Definition.must_from_class(w) for w in all_workflows())
        if {"pause", "resume"} <= set(d.signals) and d.cls is not AutoHealControl}
    assert "ReconcileAllocations" in takes_pause
    assert takes_pause == set(PAUSABLE_WORKFLOWS)
