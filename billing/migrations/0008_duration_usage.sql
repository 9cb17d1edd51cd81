-- Duration usage (issue: metered allocations). Contract: docs/durations.md; Python helper:
-- allocations/contract.py. The application writes allocations, rates, usage records and payment
-- sessions; ReconcileAllocations reads them and repairs what drifted. Every status that SQL
-- constrains here is an enum in allocations/types.py too.

-- What a resource costs, per resource class, from a point in time. A usage record is priced with
-- the rate in effect at its start_time (a price change never re-prices running usage).
CREATE TABLE billing.allocation_rates (
    resource_class  text NOT NULL CHECK (resource_class <> ''),
    effective_from  timestamptz NOT NULL,
    rate_minor      numeric NOT NULL CHECK (rate_minor >= 0 AND rate_minor < 1e12),  -- also refuses NaN
    unit            text NOT NULL CHECK (unit IN ('second', 'minute', 'hour')),      -- rate_minor per unit
    currency        text NOT NULL DEFAULT 'usd',
    meter           text NOT NULL CHECK (meter <> ''),      -- Stripe meter event name of the slices
    meter_unit      text NOT NULL DEFAULT 'minute' CHECK (meter_unit IN ('second', 'minute', 'hour')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resource_class, effective_from)
);

-- An allocation (a VM, a GPU, a seat) and the times of its status changes.
CREATE TABLE billing.allocations (
    allocation_id      text PRIMARY KEY CHECK (allocation_id <> ''),
    customer_id        text NOT NULL REFERENCES billing.customers (customer_id),
    resource_class     text NOT NULL CHECK (resource_class <> ''),
    status             text NOT NULL CHECK (status IN ('active', 'releasing', 'released', 'release_failed')),
    activated_at       timestamptz NOT NULL,
    releasing_at       timestamptz CHECK (releasing_at >= activated_at),
    released_at        timestamptz CHECK (released_at >= activated_at),
    release_failed_at  timestamptz CHECK (release_failed_at >= activated_at),
    status_changed_at  timestamptz NOT NULL CHECK (status_changed_at >= activated_at),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX allocations_page_idx ON billing.allocations (customer_id, allocation_id);

-- A duration usage record: opened when the allocation starts, closed (end_time) when released.
-- last_billed_at and billed_cost_minor belong to the biller (helper or ReconcileAllocations):
-- the end of the last billed slice and the sum of its debits. accrued_cost_minor is what the
-- application believes the closed record costs (optional; compared with rate x duration).
CREATE TABLE billing.duration_usage (
    usage_id            text PRIMARY KEY CHECK (usage_id <> '' AND length(usage_id) <= 120),
    allocation_id       text NOT NULL REFERENCES billing.allocations (allocation_id),
    start_time          timestamptz NOT NULL,
    end_time            timestamptz CHECK (end_time >= start_time),
    last_billed_at      timestamptz CHECK (last_billed_at >= start_time),
    billed_cost_minor   bigint NOT NULL DEFAULT 0 CHECK (billed_cost_minor >= 0),
    accrued_cost_minor  bigint CHECK (accrued_cost_minor >= 0),
    opened_by           text NOT NULL DEFAULT 'app',
    closed_by           text,
    close_flag          text,             -- e.g. release_time_unknown: closed at "now" by the tool
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time IS NULL OR last_billed_at IS NULL OR last_billed_at <= end_time)
);
-- At most one open record per allocation: opening a missing one is exactly-once.
CREATE UNIQUE INDEX duration_usage_one_open_idx ON billing.duration_usage (allocation_id) WHERE end_time IS NULL;
CREATE INDEX duration_usage_allocation_idx ON billing.duration_usage (allocation_id, start_time);

-- Payment sessions (checkouts) the application tracks; a completed one is credited once.
CREATE TABLE billing.payment_sessions (
    session_id                  text PRIMARY KEY CHECK (session_id <> ''),
    customer_id                 text NOT NULL REFERENCES billing.customers (customer_id),
    stripe_checkout_session_id  text UNIQUE,          -- cs_...; verified with Stripe before crediting
    amount_minor                bigint NOT NULL CHECK (amount_minor > 0),
    currency                    text NOT NULL DEFAULT 'usd',
    status                      text NOT NULL CHECK (status IN ('open', 'completed', 'failed_reconcile', 'expired')),
    ledger_entry_id             bigint,                -- the credit in billing.duration_ledger
    completed_at                timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    CHECK (ledger_entry_id IS NULL OR status = 'completed')
);
CREATE INDEX payment_sessions_page_idx ON billing.payment_sessions (customer_id, session_id);

-- The ledger of duration billing: one debit per (usage record, slice), one credit per completed
-- payment session. `source` is the business key (unique): nothing is ever posted twice.
CREATE TABLE billing.duration_ledger (
    id                  bigserial PRIMARY KEY,
    customer_id         text NOT NULL REFERENCES billing.customers (customer_id),
    kind                text NOT NULL CHECK (kind IN ('debit', 'credit')),
    amount_minor        bigint NOT NULL CHECK (amount_minor >= 0),
    currency            text NOT NULL DEFAULT 'usd',
    source              text NOT NULL UNIQUE,     -- debit:<usage_id>:<slice>, credit:<session_id>
    usage_id            text REFERENCES billing.duration_usage (usage_id),
    slice_index         integer CHECK (slice_index >= 0),
    slice_start         timestamptz,
    slice_end           timestamptz,
    payment_session_id  text REFERENCES billing.payment_sessions (session_id),
    actor               text,
    reason              text,
    workflow_id         text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'debit' OR (usage_id IS NOT NULL AND slice_index IS NOT NULL AND slice_end > slice_start)),
    CHECK (kind <> 'credit' OR payment_session_id IS NOT NULL)
);
CREATE UNIQUE INDEX duration_ledger_slice_idx ON billing.duration_ledger (usage_id, slice_index) WHERE kind = 'debit';
CREATE UNIQUE INDEX duration_ledger_payment_idx ON billing.duration_ledger (payment_session_id) WHERE kind = 'credit';
CREATE INDEX duration_ledger_customer_idx ON billing.duration_ledger (customer_id, created_at);

ALTER TABLE billing.payment_sessions
    ADD CONSTRAINT payment_sessions_ledger_fk FOREIGN KEY (ledger_entry_id) REFERENCES billing.duration_ledger (id);

-- Findings of ReconcileAllocations runs (its report and, in plan mode, its stored plan).
CREATE TABLE billing.allocation_findings (
    run_id         text NOT NULL,
    finding_key    text NOT NULL,      -- deterministic: kind:entity
    kind           text NOT NULL,
    customer_id    text NOT NULL,
    allocation_id  text,
    entity_id      text NOT NULL,      -- allocation, usage record or payment session
    action         text NOT NULL,
    status         text NOT NULL CHECK (status IN ('observed', 'proposed', 'applied', 'held', 'skipped', 'unfixable')),
    detail         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, finding_key)
);
CREATE INDEX allocation_findings_allocation_idx ON billing.allocation_findings (allocation_id);
