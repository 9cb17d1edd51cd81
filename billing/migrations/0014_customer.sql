-- `billing-recon customer show`: a customer's inbox events. Events about a customer's objects
-- (subscriptions, invoices, checkouts) name it in data.object.customer; without this index the
-- lookup reads the whole inbox. RepairCredits' inbox phase filters on the same expression.
CREATE INDEX IF NOT EXISTS stripe_events_customer_idx
    ON billing.stripe_events ((payload -> 'data' -> 'object' ->> 'customer'), created DESC);
