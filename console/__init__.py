"""The operator console: overview, runs and approvals, customers, audit log, revenue and incident
reports as server-rendered pages (docs/console.md). `billing-recon console` serves it."""
