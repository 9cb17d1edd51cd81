"""The CLI as an operator runs it: `billing-recon` in a real subprocess. The `cli_env` fixture
(tests/integration/conftest.py) points it at the test stack."""

from __future__ import annotations

import asyncio
import sys


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from starter.cli import main; main()", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()
