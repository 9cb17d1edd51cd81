"""Starting the StripeCircuit workflow (every worker does at start; one runs per task queue)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from circuit.types import CircuitInput, circuit_id
from circuit.workflow import StripeCircuit


async def ensure_running(client: Client, task_queue: str) -> None:
    await client.start_workflow(
        StripeCircuit.run, CircuitInput(), id=circuit_id(task_queue), task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        static_summary="Stripe circuit breaker: pauses auto-healing while Stripe fails")
