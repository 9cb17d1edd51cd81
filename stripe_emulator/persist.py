"""Saving the whole store to one file and loading it back (``--state-file``).

File layout: a text header ``stripe-emulator-state\\n<format version>\\n``, then one pickle
(protocol 5) holding only builtins (dict, list, tuple, str, bytes, int, float, bool, None):
no class of ours is pickled, so the file does not depend on the module layout, and loading uses
an unpickler that refuses every class (a file that names one is rejected, nothing is imported).
Meter events are stored as columns (``MeterEventLog.encoded_blocks``).

What is saved: config (with fault ``injected`` counts), clock offset / freeze, the fault RNG
state, every object collection, webhook endpoint secrets, events, meter events (with
cancellations), idempotency records and request stats. Not saved: rate-limit buckets (they
start full), requests in flight, webhook deliveries in progress and their log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import pickle
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .state import Collection, SavedResponse

if TYPE_CHECKING:
    from .state import Store

MAGIC = b"stripe-emulator-state\n"
FORMAT_VERSION = 1
DEFAULT_SAVE_INTERVAL_SECONDS = 5.0


class StateFileError(RuntimeError):
    """The state file cannot be used (unreadable, not a state file, other format version)."""


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in a state file")


def _loads(data: bytes | memoryview) -> Any:
    return _BuiltinsOnly(io.BytesIO(data)).load()


# --- encode -------------------------------------------------------------------------------------


def _config_fields(config: Config) -> dict[str, Any]:
    d = config.to_dict()
    d["faults"] = [{k: v for k, v in f.items() if k != "injected"} for f in d["faults"]]
    return d


def encode(store: Store, initial_config: Config) -> bytes:
    """A consistent snapshot of ``store`` as the file's bytes (call on the event loop thread)."""
    state = {
        "saved_at": time.time(),
        "emulator_now": store.now(),
        "initial_config": _config_fields(initial_config),
        "config": _config_fields(store.config),
        "faults_injected": [f.injected for f in store.config.faults],
        "clock": {"offset": store.clock.offset, "frozen_at": store.clock.frozen_at},
        "rng": store.rng.getstate(),
        "collections": {k: c.objects for k, c in store.collections.items()},
        "webhook_secrets": store.webhook_secrets,
        "events": store.events,
        "idempotency": [
            (scope, v.fingerprint, v.status, v.body, v.headers, v.created)
            for scope, v in store.idempotency.items()
        ],
        "stats": store.stats,
        "meter_events": store.meter_events.encoded_blocks(),
    }
    return MAGIC + f"{FORMAT_VERSION}\n".encode() + pickle.dumps(state, protocol=5)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path.tmp``, fsync, rename over ``path``: a reader (or a crash) sees
    either the previous file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- decode -------------------------------------------------------------------------------------


def read(path: Path) -> dict[str, Any]:
    """The decoded file; StateFileError saying what is wrong otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StateFileError(f"Cannot read emulator state file {path}: {exc}") from exc
    if not raw.startswith(MAGIC):
        raise StateFileError(
            f"{path} is not a Stripe emulator state file (bad header). Move it away or point "
            "--state-file elsewhere."
        )
    nl = raw.find(b"\n", len(MAGIC))
    version_text = raw[len(MAGIC) : nl].decode("ascii", errors="replace") if nl > 0 else "?"
    if version_text != str(FORMAT_VERSION):
        raise StateFileError(
            f"Emulator state file {path} has format version {version_text}; this emulator reads "
            f"version {FORMAT_VERSION}. Delete the file (its Stripe objects are lost) or use the "
            "emulator version that wrote it."
        )
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        state = _loads(memoryview(raw)[nl + 1 :])
        state["meter_events_raw"] = state["meter_events"]
        state["meter_events"] = [_loads(b) for b in state["meter_events"]]
    except Exception as exc:
        raise StateFileError(
            f"Emulator state file {path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
            "Delete it to start empty."
        ) from exc
    finally:
        if gc_was_enabled:
            gc.enable()
    if not isinstance(state, dict):
        raise StateFileError(f"Emulator state file {path} is corrupt (not a mapping).")
    return state


def restore(store: Store, state: dict[str, Any], initial_config: Config) -> list[str]:
    """Replace everything in ``store`` by ``state``. A start option (``initial_config``) that
    differs from the one the file was saved with wins over the saved value; the names of
    those fields are returned."""
    config = Config()
    config.update(state["config"])
    saved_initial = state["initial_config"]
    now_initial = _config_fields(initial_config)
    changed = [k for k in Config.FIELDS if now_initial.get(k) != saved_initial.get(k)]
    if changed:
        config.update({k: now_initial[k] for k in changed})
    store.config = config
    store.reset_state()  # also re-seeds, zeroing the faults' injected counts: put them back
    if "faults" not in changed:
        for fault, n in zip(config.faults, state["faults_injected"], strict=False):
            fault.injected = n
    store.rng.setstate(state["rng"])
    store.clock.offset = float(state["clock"]["offset"])
    store.clock.frozen_at = state["clock"]["frozen_at"]
    for kind, objects in state["collections"].items():
        col = Collection(kind)
        col.objects = objects
        store.collections[kind] = col
    store.webhook_secrets = state["webhook_secrets"]
    store.events = state["events"]
    store.events_by_id = {e["id"]: e for e in store.events}
    store.idempotency = {
        scope: SavedResponse(tuple(fp), status, body, headers, created)
        for scope, fp, status, body, headers, created in state["idempotency"]
    }
    store.stats = state["stats"]
    store.meters_by_event_name = {
        m["event_name"]: m for m in store.col("billing.meter").objects.values()
    }
    gc_was_enabled = gc.isenabled()
    gc.disable()  # 10^6 new records would trigger many useless full collections
    try:
        # Full blocks read back unchanged: the next save reuses their bytes (``raw``).
        store.meter_events.restore_blocks(state["meter_events"], state.get("meter_events_raw", ()))
    finally:
        if gc_was_enabled:
            gc.enable()
    return changed


def _say(message: str) -> None:
    print(f"stripe_emulator: {message}", file=sys.stderr, flush=True)


# --- the saver ----------------------------------------------------------------------------------


class StatePersister:
    """Loads at start, saves on demand, every ``interval`` seconds when something changed, and at
    shutdown. ``store.changes`` counts mutations (every non-GET request, webhook outcomes)."""

    def __init__(
        self,
        store: Store,
        path: Path,
        initial_config: Config,
        interval: float = DEFAULT_SAVE_INTERVAL_SECONDS,
    ) -> None:
        self.store = store
        self.path = Path(path)
        self.initial_config = initial_config
        self.interval = interval
        self.saved_changes = -1
        self.lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_save: dict[str, Any] | None = None

    def load(self) -> bool:
        """Load the file into the store if it exists. Raises StateFileError."""
        if not self.path.exists():
            _say(f"no state file at {self.path} yet: starting empty")
            self.saved_changes = self.store.changes
            return False
        t0 = time.perf_counter()
        state = read(self.path)
        try:
            changed = restore(self.store, state, self.initial_config)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFileError(
                f"Emulator state file {self.path} is inconsistent ({type(exc).__name__}: {exc}). "
                "Delete it to start empty."
            ) from exc
        self.saved_changes = self.store.changes
        n_obj = sum(len(c.objects) for c in self.store.collections.values())
        _say(
            f"restored {n_obj} objects, {len(self.store.events)} events and "
            f"{len(self.store.meter_events)} meter events from {self.path} "
            f"in {time.perf_counter() - t0:.2f}s"
            + (f"; start options override saved config: {', '.join(changed)}" if changed else "")
        )
        return True

    async def save(self) -> dict[str, Any]:
        async with self.lock:
            changes = self.store.changes
            t0 = time.perf_counter()
            data = encode(self.store, self.initial_config)  # on the loop: a consistent snapshot
            encoded = time.perf_counter() - t0
            await asyncio.to_thread(write_atomic, self.path, data)
            self.saved_changes = changes
            self.last_save = {
                "path": str(self.path),
                "bytes": len(data),
                "encode_seconds": round(encoded, 4),
                "seconds": round(time.perf_counter() - t0, 4),
                "meter_events": len(self.store.meter_events),
                "at": time.time(),
            }
            return self.last_save

    @property
    def dirty(self) -> bool:
        return self.store.changes != self.saved_changes

    async def start(self) -> None:
        if self.interval > 0:
            self._stop.clear()
            self._task = asyncio.create_task(self._autosave(), name="emulator-autosave")

    async def _autosave(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            if self._stop.is_set():
                return
            if self.dirty:
                try:
                    await self.save()
                except Exception as exc:  # keep serving; the next tick retries
                    _say(f"periodic save to {self.path} failed: {type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        """Stop the periodic saver (letting a save in progress finish), then save once more."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        info = await self.save()
        _say(f"saved state to {self.path} ({info['bytes']} bytes, {info['seconds']:.2f}s)")
