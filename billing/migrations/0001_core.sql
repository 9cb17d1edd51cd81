-- Core schema of billing reconciliation. Applied once, in order, by `billing-recon migrate`.
-- App-facing contract (stable): billing.customers and billing.usage_events.

CREATE SCHEMA IF NOT EXISTS billing;

-- Internal customer id <-> Stripe customer id.
CREATE TABLE billing.customers (
    customer_id         text PRIMARY KEY,
    stripe_customer_id  text UNIQUE,
    email               text,
    name                text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The application's usage log (the ledger). Idempotent by request_id: a duplicate submission
-- only bumps dedupe_count, it is never stored twice.
CREATE TABLE billing.usage_events (
    request_id    text PRIMARY KEY,
    customer_id   text NOT NULL REFERENCES billing.customers (customer_id),
    meter         text NOT NULL,                 -- Stripe meter event name
    quantity      numeric NOT NULL,
    occurred_at   timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    dedupe_count  integer NOT NULL DEFAULT 0,
    source        text
);
CREATE INDEX usage_events_key_idx ON billing.usage_events (customer_id, meter, occurred_at);

-- Enforcement counters per (customer, meter, billing period), with an optional quota.
CREATE TABLE billing.usage_counters (
    customer_id   text NOT NULL REFERENCES billing.customers (customer_id),
    meter         text NOT NULL,
    period_start  date NOT NULL,
    period_end    date NOT NULL,                 -- exclusive
    value         numeric NOT NULL DEFAULT 0,
    quota         numeric,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, meter, period_start),
    CHECK (period_end > period_start)
);

-- Outbox / ledger of every meter event we send to Stripe. The identifier is deterministic from
-- the business key and the correction, and is written here *before* the event is sent: this is
-- what keeps corrections exactly-once beyond Stripe's 24 h identifier window.
CREATE TABLE billing.stripe_usage_pushes (
    identifier          text PRIMARY KEY,
    customer_id         text NOT NULL,
    stripe_customer_id  text NOT NULL,
    meter               text NOT NULL,
    usage_day           date NOT NULL,           -- the UTC day (summary window) it belongs to
    value               numeric NOT NULL,
    event_timestamp     timestamptz NOT NULL,    -- the meter event's timestamp
    kind                text NOT NULL CHECK (kind IN ('delta', 'repush', 'compensation')),
    status              text NOT NULL CHECK (status IN ('planned', 'sent', 'confirmed', 'cancelled', 'failed')),
    replaces            text,
    run_id              text,
    workflow_id         text,
    workflow_run_id     text,
    planned_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    settled_at          timestamptz,             -- confirmed by a summary
    cancelled_at        timestamptz,
    error               text
);
CREATE INDEX stripe_usage_pushes_key_idx ON billing.stripe_usage_pushes (customer_id, meter, usage_day);
CREATE INDEX stripe_usage_pushes_open_idx ON billing.stripe_usage_pushes (status) WHERE status IN ('planned', 'sent');

-- Local mirror of Stripe objects; last_event_at guards against out-of-order overwrites.
CREATE TABLE billing.subscriptions (
    stripe_subscription_id  text PRIMARY KEY,
    stripe_customer_id      text NOT NULL,
    customer_id             text REFERENCES billing.customers (customer_id),
    status                  text NOT NULL,
    current_period_start    timestamptz,
    current_period_end      timestamptz,
    cancel_at_period_end    boolean NOT NULL DEFAULT false,
    items                   jsonb NOT NULL DEFAULT '[]',
    raw                     jsonb,
    stripe_created          timestamptz,
    last_event_at           timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer_idx ON billing.subscriptions (stripe_customer_id);

CREATE TABLE billing.invoices (
    stripe_invoice_id       text PRIMARY KEY,
    stripe_customer_id      text NOT NULL,
    stripe_subscription_id  text,
    status                  text,
    currency                text,
    amount_due              bigint,              -- minor units
    amount_paid             bigint,
    period_start            timestamptz,
    period_end              timestamptz,
    raw                     jsonb,
    stripe_created          timestamptz,
    last_event_at           timestamptz,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Webhook inbox: primary key = Stripe event id.
CREATE TABLE billing.stripe_events (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    created      timestamptz NOT NULL,
    payload      jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'processed', 'ignored', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    error        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
CREATE INDEX stripe_events_status_idx ON billing.stripe_events (status, received_at);

-- Credits: balance can never go negative; every grant/debit has a unique source.
CREATE TABLE billing.credit_balances (
    customer_id  text PRIMARY KEY REFERENCES billing.customers (customer_id),
    balance      bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),   -- minor units
    currency     text NOT NULL DEFAULT 'usd',
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.credit_ledger (
    id           bigserial PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES billing.customers (customer_id),
    amount       bigint NOT NULL,                -- minor units; grants > 0, debits < 0
    source       text NOT NULL UNIQUE,           -- business key (e.g. invoice id + reason)
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Every reconciliation run (run_id = the Temporal workflow id), its window, mode and counts.
CREATE TABLE billing.reconciliation_runs (
    run_id           text PRIMARY KEY,
    workflow_run_id  text,
    kind             text NOT NULL DEFAULT 'usage',
    mode             text NOT NULL CHECK (mode IN ('dry-run', 'apply', 'plan')),
    window_start     date NOT NULL,
    window_end       date NOT NULL,          -- inclusive last UTC day
    customers_filter text[],
    meters_filter    text[],
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'awaiting_approval', 'applying', 'verifying', 'completed', 'rejected', 'failed')),
    counts           jsonb NOT NULL DEFAULT '{}',
    approved_by      text,
    rejected_by      text,
    decision_reason  text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    error            text
);

-- One row per finding (per key) in a run; the plan's corrective action lives beside it.
CREATE TABLE billing.discrepancies (
    run_id              text NOT NULL REFERENCES billing.reconciliation_runs (run_id) ON DELETE CASCADE,
    discrepancy_key     text NOT NULL,       -- deterministic: kind|customer|meter|day-or-period
    kind                text NOT NULL,
    customer_id         text NOT NULL,
    stripe_customer_id  text,
    meter               text NOT NULL,
    usage_day           date,
    period_start        date,
    ledger_value        numeric,
    counter_value       numeric,
    pushed_value        numeric,
    stripe_value        numeric,
    diff                numeric,
    diff_pct            numeric,
    beyond_epsilon      boolean NOT NULL DEFAULT false,
    action              text,                -- what the plan does about it
    action_params       jsonb,
    status              text NOT NULL CHECK (status IN ('observed', 'proposed', 'held', 'approved', 'applied', 'pending', 'skipped', 'rejected', 'failed', 'unfixable')),
    detail              text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, discrepancy_key)
);
CREATE INDEX discrepancies_run_status_idx ON billing.discrepancies (run_id, status);
CREATE INDEX discrepancies_run_customer_idx ON billing.discrepancies (run_id, customer_id);

CREATE TABLE billing.audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    action          text NOT NULL,
    entity_type     text NOT NULL,
    entity_id       text NOT NULL,
    before          jsonb,
    after           jsonb,
    reason          text,
    workflow_id     text,
    run_id          text,
    correlation_id  text,
    idempotency_key text UNIQUE              -- the same corrective write is audited once
);
CREATE INDEX audit_log_entity_idx ON billing.audit_log (entity_type, entity_id);
CREATE INDEX audit_log_workflow_idx ON billing.audit_log (workflow_id);
