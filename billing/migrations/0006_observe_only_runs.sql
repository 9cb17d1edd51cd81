-- A run that auto-healing's pause kept observe-only from start to end: it reported, but it is
-- not a successful reconciliation (nor a backfill day done).
ALTER TABLE billing.reconciliation_runs ADD COLUMN IF NOT EXISTS observe_only boolean NOT NULL DEFAULT false;
