-- The usage ingestion contract gets its bounds (README "Ingestion contract",
-- billing/policy.py MAX_QUANTITY / EARLIEST_USAGE / USAGE_AHEAD say the same):
--
--   quantity     finite and 0 <= quantity < 1e15. NaN and +-Infinity fail it too (Postgres orders
--                NaN above every number, so `NaN < 1e15` is false). Usage is consumption: a wrong
--                row is corrected (UPDATE/DELETE; reconciliation compensates in Stripe), not
--                offset by a negative one. 1e15 keeps quantities exact in Stripe's float64 sums.
--   occurred_at  from 2000-01-01 UTC up to one day after the database's clock at write time
--                (`now()` only grows, so a row that passed once keeps passing).
--
-- NOT VALID: rows already stored are not checked, so a database that already holds bad rows
-- still migrates; every row inserted or updated from now on is checked. Reconciliation reports a
-- key with such old rows as an `invalid_usage` finding (with their request ids) and skips it.
-- Once they are fixed or deleted, `ALTER TABLE billing.usage_events VALIDATE CONSTRAINT ...`
-- makes the constraint cover every row. Until then an UPDATE of an old bad row (a duplicate
-- submission bumping its dedupe_count, too) is refused like an insert would be.

ALTER TABLE billing.usage_events
    ADD CONSTRAINT usage_events_quantity_bounded
        CHECK (quantity >= 0 AND quantity < 1e15) NOT VALID,
    ADD CONSTRAINT usage_events_occurred_at_sane
        CHECK (occurred_at >= '2000-01-01 00:00:00+00' AND occurred_at < now() + interval '1 day') NOT VALID;

-- A finding whose plan was no longer right when it was to be applied (the key's ledger, our
-- outbox or Stripe changed since the plan): `stale`, re-planned by the next scan.
ALTER TABLE billing.discrepancies
    DROP CONSTRAINT discrepancies_status_check,
    ADD CONSTRAINT discrepancies_status_check CHECK (status IN (
        'observed', 'proposed', 'held', 'approved', 'applied', 'pending', 'skipped', 'rejected',
        'failed', 'unfixable', 'stale'));

-- A run's reported counts of pushes come from the outbox rows it planned (reconcile/runs.py
-- `recorded_counts`, at the end of every run): found by run id.
CREATE INDEX stripe_usage_pushes_run_idx ON billing.stripe_usage_pushes (run_id);
