-- The application's way to map its customer id to a Stripe customer (README "Ingestion contract"):
--
--     SELECT billing.link_customer('acme', 'cus_...');   -- or ('acme', NULL): no Stripe customer yet
--
-- Idempotent, keyed on the Stripe customer id. The webhook receiver creates a row for a Stripe
-- customer it hears of before the application maps it; without `metadata.customer_id` on the
-- Stripe customer that row's customer_id is the Stripe id (a placeholder). A plain
-- `INSERT INTO billing.customers` then collided with it (stripe_customer_id is unique) and the
-- customer stayed known as `cus_...` for good. link_customer re-keys such a placeholder to the
-- application's id and moves every row that names it (subscriptions, credits, usage, the push
-- outbox, allocations, ...) in the same transaction; it never takes a Stripe customer from
-- another application id, nor gives an application id a second Stripe customer (both raise).
--
-- Why a function and not `ON UPDATE CASCADE` foreign keys: several tables name the customer
-- without a foreign key (the push outbox `stripe_usage_pushes`, whose sums per customer keep
-- corrections exactly-once, and run findings); a cascade would leave them behind and the usage
-- reconciliation would push that usage again. And when the application's id already has a row
-- (created before its Stripe customer, with usage), the two rows must be merged, which no
-- UPDATE of a primary key can do.
--
-- Concurrency: it takes the transaction advisory lock the webhook handlers take on the Stripe
-- customer (`stripe:<cus id>`, webhooks/activities.py `lock_object`) before reading either row,
-- so a `customer.created` (or any event that creates the customer) processed at the same moment
-- commits entirely before or entirely after it; either order ends with one row, the
-- application's id.

-- Every row naming customer `p_from` now names `p_to` (which exists). Rows keyed by the customer
-- are merged: balances and counters add up. The audit log keeps its history as written.
CREATE FUNCTION billing.move_customer_rows(p_from text, p_to text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    n bigint;
    moved bigint := 0;
BEGIN
    INSERT INTO billing.credit_balances AS b (customer_id, balance, currency, updated_at)
        SELECT p_to, balance, currency, now() FROM billing.credit_balances WHERE customer_id = p_from
        ON CONFLICT (customer_id) DO UPDATE SET balance = b.balance + EXCLUDED.balance, updated_at = now();
    DELETE FROM billing.credit_balances WHERE customer_id = p_from;
    GET DIAGNOSTICS n = ROW_COUNT;
    moved := moved + n;
    INSERT INTO billing.usage_counters AS c (customer_id, meter, period_start, period_end, value, quota, updated_at)
        SELECT p_to, meter, period_start, period_end, value, quota, now()
          FROM billing.usage_counters WHERE customer_id = p_from
        ON CONFLICT (customer_id, meter, period_start) DO UPDATE
            SET value = c.value + EXCLUDED.value, quota = coalesce(c.quota, EXCLUDED.quota), updated_at = now();
    DELETE FROM billing.usage_counters WHERE customer_id = p_from;
    GET DIAGNOSTICS n = ROW_COUNT;
    moved := moved + n;
    -- Every other table of the schema with a customer_id column (new tables included).
    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
          JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
         WHERE c.table_schema = 'billing' AND c.column_name = 'customer_id' AND tb.table_type = 'BASE TABLE'
           AND c.table_name NOT IN ('customers', 'credit_balances', 'usage_counters', 'audit_log')
         ORDER BY c.table_name
    LOOP
        EXECUTE format('UPDATE billing.%I SET customer_id = $1 WHERE customer_id = $2', t.table_name)
            USING p_to, p_from;
        GET DIAGNOSTICS n = ROW_COUNT;
        moved := moved + n;
    END LOOP;
    RETURN moved;
END;
$$;

-- Returns what it did: 'unchanged', 'created' (a new row), 'linked' (the application's row, which
-- had no Stripe customer, now has this one) or 'rekeyed' (the receiver's placeholder now carries
-- the application's id, its rows moved; audited `customer.link`).
CREATE FUNCTION billing.link_customer(p_customer_id text, p_stripe_customer_id text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    by_stripe billing.customers%ROWTYPE;
    by_id billing.customers%ROWTYPE;
    have_id boolean;
    moved bigint;
BEGIN
    IF p_customer_id IS NULL OR btrim(p_customer_id) = '' THEN
        RAISE EXCEPTION 'link_customer: customer_id must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_stripe_customer_id IS NOT NULL AND btrim(p_stripe_customer_id) = '' THEN
        RAISE EXCEPTION 'link_customer: stripe_customer_id must be NULL or a Stripe customer id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_stripe_customer_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('stripe:' || p_stripe_customer_id, 0));
    END IF;
    SELECT * INTO by_id FROM billing.customers WHERE customer_id = p_customer_id FOR UPDATE;
    have_id := FOUND;
    IF p_stripe_customer_id IS NULL THEN
        IF have_id THEN
            RETURN 'unchanged';
        END IF;
        INSERT INTO billing.customers (customer_id) VALUES (p_customer_id);
        RETURN 'created';
    END IF;

    SELECT * INTO by_stripe FROM billing.customers WHERE stripe_customer_id = p_stripe_customer_id FOR UPDATE;
    IF NOT FOUND THEN
        IF NOT have_id THEN
            INSERT INTO billing.customers (customer_id, stripe_customer_id) VALUES (p_customer_id, p_stripe_customer_id);
            RETURN 'created';
        END IF;
        IF by_id.stripe_customer_id IS NOT NULL THEN
            RAISE EXCEPTION 'link_customer: customer % is linked to Stripe customer %, not %',
                p_customer_id, by_id.stripe_customer_id, p_stripe_customer_id USING ERRCODE = 'unique_violation';
        END IF;
        UPDATE billing.customers SET stripe_customer_id = p_stripe_customer_id, updated_at = now()
         WHERE customer_id = p_customer_id;
        RETURN 'linked';
    END IF;

    IF by_stripe.customer_id = p_customer_id THEN
        RETURN 'unchanged';
    END IF;
    IF by_stripe.customer_id <> by_stripe.stripe_customer_id THEN
        -- Mapped to another application id (by the application, or by the Stripe customer's
        -- metadata): never taken away.
        RAISE EXCEPTION 'link_customer: Stripe customer % is linked to customer %, not %',
            p_stripe_customer_id, by_stripe.customer_id, p_customer_id USING ERRCODE = 'unique_violation';
    END IF;
    IF have_id AND by_id.stripe_customer_id IS NOT NULL THEN
        RAISE EXCEPTION 'link_customer: customer % is linked to Stripe customer %, not %',
            p_customer_id, by_id.stripe_customer_id, p_stripe_customer_id USING ERRCODE = 'unique_violation';
    END IF;

    -- The receiver's placeholder (customer_id = its Stripe id): re-key it to the application's id.
    UPDATE billing.customers SET stripe_customer_id = NULL WHERE customer_id = by_stripe.customer_id;
    IF have_id THEN
        UPDATE billing.customers
           SET stripe_customer_id = p_stripe_customer_id, email = coalesce(email, by_stripe.email),
               name = coalesce(name, by_stripe.name), deleted_at = by_stripe.deleted_at,
               stripe_synced_at = by_stripe.stripe_synced_at, updated_at = now()
         WHERE customer_id = p_customer_id;
    ELSE
        INSERT INTO billing.customers
            (customer_id, stripe_customer_id, email, name, created_at, updated_at, deleted_at, stripe_synced_at)
        VALUES (p_customer_id, p_stripe_customer_id, by_stripe.email, by_stripe.name, by_stripe.created_at, now(),
                by_stripe.deleted_at, by_stripe.stripe_synced_at);
    END IF;
    moved := billing.move_customer_rows(by_stripe.customer_id, p_customer_id);
    DELETE FROM billing.customers WHERE customer_id = by_stripe.customer_id;
    INSERT INTO billing.audit_log
        (actor, action, entity_type, entity_id, customer_id, before, after, reason, idempotency_key)
    VALUES (
        coalesce(nullif(current_setting('billing.actor', true), ''), session_user), 'customer.link', 'customer',
        p_customer_id, p_customer_id,
        jsonb_build_object('customer_id', by_stripe.customer_id, 'stripe_customer_id', p_stripe_customer_id),
        jsonb_build_object('customer_id', p_customer_id, 'stripe_customer_id', p_stripe_customer_id,
                           'merged_into_existing', have_id, 'rows_moved', moved),
        'the webhook receiver''s placeholder re-keyed to the application''s customer id',
        'customer-link:' || p_stripe_customer_id || ':' || by_stripe.customer_id || '->' || p_customer_id)
    ON CONFLICT (idempotency_key) DO NOTHING;
    RETURN 'rekeyed';
END;
$$;
