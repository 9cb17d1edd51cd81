"""Production code never imports the dev stack: the worker, the receiver and every CLI command
but `dev`/`demo` run without loading `devstack` (they find the stack's database through
billing.database_url)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import worker, webhooks.app, starter.cli
starter.cli._mount()
loaded = sorted(m for m in sys.modules if m == "devstack" or m.startswith("devstack."))
print(loaded)
"""


def test_worker_receiver_and_cli_do_not_import_devstack() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
