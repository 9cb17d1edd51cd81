-- The Stripe circuit breaker (circuit/). Every worker adds up its Stripe outcomes in memory
-- and flushes them here every few seconds, one row per (worker, second); the one StripeCircuit
-- workflow sums them over the window and decides. Its state is one row, read by the metrics
-- collector (billing_stripe_circuit_state) and `billing-recon status`.
CREATE TABLE IF NOT EXISTS billing.stripe_call_tally (
    worker    text NOT NULL,
    bucket    timestamptz NOT NULL,
    requests  integer NOT NULL DEFAULT 0,
    errors    integer NOT NULL DEFAULT 0,
    by_reason jsonb NOT NULL DEFAULT '{}',   -- error reason -> count (5xx, network, 429, meter_error)
    PRIMARY KEY (worker, bucket)
);
CREATE INDEX IF NOT EXISTS stripe_call_tally_bucket_idx ON billing.stripe_call_tally (bucket);

CREATE TABLE IF NOT EXISTS billing.stripe_circuit (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    state             text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    since             timestamptz NOT NULL DEFAULT now(),  -- of the current state
    opened_at         timestamptz,                         -- start of the current open episode
    reason            text,
    -- The open episode paused auto-healing itself (actor circuit-breaker): only then does
    -- closing resume it.
    paused_by_circuit boolean NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO billing.stripe_circuit (id) VALUES (true) ON CONFLICT DO NOTHING;
