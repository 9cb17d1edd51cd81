-- Billing periods from the subscription mirror (issue 15, docs/reconciliation.md "Billing
-- periods"). Since API 2025-03-31.basil each subscription item carries its own period; the
-- reconciliation reads a customer's periods per meter from the metered item billing it.

ALTER TABLE billing.subscriptions ADD COLUMN IF NOT EXISTS billing_cycle_anchor timestamptz;

-- One row per item of a mirrored subscription, rewritten with the subscription (webhooks and
-- resync, webhooks/handlers.py upsert_subscription).
CREATE TABLE IF NOT EXISTS billing.subscription_items (
    stripe_subscription_item_id text PRIMARY KEY,
    stripe_subscription_id      text NOT NULL
        REFERENCES billing.subscriptions (stripe_subscription_id) ON DELETE CASCADE,
    stripe_customer_id          text NOT NULL,
    price_id                    text,
    meter_id                    text,                -- price.recurring.meter (metered prices)
    usage_type                  text,                -- licensed | metered
    price                       jsonb,               -- the price as read (tiers when expanded)
    interval                    text,
    interval_count              integer,
    current_period_start        timestamptz,
    current_period_end          timestamptz,
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS subscription_items_customer_idx
    ON billing.subscription_items (stripe_customer_id, meter_id);

-- The findings of closed periods carry what finance needs.
ALTER TABLE billing.discrepancies
    ADD COLUMN IF NOT EXISTS adjust_quantity numeric,     -- units to invoice (> 0) or credit (< 0)
    ADD COLUMN IF NOT EXISTS adjust_amount   bigint,      -- minor units, same sign
    ADD COLUMN IF NOT EXISTS currency        text,
    ADD COLUMN IF NOT EXISTS stripe_invoice_id text;      -- the finalized invoice of the period

-- The outbox of invoice adjustments (approved plans only): written before the Stripe call,
-- under a deterministic identifier that is also the Stripe Idempotency-Key, so a crash between
-- the two never applies an adjustment twice (exactly like stripe_usage_pushes for meter events).
CREATE TABLE IF NOT EXISTS billing.invoice_adjustments (
    identifier          text PRIMARY KEY,
    customer_id         text NOT NULL,
    stripe_customer_id  text NOT NULL,
    meter               text NOT NULL,               -- the Stripe meter id (price.recurring.meter)
    stripe_invoice_id   text NOT NULL,               -- the closed period's invoice
    period_start        timestamptz NOT NULL,
    period_end          timestamptz NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('invoice_item', 'credit_note', 'balance_credit')),
    quantity            numeric NOT NULL,
    amount              bigint NOT NULL,             -- minor units, > 0
    currency            text NOT NULL,
    description         text NOT NULL,
    status              text NOT NULL CHECK (status IN ('planned', 'sent', 'failed')),
    stripe_object_id    text,                        -- ii_..., cn_..., cbtxn_...
    run_id              text,
    workflow_run_id     text,
    planned_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    error               text
);
CREATE INDEX IF NOT EXISTS invoice_adjustments_invoice_idx
    ON billing.invoice_adjustments (stripe_invoice_id, meter);

-- Subscriptions mirrored before this migration: their items from the copy last read (`raw`), so
-- a mirror row that a resync finds unchanged still has its periods. (Tiers of tiered prices are
-- in `raw` only if it was read with them expanded: the reconciliation reads those from Stripe.)
UPDATE billing.subscriptions
   SET billing_cycle_anchor = to_timestamp((raw->>'billing_cycle_anchor')::bigint)
 WHERE billing_cycle_anchor IS NULL AND raw ? 'billing_cycle_anchor'
   AND jsonb_typeof(raw->'billing_cycle_anchor') = 'number';
INSERT INTO billing.subscription_items
    (stripe_subscription_item_id, stripe_subscription_id, stripe_customer_id, price_id, meter_id,
     usage_type, price, interval, interval_count, current_period_start, current_period_end)
SELECT it->>'id', s.stripe_subscription_id, s.stripe_customer_id, it->'price'->>'id',
       it->'price'->'recurring'->>'meter', it->'price'->'recurring'->>'usage_type', it->'price',
       it->'price'->'recurring'->>'interval', (it->'price'->'recurring'->>'interval_count')::integer,
       to_timestamp((it->>'current_period_start')::bigint), to_timestamp((it->>'current_period_end')::bigint)
  FROM billing.subscriptions s, jsonb_array_elements(s.raw->'items'->'data') AS it
 WHERE jsonb_typeof(s.raw->'items'->'data') = 'array' AND jsonb_typeof(it->'price') = 'object'
ON CONFLICT (stripe_subscription_item_id) DO NOTHING;
