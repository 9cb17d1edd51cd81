"""`python -m console`: the console with settings from the environment (the local stack starts it
this way; operators use `billing-recon console`)."""

import logging

from billing.database_url import resolve_database_url
from billing.settings import get_settings
from common.client import exit_skipping_finalization
from console.app import serve
from console.settings import get_console_settings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
serve(get_console_settings(), resolve_database_url(get_settings()))
exit_skipping_finalization(0)
