-- Webhook intake and the state its handlers maintain.
--
-- billing.stripe_events is the durable inbox: a row exists before Stripe gets its 2xx, and its
-- status only changes in the same transaction as the handler's writes, so "processed" always
-- means "its effects are committed".

ALTER TABLE billing.stripe_events
    ADD COLUMN source         text NOT NULL DEFAULT 'webhook' CHECK (source IN ('webhook', 'replay')),
    ADD COLUMN object_id      text,            -- data.object.id, to find every event of an object
    ADD COLUMN deliveries     integer NOT NULL DEFAULT 1,  -- how many times Stripe delivered it
    ADD COLUMN last_error_at  timestamptz;
CREATE INDEX stripe_events_created_idx ON billing.stripe_events (created, event_id);
CREATE INDEX stripe_events_object_idx ON billing.stripe_events (object_id);

-- A customer deleted in Stripe keeps its row (usage and credits reference it).
ALTER TABLE billing.customers
    ADD COLUMN deleted_at      timestamptz,
    ADD COLUMN stripe_synced_at timestamptz;

ALTER TABLE billing.subscriptions
    ADD COLUMN cancel_at     timestamptz,
    ADD COLUMN canceled_at   timestamptz,
    ADD COLUMN ended_at      timestamptz,
    ADD COLUMN synced_at     timestamptz;         -- when this row was last read from Stripe

ALTER TABLE billing.invoices
    ADD COLUMN attempt_count integer,
    ADD COLUMN synced_at     timestamptz;

-- Where a credit grant came from, for the checkout <-> ledger consistency checks.
ALTER TABLE billing.credit_ledger
    ADD COLUMN stripe_event_id     text,
    ADD COLUMN checkout_session_id text,
    ADD COLUMN actor               text;
CREATE INDEX credit_ledger_customer_idx ON billing.credit_ledger (customer_id);
