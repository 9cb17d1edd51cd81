-- A webhook event that failed for good can be dismissed by an operator
-- (`billing-recon events dismiss EVT --reason R --actor A`, the DismissStripeEvent workflow,
-- audited `event.dismiss`): a new inbox status `dismissed`, which replays and the inbox sweep
-- skip, with who dismissed it, when and why. The status CHECK of 0001 (an unnamed column
-- constraint, `stripe_events_status_check`) is replaced by a named one with the new status.

ALTER TABLE billing.stripe_events DROP CONSTRAINT IF EXISTS stripe_events_status_check;
ALTER TABLE billing.stripe_events ADD CONSTRAINT stripe_events_status_valid
    CHECK (status IN ('received', 'processed', 'ignored', 'failed', 'dismissed'));

ALTER TABLE billing.stripe_events
    ADD COLUMN dismissed_at    timestamptz,
    ADD COLUMN dismissed_by    text,
    ADD COLUMN dismiss_reason  text;
