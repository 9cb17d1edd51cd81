-- Daily checks (DailyChecks workflow, `billing-recon checks`): every run and each check's
-- result, so `status`, the metrics collector, the console and notifications read the last
-- result from here. Written once per run, in one transaction, idempotently (a retried write
-- stores the same rows again).

CREATE TABLE IF NOT EXISTS billing.daily_check_runs (
    run_id           text PRIMARY KEY,            -- the DailyChecks workflow id
    workflow_run_id  text,
    started_at       timestamptz NOT NULL,        -- the workflow's time when the checks began
    finished_at      timestamptz NOT NULL,
    passed           boolean NOT NULL,            -- every check passed
    failed_checks    text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS daily_check_runs_finished_idx ON billing.daily_check_runs (finished_at DESC);

CREATE TABLE IF NOT EXISTS billing.daily_check_results (
    run_id      text NOT NULL REFERENCES billing.daily_check_runs (run_id) ON DELETE CASCADE,
    check_name  text NOT NULL,                    -- checks.types.CheckName
    passed      boolean NOT NULL,
    summary     text NOT NULL,
    findings    integer NOT NULL DEFAULT 0,       -- how many things it found wrong
    figures     jsonb NOT NULL DEFAULT '{}',      -- the numbers behind it (counts, thresholds)
    items       jsonb NOT NULL DEFAULT '[]',      -- what it found, bounded (ids, days and types)
    PRIMARY KEY (run_id, check_name)
);
