-- The invoice mirror follows the whole lifecycle (issue "trust at the edges"): every invoice
-- event (created, updated, finalized, paid, payment_succeeded, payment_failed, voided,
-- marked_uncollectible, deleted for drafts) and ResyncInvoices write it, from a fresh read of
-- Stripe. `synced_at` (0003) is the time of that read: a copy read earlier never overwrites a
-- copy read later (the write is skipped), whatever order events, replays and resyncs commit in.

ALTER TABLE billing.invoices
    ADD COLUMN number                   text,
    ADD COLUMN total                    bigint,          -- minor units
    ADD COLUMN amount_remaining         bigint,
    -- Stripe's status_transitions
    ADD COLUMN finalized_at             timestamptz,
    ADD COLUMN paid_at                  timestamptz,
    ADD COLUMN voided_at                timestamptz,
    ADD COLUMN marked_uncollectible_at  timestamptz,
    -- A draft deleted in Stripe (Stripe keeps no object): status 'deleted' here, and when.
    ADD COLUMN deleted_at               timestamptz;

CREATE INDEX invoices_customer_idx ON billing.invoices (stripe_customer_id, stripe_invoice_id);
