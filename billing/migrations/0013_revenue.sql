-- Revenue reconciliation (RevenueReconciliation, docs/revenue.md). Its runs are rows of
-- billing.reconciliation_runs with kind 'revenue' (window = since/until, inclusive UTC days).

-- The mirror's refunds: a refund of an invoice's charge, recorded once by its Stripe id (a retried
-- or repeated apply inserts nothing more). The invoice stays `paid` in Stripe when its charge is
-- refunded, so the invoice row alone cannot say what was kept.
CREATE TABLE IF NOT EXISTS billing.invoice_refunds (
    stripe_refund_id   text PRIMARY KEY,
    stripe_invoice_id  text NOT NULL,
    stripe_charge_id   text,
    amount             bigint NOT NULL CHECK (amount > 0),   -- minor units
    currency           text NOT NULL,
    status             text NOT NULL,
    refunded_at        timestamptz NOT NULL,                 -- the refund's `created`
    synced_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS invoice_refunds_invoice_idx ON billing.invoice_refunds (stripe_invoice_id);
CREATE INDEX IF NOT EXISTS invoice_refunds_day_idx ON billing.invoice_refunds (refunded_at);

-- Day lookups of the comparison.
CREATE INDEX IF NOT EXISTS invoices_paid_at_idx ON billing.invoices (paid_at) WHERE paid_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS invoices_voided_at_idx ON billing.invoices (voided_at) WHERE voided_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS invoices_uncollectible_at_idx ON billing.invoices (marked_uncollectible_at)
    WHERE marked_uncollectible_at IS NOT NULL;

-- Scratch state of a run: Stripe's objects it listed (invoices, invoice payments, refunds,
-- balance transactions), keyed by id so a retried page rewrites the same rows. Deleted when the
-- run ends; it survives worker crashes so a resumed run keeps what it read.
CREATE TABLE IF NOT EXISTS billing.revenue_stripe_objects (
    run_id             text NOT NULL,
    object_id          text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('invoice', 'invoice_payment', 'refund', 'balance_transaction')),
    invoice_id         text,          -- invoice: its id; invoice payment: its invoice
    charge_id          text,          -- invoice payment: payment.charge; refund: charge; txn: source
    payment_intent_id  text,          -- invoice payment: payment.payment_intent; refund: payment_intent
    status             text,
    txn_type           text,          -- balance transaction: type
    amount             bigint,        -- invoice, payment: amount_paid; refund, txn: amount
    amount_due         bigint,
    currency           text,
    at                 timestamptz,   -- invoice, payment: status_transitions.paid_at; refund, txn: created
    raw                jsonb,         -- invoices only: what a fix writes to the mirror
    listed_at          timestamptz NOT NULL,
    PRIMARY KEY (run_id, object_id)
);
CREATE INDEX IF NOT EXISTS revenue_stripe_objects_kind_idx ON billing.revenue_stripe_objects (run_id, kind, at);
CREATE INDEX IF NOT EXISTS revenue_stripe_objects_invoice_idx ON billing.revenue_stripe_objects (run_id, invoice_id);

-- Per run, day and invoice: both sides as first observed (before any fix), so a day's totals
-- stay what the run found, also after a crash and a retry.
CREATE TABLE IF NOT EXISTS billing.revenue_invoices (
    run_id             text NOT NULL REFERENCES billing.reconciliation_runs (run_id) ON DELETE CASCADE,
    day                date NOT NULL,
    stripe_invoice_id  text NOT NULL,
    currency           text NOT NULL,
    local_status       text,
    local_paid         bigint NOT NULL,     -- paid(D) of the mirror
    local_refunded     bigint NOT NULL,     -- refunded(D) of the mirror
    stripe_status      text,
    stripe_paid        bigint NOT NULL,     -- paid(D) of Stripe
    stripe_refunded    bigint NOT NULL,     -- refunded(D) of Stripe
    payments_paid      bigint NOT NULL,     -- Stripe's invoice payments paid in D
    out_of_band        bigint NOT NULL,     -- paid(D) not through an invoice payment
    PRIMARY KEY (run_id, day, stripe_invoice_id)
);

-- Per run, day and currency: the table `billing-recon revenue` prints.
CREATE TABLE IF NOT EXISTS billing.revenue_days (
    run_id           text NOT NULL REFERENCES billing.reconciliation_runs (run_id) ON DELETE CASCADE,
    day              date NOT NULL,
    currency         text NOT NULL,
    local_count      integer NOT NULL,
    local_paid       bigint NOT NULL,
    local_refunded   bigint NOT NULL,
    stripe_count     integer NOT NULL,
    stripe_paid      bigint NOT NULL,
    stripe_refunded  bigint NOT NULL,
    payments_paid    bigint NOT NULL,
    out_of_band      bigint NOT NULL,
    balance_net      bigint NOT NULL,       -- charges + refunds (negative) in Stripe's balance, fees excluded
    drift            bigint NOT NULL,       -- (local_paid - local_refunded) - (stripe_paid - stripe_refunded)
    findings         integer NOT NULL,
    PRIMARY KEY (run_id, day, currency)
);

-- One row per (run, invoice, kind): the incident report and the console read these.
CREATE TABLE IF NOT EXISTS billing.revenue_findings (
    run_id              text NOT NULL REFERENCES billing.reconciliation_runs (run_id) ON DELETE CASCADE,
    stripe_invoice_id   text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('missing_locally', 'status_differs', 'amount_differs',
                                                      'paid_twice', 'missing_in_stripe')),
    day                 date NOT NULL,        -- the first day of the run it showed up on
    stripe_customer_id  text,
    customer_id         text,
    currency            text,
    local_status        text,
    stripe_status       text,
    local_amount_paid   bigint,
    stripe_amount_paid  bigint,
    local_refunded      bigint,               -- refunds in the run's range
    stripe_refunded     bigint,
    status              text NOT NULL CHECK (status IN ('observed', 'applied', 'unfixable', 'failed')),
    detail              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, stripe_invoice_id, kind)
);
CREATE INDEX IF NOT EXISTS revenue_findings_invoice_idx ON billing.revenue_findings (stripe_invoice_id);
CREATE INDEX IF NOT EXISTS revenue_findings_day_idx ON billing.revenue_findings (day);
