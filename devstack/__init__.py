"""The local stack on embedded defaults: Temporal dev server, Postgres, Stripe emulator, worker,
webhook receiver and operator console. Development and tests only: production code never imports this package (it
finds the stack's database through `billing.database_url`).

Everything lives in ONE folder (`settings.state_dir`, default `./.state`):

    <state>/stack.json      what `up` started: pids, process start times, addresses; its
                            top-level `database_url` is read by `billing.database_url`
    <state>/stack.lock      serialises concurrent `up`/`down`
    <state>/logs/<name>.log stdout+stderr of every process
    <state>/pgdata/         embedded Postgres data (only when DATABASE_URL is unset)
    <state>/temporal.db     the dev server's SQLite store (WAL mode)
    <state>/emulator-state.pickle  the Stripe emulator's objects, events and meter events
                            (`--state-file`: saved on SIGTERM and every few seconds when changed)

`up` is idempotent: a component recorded in stack.json whose pid is alive (same process start
time, so a recycled pid does not count) and whose port answers is left alone. `down` stops exactly
what is recorded, newest first, and keeps the data (Postgres, Temporal and Stripe together, so
they stay consistent across `down`/`up`); `down(purge=True)` also deletes the folder.

The functions are synchronous (process management) and safe to call from inside a running event
loop; the `a*` variants run them in a thread for async callers. The typer layer is
`starter.dev`; the demo command calls `up(...)`/`down(...)` directly.

Modules: `config` (StackConfig, names, stack.json models), `processes` (free ports, the one
launcher, stopping), `postgres` (the embedded server), `components` (each component's
`spawn_*`/`start_*`), `api` (up/down/status/info). Test fixtures and benchmarks use
`processes`, `postgres` and the `spawn_*` functions directly.
"""

from devstack.api import adown, aup, down, info, is_alive, status, up
from devstack.config import (
    COMPONENTS,
    CONSOLE,
    EMULATOR,
    EMULATOR_STATE,
    POSTGRES,
    TEMPORAL,
    WEBHOOKS,
    WORKER,
    WORKER_READY_MARKER,
    ComponentRecord,
    ComponentStatus,
    StackConfig,
    StackError,
    StackInfo,
    StackNotRunning,
    StackState,
    StackStatus,
    load_state,
)

__all__ = [
    "COMPONENTS",
    "CONSOLE",
    "EMULATOR",
    "EMULATOR_STATE",
    "POSTGRES",
    "TEMPORAL",
    "WEBHOOKS",
    "WORKER",
    "WORKER_READY_MARKER",
    "ComponentRecord",
    "ComponentStatus",
    "StackConfig",
    "StackError",
    "StackInfo",
    "StackNotRunning",
    "StackState",
    "StackStatus",
    "adown",
    "aup",
    "down",
    "info",
    "is_alive",
    "load_state",
    "status",
    "up",
]
