"""The incident report for finance and the post-incident review (`billing-recon
incident-report`, docs/incident-report.md): read-only, built from the durable records alone.

`queries.py` reads them, `report.py` assembles the report (pure), `render.py` prints it as
Markdown, CSV or JSON. No workflow: nothing here writes or calls Stripe."""
