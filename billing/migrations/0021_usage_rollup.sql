-- The change-driven usage sync (reconcile/tick.py, docs/reconciliation.md "Three paths").

-- Async meter errors (webhooks/meter_errors.py): one row per thin event Stripe sent to our event
-- destination (`v1.billing.meter.error_report_triggered`, `v1.billing.meter.no_meter_found`).
-- Stored before the receiver answers 200; `processed_at` once the pushes it names are marked
-- failed (the receiver does it within seconds; the tick sweeps what it could not).
CREATE TABLE IF NOT EXISTS billing.meter_error_reports (
    event_id      text PRIMARY KEY,               -- the v2 event id (evt_...)
    type          text NOT NULL,
    meter_id      text,                           -- related_object.id (none for no_meter_found)
    received_at   timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    error_count   integer,                        -- Stripe's count (the sample may name fewer)
    identifiers   text[] NOT NULL DEFAULT '{}',   -- meter event identifiers the sample named
    marked        integer NOT NULL DEFAULT 0,     -- of those, our pushes marked failed
    error         text                            -- why processing failed the last time
);
CREATE INDEX IF NOT EXISTS meter_error_reports_open_idx
    ON billing.meter_error_reports (received_at) WHERE processed_at IS NULL;

-- Keys the next tick must look at whatever the ledger says (a push marked failed by an error
-- report). Deleted by the tick that handled them.
CREATE TABLE IF NOT EXISTS billing.usage_sync_queue (
    customer_id  text NOT NULL,
    meter        text NOT NULL,
    usage_day    date NOT NULL,
    reason       text NOT NULL,                   -- 'meter_error'
    source       text,                            -- the error report's event id
    queued_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, meter, usage_day)
);
