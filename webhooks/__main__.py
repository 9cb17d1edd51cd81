"""`python -m webhooks`: the receiver with settings from the environment (the local stack
starts it this way; operators use `billing-recon webhooks serve`)."""

import logging

from billing.database_url import resolve_database_url
from billing.settings import get_settings
from common.client import exit_skipping_finalization
from webhooks.app import serve

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
settings = get_settings()
serve(settings, resolve_database_url(settings))
exit_skipping_finalization(0)
