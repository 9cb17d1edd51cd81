-- billing.link_customer's row move (0012) knows the tables keyed by the customer that 0021 added:
--   usage_daily       is kept by the usage_events triggers: re-keying the events moves their
--                     quantities to the new key (and bumps changed_seq, so the next tick looks),
--                     so the function must not move the rollup rows itself (that would count
--                     them twice, or collide with the target's row for the same day);
--   usage_sync_queue  queued keys are merged: a key queued for both ids is queued once.
CREATE OR REPLACE FUNCTION billing.move_customer_rows(p_from text, p_to text) RETURNS bigint
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
    INSERT INTO billing.usage_sync_queue (customer_id, meter, usage_day, reason, source, queued_at)
        SELECT p_to, meter, usage_day, reason, source, queued_at
          FROM billing.usage_sync_queue WHERE customer_id = p_from
        ON CONFLICT (customer_id, meter, usage_day) DO NOTHING;
    DELETE FROM billing.usage_sync_queue WHERE customer_id = p_from;
    GET DIAGNOSTICS n = ROW_COUNT;
    moved := moved + n;
    -- Every other table of the schema with a customer_id column (new tables included).
    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
          JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
         WHERE c.table_schema = 'billing' AND c.column_name = 'customer_id' AND tb.table_type = 'BASE TABLE'
           AND c.table_name NOT IN ('customers', 'credit_balances', 'usage_counters', 'audit_log',
                                    'usage_daily', 'usage_sync_queue')
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
