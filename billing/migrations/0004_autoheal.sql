-- The global auto-healing switch (`billing-recon pause` / `resume`). One row. Every corrective
-- activity reads it before each batch of writes, so a pause takes effect within one batch, and it
-- survives worker and server restarts because it lives here, not in process memory.
CREATE TABLE billing.autoheal_state (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    paused      boolean NOT NULL DEFAULT false,
    since       timestamptz,
    actor       text,
    reason      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO billing.autoheal_state (id) VALUES (true);

-- `billing-recon audit --customer C`: corrective writes name the customer they touched.
ALTER TABLE billing.audit_log ADD COLUMN customer_id text;
CREATE INDEX audit_log_customer_idx ON billing.audit_log (customer_id, at);
CREATE INDEX audit_log_at_idx ON billing.audit_log (at);
