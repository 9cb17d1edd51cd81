-- Resync family (ResyncSubscriptions, RepairCredits, AdjustCredits).

-- What a run has already seen, by kind: Stripe subscription ids (so local rows Stripe never
-- listed can be found without holding 100k ids in a workflow) and checkout sessions (so a session
-- announced by several events, or by Stripe and the inbox, is examined once). Scratch state of a
-- run, deleted when the run ends; it survives worker crashes so a resumed run keeps its place.
CREATE TABLE billing.run_seen (
    run_id  text NOT NULL,
    kind    text NOT NULL,
    key     text NOT NULL,
    PRIMARY KEY (run_id, kind, key)
);

-- The checkout <-> ledger checks look grants up by session.
CREATE INDEX credit_ledger_checkout_idx ON billing.credit_ledger (checkout_session_id)
    WHERE checkout_session_id IS NOT NULL;
