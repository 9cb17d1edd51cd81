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

-- The ledger per (customer, meter, UTC day), kept by Postgres itself: statement-level triggers
-- with transition tables on billing.usage_events, so every write is counted, the application's
-- own INSERTs straight into the table included (the documented SQL contract), in the same
-- transaction. A tick reads the keys that changed through the partial index below: its ledger
-- cost grows with the changed keys, not with the table.
--   quantity: the sum of the usable rows (-1e15 < q < 1e15, the bound of billing/policy.py
--             MAX_QUANTITY; NaN is not usable); invalid: how many rows are not (poison, reported);
--   changed_seq / synced_seq: bumped by every change / set by the tick that handled it. A key
--             is to sync while changed_seq > synced_seq. (Not one watermark over a sequence:
--             sequence numbers commit out of order, and a watermark would step over a late one.)
CREATE SEQUENCE IF NOT EXISTS billing.usage_change_seq;

CREATE TABLE IF NOT EXISTS billing.usage_daily (
    customer_id  text NOT NULL,
    meter        text NOT NULL,
    usage_day    date NOT NULL,
    quantity     numeric NOT NULL DEFAULT 0,
    invalid      integer NOT NULL DEFAULT 0,
    events       bigint NOT NULL DEFAULT 0,
    changed_seq  bigint NOT NULL DEFAULT nextval('billing.usage_change_seq'),
    synced_seq   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, meter, usage_day)
);
CREATE INDEX IF NOT EXISTS usage_daily_to_sync_idx ON billing.usage_daily (changed_seq)
    WHERE changed_seq > synced_seq;
CREATE INDEX IF NOT EXISTS usage_daily_day_idx ON billing.usage_daily (usage_day);

CREATE OR REPLACE FUNCTION billing.usage_quantity_usable(q numeric) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT q > -1e15 AND q < 1e15 $$;

-- Adds `sign` x the given rows to the rollup (one row per key touched).
CREATE OR REPLACE FUNCTION billing.usage_rollup_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO billing.usage_daily AS d (customer_id, meter, usage_day, quantity, invalid, events, changed_seq)
        SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date,
               coalesce(sum(quantity) FILTER (WHERE billing.usage_quantity_usable(quantity)), 0),
               count(*) FILTER (WHERE NOT billing.usage_quantity_usable(quantity)), count(*),
               nextval('billing.usage_change_seq')
          FROM new_rows GROUP BY 1, 2, 3
        ON CONFLICT (customer_id, meter, usage_day) DO UPDATE
           SET quantity = d.quantity + excluded.quantity, invalid = d.invalid + excluded.invalid,
               events = d.events + excluded.events, changed_seq = excluded.changed_seq;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE billing.usage_daily d
           SET quantity = d.quantity - o.quantity, invalid = d.invalid - o.invalid, events = d.events - o.events,
               changed_seq = nextval('billing.usage_change_seq')
          FROM (SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date AS usage_day,
                       coalesce(sum(quantity) FILTER (WHERE billing.usage_quantity_usable(quantity)), 0) AS quantity,
                       count(*) FILTER (WHERE NOT billing.usage_quantity_usable(quantity)) AS invalid,
                       count(*) AS events
                  FROM old_rows GROUP BY 1, 2, 3) o
         WHERE (d.customer_id, d.meter, d.usage_day) = (o.customer_id, o.meter, o.usage_day);
    ELSE  -- UPDATE: only rows whose key or quantity changed (a dedupe_count bump is not usage)
        INSERT INTO billing.usage_daily AS d (customer_id, meter, usage_day, quantity, invalid, events, changed_seq)
        SELECT customer_id, meter, usage_day, sum(q), sum(bad), sum(n), nextval('billing.usage_change_seq')
          FROM (SELECT n.customer_id, n.meter, (n.occurred_at AT TIME ZONE 'UTC')::date AS usage_day,
                       CASE WHEN billing.usage_quantity_usable(n.quantity) THEN n.quantity ELSE 0 END AS q,
                       CASE WHEN billing.usage_quantity_usable(n.quantity) THEN 0 ELSE 1 END AS bad, 1 AS n
                  FROM new_rows n LEFT JOIN old_rows o USING (request_id)
                 WHERE (o.customer_id, o.meter, o.quantity, o.occurred_at)
                       IS DISTINCT FROM (n.customer_id, n.meter, n.quantity, n.occurred_at)
                UNION ALL
                SELECT o.customer_id, o.meter, (o.occurred_at AT TIME ZONE 'UTC')::date,
                       CASE WHEN billing.usage_quantity_usable(o.quantity) THEN -o.quantity ELSE 0 END,
                       CASE WHEN billing.usage_quantity_usable(o.quantity) THEN 0 ELSE -1 END, -1
                  FROM old_rows o LEFT JOIN new_rows n USING (request_id)
                 WHERE (o.customer_id, o.meter, o.quantity, o.occurred_at)
                       IS DISTINCT FROM (n.customer_id, n.meter, n.quantity, n.occurred_at)) t
         GROUP BY 1, 2, 3
        ON CONFLICT (customer_id, meter, usage_day) DO UPDATE
           SET quantity = d.quantity + excluded.quantity, invalid = d.invalid + excluded.invalid,
               events = d.events + excluded.events, changed_seq = excluded.changed_seq;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS usage_rollup_insert ON billing.usage_events;
CREATE TRIGGER usage_rollup_insert AFTER INSERT ON billing.usage_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.usage_rollup_apply();
DROP TRIGGER IF EXISTS usage_rollup_update ON billing.usage_events;
CREATE TRIGGER usage_rollup_update AFTER UPDATE ON billing.usage_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.usage_rollup_apply();
DROP TRIGGER IF EXISTS usage_rollup_delete ON billing.usage_events;
CREATE TRIGGER usage_rollup_delete AFTER DELETE ON billing.usage_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.usage_rollup_apply();

-- What the ledger held before the triggers: every key starts as changed (the first tick
-- compares each with our outbox, without reading Stripe).
INSERT INTO billing.usage_daily (customer_id, meter, usage_day, quantity, invalid, events)
SELECT customer_id, meter, (occurred_at AT TIME ZONE 'UTC')::date,
       coalesce(sum(quantity) FILTER (WHERE billing.usage_quantity_usable(quantity)), 0),
       count(*) FILTER (WHERE NOT billing.usage_quantity_usable(quantity)), count(*)
  FROM billing.usage_events GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;
