-- One Stripe budget for every worker (billing/budget.py, docs/stripe-budget.md). Stripe limits
-- the account (100 ops/s live, 25 in test mode) and each endpoint (25/s by default); workers
-- limiting themselves alone add up past it. Every request first reserves a place in a second
-- of wall time where both the account's bucket and its endpoint's have room left, with one
-- call of stripe_budget_slot(), and sleeps until its place. Postgres' clock is the one clock:
-- workers' clocks may disagree.

CREATE TABLE IF NOT EXISTS billing.stripe_budget_settings (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Share of every bucket left to the application's own Stripe traffic (checkout, its own
    -- meter events, dashboards): billing-recon uses limit x (1 - share) per second.
    reserved_share   numeric NOT NULL DEFAULT 0.2 CHECK (reserved_share >= 0 AND reserved_share < 1),
    -- The limit of an endpoint without its own row (Stripe: 25/s per endpoint by default).
    endpoint_default numeric NOT NULL DEFAULT 25 CHECK (endpoint_default > 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text
);
INSERT INTO billing.stripe_budget_settings (id) VALUES (true) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS billing.stripe_budget (
    bucket          text PRIMARY KEY,            -- 'account', or an endpoint (the gateway's operation)
    ops_per_second  numeric NOT NULL CHECK (ops_per_second > 0),   -- Stripe's limit for it
    taken           bigint NOT NULL DEFAULT 0,   -- requests let through since the row exists
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text
);
-- Test mode's account limit; live accounts raise it with `billing-recon budget set --account 100`.
INSERT INTO billing.stripe_budget (bucket, ops_per_second) VALUES ('account', 25) ON CONFLICT DO NOTHING;

-- Requests placed per bucket and second of wall time (unix seconds); the last minute is kept.
CREATE TABLE IF NOT EXISTS billing.stripe_budget_usage (
    bucket  text NOT NULL,
    second  bigint NOT NULL,
    used    integer NOT NULL,
    PRIMARY KEY (bucket, second)
);

-- Places one request of `p_endpoint` in the first second, from now on, where the account and the
-- endpoint both have room (each: floor(limit x (1 - reserved share)) requests, at least 1),
-- spread evenly inside that second; returns the seconds the caller waits (0: go now). Callers
-- are serialised by the settings row's lock (a fraction of a millisecond each).
CREATE OR REPLACE FUNCTION billing.stripe_budget_slot(p_endpoint text) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    share    numeric;
    dflt     numeric;
    now_ts   double precision := extract(epoch FROM clock_timestamp());
    sec      bigint := floor(extract(epoch FROM clock_timestamp()));
    cap_a    integer;
    cap_e    integer;
    used_a   integer;
    used_e   integer;
    at       double precision;
BEGIN
    SELECT reserved_share, endpoint_default INTO share, dflt FROM billing.stripe_budget_settings FOR UPDATE;
    IF NOT FOUND THEN  -- the row was deleted: back to its defaults
        INSERT INTO billing.stripe_budget_settings (id) VALUES (true) ON CONFLICT DO NOTHING;
        SELECT reserved_share, endpoint_default INTO share, dflt FROM billing.stripe_budget_settings FOR UPDATE;
    END IF;
    -- A bucket without a row starts at the endpoint default (the account's too, if deleted).
    INSERT INTO billing.stripe_budget (bucket, ops_per_second)
    SELECT wanted, dflt FROM unnest(ARRAY['account', p_endpoint]) AS wanted
     WHERE NOT EXISTS (SELECT 1 FROM billing.stripe_budget WHERE bucket = wanted)
    ON CONFLICT DO NOTHING;
    SELECT greatest(1, floor(ops_per_second * (1 - share)))::integer INTO cap_a
      FROM billing.stripe_budget WHERE bucket = 'account';
    SELECT greatest(1, floor(ops_per_second * (1 - share)))::integer INTO cap_e
      FROM billing.stripe_budget WHERE bucket = p_endpoint;
    LOOP
        SELECT coalesce(max(used) FILTER (WHERE bucket = 'account'), 0),
               coalesce(max(used) FILTER (WHERE bucket = p_endpoint), 0)
          INTO used_a, used_e
          FROM billing.stripe_budget_usage WHERE second = sec AND bucket IN ('account', p_endpoint);
        EXIT WHEN used_a < cap_a AND used_e < cap_e;
        sec := sec + 1;
    END LOOP;
    INSERT INTO billing.stripe_budget_usage (bucket, second, used)
    SELECT b, sec, 1 FROM unnest(ARRAY['account', p_endpoint]) AS b
    ON CONFLICT (bucket, second) DO UPDATE SET used = billing.stripe_budget_usage.used + 1;
    UPDATE billing.stripe_budget SET taken = taken + 1 WHERE bucket IN ('account', p_endpoint);
    IF used_a = 0 AND used_e = 0 THEN
        DELETE FROM billing.stripe_budget_usage WHERE second < sec - 60;
    END IF;
    -- The k-th request of a second goes k/cap into it: no burst at the start of a second.
    at := sec + greatest(used_a::double precision / cap_a, used_e::double precision / cap_e);
    RETURN greatest(0, at - now_ts);
END $$;
