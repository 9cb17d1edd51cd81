-- The operator console's pages (console/queries.py): every list is newest first, filtered and
-- paged, so that a page costs the same with 10k runs or 1M audit rows (bench/console.py).

-- Runs, newest first (the runs page, with or without a kind/mode/status filter).
CREATE INDEX IF NOT EXISTS reconciliation_runs_started_idx
    ON billing.reconciliation_runs (started_at DESC, run_id DESC);
-- A run's page is addressed by its first Temporal run id (a workflow id can name a customer).
CREATE INDEX IF NOT EXISTS reconciliation_runs_workflow_run_idx
    ON billing.reconciliation_runs (workflow_run_id);
-- The audit log filtered by actor or by action, newest first (customer and time: 0004).
CREATE INDEX IF NOT EXISTS audit_log_actor_at_idx ON billing.audit_log (actor, at DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_action_at_idx ON billing.audit_log (action, at DESC, id DESC);
-- (Newest first without a filter, and by time: audit_log_at_idx of 0004.)
-- A run's discrepancies by kind (the run page's kind filter and the overview's open findings).
CREATE INDEX IF NOT EXISTS discrepancies_run_kind_idx ON billing.discrepancies (run_id, kind, discrepancy_key);
