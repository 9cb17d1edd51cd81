-- Notifications outbox (notify/): one row per (subject, kind), written in the transaction of
-- the state change it reports (a run awaiting approval, failed, drifting; the circuit opening),
-- then delivered by the NotificationDispatcher workflow to every configured target. The primary
-- key is the deduplication: the same run and kind never make a second row. Each target gets the
-- row's `event_id` as its idempotency key (JSON webhook `Idempotency-Key`, PagerDuty
-- `dedup_key`), so a delivery repeated after a crash between send and record is recognised.
CREATE TABLE IF NOT EXISTS billing.notifications (
    dedupe_key       text PRIMARY KEY,           -- '<subject>|<kind>'
    event_id         text NOT NULL UNIQUE,       -- stable id sent to every target
    kind             text NOT NULL,
    subject          text NOT NULL,              -- the run id, or the circuit episode / pause start
    body             jsonb NOT NULL,             -- notify.types.Notification
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'failed', 'no_target')),
    delivered        jsonb NOT NULL DEFAULT '{}',  -- target name -> time it answered 2xx
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX IF NOT EXISTS notifications_due_idx
    ON billing.notifications (next_attempt_at) WHERE status = 'pending';
