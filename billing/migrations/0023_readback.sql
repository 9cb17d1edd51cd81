-- The rolling read-back (readback/, docs/reconciliation.md "Three paths"): every (customer,
-- meter) key is compared with Stripe's summaries once per cycle, in slices of customers spread
-- over the cycle, its reads held to a share of the summary endpoint's limit by a budget lane.

-- A lane: a share of one endpoint's limit that one kind of work may use, on top of the account's
-- and the endpoint's own buckets. Its bucket is '<lane>:<endpoint>' in stripe_budget_usage; its
-- cap is floor(endpoint limit x p_share), at least 1. The place is found in the first second
-- where all three have room, in one call, so the lane holds across every worker.
CREATE OR REPLACE FUNCTION billing.stripe_budget_slot(p_endpoint text, p_lane text, p_share numeric)
RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    share    numeric;
    dflt     numeric;
    lane     text := p_lane || ':' || p_endpoint;
    own      boolean;
    now_ts   double precision := extract(epoch FROM clock_timestamp());
    sec      bigint := floor(extract(epoch FROM clock_timestamp()));
    cap_a    integer;
    cap_e    integer;
    cap_l    integer;
    used_a   integer;
    used_e   integer;
    used_l   integer;
    at       double precision;
BEGIN
    IF p_share IS NULL OR p_share <= 0 OR p_share > 1 THEN
        RAISE EXCEPTION 'budget lane share must be in (0, 1], got %', p_share USING ERRCODE = '22023';
    END IF;
    SELECT reserved_share, endpoint_default INTO share, dflt FROM billing.stripe_budget_settings FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO billing.stripe_budget_settings (id) VALUES (true) ON CONFLICT DO NOTHING;
        SELECT reserved_share, endpoint_default INTO share, dflt FROM billing.stripe_budget_settings FOR UPDATE;
    END IF;
    INSERT INTO billing.stripe_budget (bucket, ops_per_second)
    SELECT wanted, dflt FROM unnest(ARRAY['account', p_endpoint]) AS wanted
     WHERE NOT EXISTS (SELECT 1 FROM billing.stripe_budget WHERE bucket = wanted)
    ON CONFLICT DO NOTHING;
    SELECT greatest(1, floor(ops_per_second * (1 - share)))::integer INTO cap_a
      FROM billing.stripe_budget WHERE bucket = 'account';
    SELECT greatest(1, floor(ops_per_second * (1 - share)))::integer,
           greatest(1, floor(ops_per_second * p_share))::integer, own_bucket INTO cap_e, cap_l, own
      FROM billing.stripe_budget WHERE bucket = p_endpoint;
    IF own THEN
        cap_a := 2147483647;  -- an endpoint with its own bucket is not counted in the account's
    END IF;
    LOOP
        SELECT coalesce(max(used) FILTER (WHERE bucket = 'account'), 0),
               coalesce(max(used) FILTER (WHERE bucket = p_endpoint), 0),
               coalesce(max(used) FILTER (WHERE bucket = lane), 0)
          INTO used_a, used_e, used_l
          FROM billing.stripe_budget_usage WHERE second = sec AND bucket IN ('account', p_endpoint, lane);
        EXIT WHEN used_a < cap_a AND used_e < cap_e AND used_l < cap_l;
        sec := sec + 1;
    END LOOP;
    INSERT INTO billing.stripe_budget_usage (bucket, second, used)
    SELECT b, sec, 1 FROM unnest(CASE WHEN own THEN ARRAY[p_endpoint, lane]
                                      ELSE ARRAY['account', p_endpoint, lane] END) AS b
    ON CONFLICT (bucket, second) DO UPDATE SET used = billing.stripe_budget_usage.used + 1;
    UPDATE billing.stripe_budget SET taken = taken + 1
     WHERE bucket = p_endpoint OR (bucket = 'account' AND NOT own);
    IF used_a = 0 AND used_e = 0 THEN
        DELETE FROM billing.stripe_budget_usage WHERE second < sec - 60;
    END IF;
    -- Spread inside the second like the two-bucket slot: the fullest bucket sets the offset.
    at := sec + greatest(used_a::double precision / cap_a, used_e::double precision / cap_e,
                         used_l::double precision / cap_l);
    RETURN greatest(0, at - now_ts);
END $$;

-- Where the read-back stands: one row. A cycle walks the customers in id order; `cursor` is the
-- last customer a slice has claimed (NULL: the cycle starts at the first).
CREATE TABLE IF NOT EXISTS billing.readback_state (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id),
    cycle            integer NOT NULL DEFAULT 1,
    cycle_started_at timestamptz NOT NULL DEFAULT now(),
    cursor           text,
    slices           integer NOT NULL DEFAULT 0,        -- slices claimed in this cycle
    to_end           boolean NOT NULL DEFAULT false,    -- its last slice is claimed: the next starts a new cycle
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Every slice: the customers (after_customer, through_customer] it covers (NULL through = to the
-- last customer), the ReconcileUsage child that read them, and how it ended. Claimed once per
-- read-back run (`claimed_by` = its workflow id), so a retried claim returns the same slice.
CREATE TABLE IF NOT EXISTS billing.readback_slices (
    cycle            integer NOT NULL,
    slice            integer NOT NULL,
    after_customer   text,
    through_customer text,
    customers        integer NOT NULL,
    meters           integer NOT NULL,
    claimed_by       text NOT NULL UNIQUE,
    child_run_id     text NOT NULL,
    -- Planned pace: the customers the cycle should have covered by the end of this slice, and
    -- whether the lane's share could read them all within the slice's interval.
    on_pace          boolean NOT NULL,
    status           text NOT NULL DEFAULT 'claimed'
                     -- running: its run outlived the read-back's wait (an interval) and goes on by itself;
                     -- observe_only: auto-healing was paused, its customers were read, not corrected.
                     CHECK (status IN ('claimed', 'completed', 'awaiting_approval', 'running', 'observe_only',
                                       'failed')),
    error            text,
    counts           jsonb,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (cycle, slice)
);

-- Completed cycles: when each started and ended, for `readback status`, metrics and the docs'
-- coverage promise (every key once per cycle).
CREATE TABLE IF NOT EXISTS billing.readback_cycles (
    cycle        integer PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    slices       integer NOT NULL,
    customers    integer NOT NULL,
    failed_slices integer NOT NULL
);

-- A run over a range of customers (a read-back slice) says so, so that what reads "which runs
-- covered this customer" (daily checks, `customer show`, the incident report) counts it only
-- for its own customers. Bounds compare with COLLATE "C" (byte order: Python's str order too).
ALTER TABLE billing.reconciliation_runs ADD COLUMN IF NOT EXISTS customers_after text;
ALTER TABLE billing.reconciliation_runs ADD COLUMN IF NOT EXISTS customers_through text;

-- Live mode gives meter events a bucket of their own (1,000/s) outside the account's 100/s; in
-- test mode they count toward the account's 25/s. An endpoint row with own_bucket = true is
-- limited by its own bucket only (`billing-recon budget set --own-bucket create_meter_event`).
ALTER TABLE billing.stripe_budget ADD COLUMN IF NOT EXISTS own_bucket boolean NOT NULL DEFAULT false;

-- The one-bucket slot of 0020, now leaving an own-bucket endpoint out of the account's bucket.
CREATE OR REPLACE FUNCTION billing.stripe_budget_slot(p_endpoint text) RETURNS double precision
LANGUAGE plpgsql AS $$
DECLARE
    share    numeric;
    dflt     numeric;
    own      boolean;
    now_ts   double precision := extract(epoch FROM clock_timestamp());
    sec      bigint := floor(extract(epoch FROM clock_timestamp()));
    cap_a    integer;
    cap_e    integer;
    used_a   integer;
    used_e   integer;
    at       double precision;
BEGIN
    SELECT reserved_share, endpoint_default INTO share, dflt FROM billing.stripe_budget_settings FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO billing.stripe_budget_settings (id) VALUES (true) ON CONFLICT DO NOTHING;
        SELECT reserved_share, endpoint_default INTO share, dflt FROM billing.stripe_budget_settings FOR UPDATE;
    END IF;
    INSERT INTO billing.stripe_budget (bucket, ops_per_second)
    SELECT wanted, dflt FROM unnest(ARRAY['account', p_endpoint]) AS wanted
     WHERE NOT EXISTS (SELECT 1 FROM billing.stripe_budget WHERE bucket = wanted)
    ON CONFLICT DO NOTHING;
    SELECT greatest(1, floor(ops_per_second * (1 - share)))::integer INTO cap_a
      FROM billing.stripe_budget WHERE bucket = 'account';
    SELECT greatest(1, floor(ops_per_second * (1 - share)))::integer, own_bucket INTO cap_e, own
      FROM billing.stripe_budget WHERE bucket = p_endpoint;
    IF own THEN
        cap_a := 2147483647;  -- not counted in the account's bucket
    END IF;
    LOOP
        SELECT coalesce(max(used) FILTER (WHERE bucket = 'account'), 0),
               coalesce(max(used) FILTER (WHERE bucket = p_endpoint), 0)
          INTO used_a, used_e
          FROM billing.stripe_budget_usage WHERE second = sec AND bucket IN ('account', p_endpoint);
        EXIT WHEN used_a < cap_a AND used_e < cap_e;
        sec := sec + 1;
    END LOOP;
    INSERT INTO billing.stripe_budget_usage (bucket, second, used)
    SELECT b, sec, 1 FROM unnest(CASE WHEN own THEN ARRAY[p_endpoint] ELSE ARRAY['account', p_endpoint] END) AS b
    ON CONFLICT (bucket, second) DO UPDATE SET used = billing.stripe_budget_usage.used + 1;
    UPDATE billing.stripe_budget SET taken = taken + 1
     WHERE bucket = p_endpoint OR (bucket = 'account' AND NOT own);
    IF used_a = 0 AND used_e = 0 THEN
        DELETE FROM billing.stripe_budget_usage WHERE second < sec - 60;
    END IF;
    at := sec + CASE WHEN own THEN used_e::double precision / cap_e
                     ELSE greatest(used_a::double precision / cap_a, used_e::double precision / cap_e) END;
    RETURN greatest(0, at - now_ts);
END $$;
