-- Observability (issue #7): the correlation id of the command that started a run, and indexes
-- for the Postgres-derived gauges every worker refreshes (billing.metrics_collector).
-- (audit_log.correlation_id exists since 0001.)

ALTER TABLE billing.reconciliation_runs ADD COLUMN IF NOT EXISTS correlation_id text;

-- Last success / last completed run per kind; runs not finished by status.
CREATE INDEX IF NOT EXISTS reconciliation_runs_kind_finished_idx
    ON billing.reconciliation_runs (kind, finished_at DESC) WHERE status = 'completed';
CREATE INDEX IF NOT EXISTS reconciliation_runs_open_idx
    ON billing.reconciliation_runs (kind, status) WHERE finished_at IS NULL;

-- Paused runs: the latest pause/resume audit row of each workflow.
CREATE INDEX IF NOT EXISTS audit_log_pause_idx
    ON billing.audit_log (workflow_id, at DESC, id DESC)
    WHERE action IN ('pause_auto_healing', 'resume_auto_healing');
