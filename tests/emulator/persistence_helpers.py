"""Emulator subprocesses with a state file, and what a client can observe of one: shared by
test_persistence.py and used to write the saved-state fixture (``python -m
tests.emulator.persistence_helpers DIR``, see fixtures/README.md)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import stripe

from stripe_emulator.admin import EmulatorAdmin

from .helpers import free_port, make_client, make_customer, make_meter, push


class Emulator:
    def __init__(self, state_file: Path, save_interval: float = 5.0) -> None:
        self.state_file = state_file
        self.save_interval = save_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "stripe_emulator", "--port", str(self.port),
            "--rate-limit", "0", "--state-file", str(self.state_file),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMULATOR_")}
        return {**env, "EMULATOR_SAVE_INTERVAL_SECONDS": str(self.save_interval)}

    def start(self) -> Emulator:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env()
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/_emulator/health", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"emulator did not start:\n{out}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        return self.proc.returncode, out.decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def observe(client: stripe.StripeClient, admin: EmulatorAdmin) -> dict[str, Any]:
    """Everything a client can see, as plain data."""
    first = await client.v1.events.list_async(params={"limit": 100})
    events = [e.to_dict() async for e in first.auto_paging_iter()]
    customers = await client.v1.customers.list_async(params={"limit": 100})
    meters = await client.v1.billing.meters.list_async(params={"limit": 100})
    now = await admin.now()
    day = now - now % 86400
    summaries = {}
    for meter in meters.data:
        for cus in customers.data:
            page = await client.v1.billing.meters.event_summaries.list_async(
                meter.id,
                params={
                    "customer": cus.id,
                    "start_time": day - 2 * 86400,
                    "end_time": day + 86400,
                    "value_grouping_window": "day",
                },
            )
            summaries[(meter.id, cus.id)] = [s.to_dict() for s in page.data]
    subs = await client.v1.subscriptions.list_async(params={"status": "all"})
    invoices = await client.v1.invoices.list_async()
    return {
        "now": now,
        "config": await admin.get_config(),
        "events": events,
        "customers": [c.to_dict() for c in customers.data],
        "meters": [m.to_dict() for m in meters.data],
        "summaries": summaries,
        "meter_events": await admin.meter_events(),
        "subscriptions": [s.to_dict() for s in subs.data],
        "invoices": [i.to_dict() for i in invoices.data],
        "webhook_endpoints": [
            w.to_dict() for w in (await client.v1.webhook_endpoints.list_async()).data
        ],
        "stats": await admin.request_stats(),
    }


async def populate(client: stripe.StripeClient, admin: EmulatorAdmin) -> dict[str, Any]:
    await admin.configure(summary_lag_seconds=0, identifier_dedupe_seconds=7200)
    meter = await make_meter(client)
    count_meter = await make_meter(client, "logins", "count")
    product = await client.v1.products.create_async(params={"name": "API"})
    price = await client.v1.prices.create_async(
        params={
            "currency": "usd",
            "unit_amount": 2,
            "product": product.id,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    await client.v1.webhook_endpoints.create_async(
        params={"url": "http://127.0.0.1:9/unreachable", "enabled_events": ["invoice.paid"]}
    )
    a = await make_customer(client, "a@example.com")
    b = await make_customer(client, "b@example.com")
    await client.v1.subscriptions.create_async(
        params={"customer": a.id, "items": [{"price": price.id}]}
    )
    await client.v1.customers.update_async(a.id, params={"metadata": {"tier": "gold"}})
    now = await admin.now()
    for i in range(20):
        await push(client, a.id, str(i), identifier=f"a-{i}", timestamp=now - 86400 - i)
        await push(client, b.id, "2.5", identifier=f"b-{i}", timestamp=now - i)
    await push(client, "cus_unknown", "7", identifier="ghost")  # accepted, never counted
    await client.v1.billing.meter_events.create_async(
        params={"event_name": "logins", "payload": {"stripe_customer_id": b.id}}
    )
    await client.v1.billing.meter_event_adjustments.create_async(
        params={"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "b-3"}}
    )
    await admin.seed_meter_events(
        [{"event_name": "api_calls", "customer": b.id, "value": "1"} for _ in range(500)]
    )
    await admin.advance_clock(3600)
    await admin.freeze_clock(True)  # `now` compares exactly across the restart
    return {"a": a.id, "b": b.id, "meter": meter.id, "count_meter": count_meter.id}


def as_json(observation: dict[str, Any]) -> Any:
    """``observe``'s result as JSON data (summary keys ``meter|customer``), for a fixture."""
    data = {
        **observation,
        "summaries": {f"{m}|{c}": v for (m, c), v in observation["summaries"].items()},
    }
    return json.loads(json.dumps(data, default=str))  # Decimal fields as their text


def comparable(observed: dict[str, Any]) -> dict[str, Any]:
    """``as_json`` data with only the POST request stats: the GET counts include the
    observations' own reads."""
    stats = {k: v for k, v in observed["stats"].items() if k.startswith("POST")}
    return {**observed, "stats": stats}


SAVED_STATE = Path(__file__).parent / "fixtures" / "emulator-state-v1.pickle"
SAVED_OBSERVATION = SAVED_STATE.with_suffix(".observed.json")


async def populate_and_observe(emu: Emulator) -> dict[str, Any]:
    """``populate``, one idempotent request (its replay must survive a restart too), then
    ``{"ids": ..., "observed": as_json(observe(...))}``."""
    client = make_client(emu.url)
    async with EmulatorAdmin(emu.url) as admin:
        ids = await populate(client, admin)
        cus = await client.v1.customers.create_async(
            params={"email": "idem@example.com"}, options={"idempotency_key": "k-1"}
        )
        seen = await observe(client, admin)
    return {"ids": {**ids, "idempotent_customer": cus.id}, "observed": as_json(seen)}


def write_saved_state(folder: Path) -> None:
    """Populate an emulator, record what a client sees, stop it (SIGTERM saves) and keep its
    state file: the fixture later emulator versions must still load."""
    with tempfile.TemporaryDirectory() as tmp:
        emu = Emulator(Path(tmp) / "state.pickle", save_interval=0).start()
        try:
            record = asyncio.run(populate_and_observe(emu))
            code, out = emu.stop(signal.SIGTERM)
            if code not in (0, -signal.SIGTERM):
                raise RuntimeError(out)
        finally:
            emu.kill()
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(emu.state_file, folder / SAVED_STATE.name)
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    (folder / SAVED_OBSERVATION.name).write_text(text)


if __name__ == "__main__":
    write_saved_state(Path(sys.argv[1]) if len(sys.argv) > 1 else SAVED_STATE.parent)
