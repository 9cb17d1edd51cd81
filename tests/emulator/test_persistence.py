"""`--state-file`: the whole store survives a restart (SIGTERM saves; the periodic save bounds
what a SIGKILL loses). Each test runs its own emulator subprocesses on a temp file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from devstack.processes import free_port
from stripe_emulator.admin import EmulatorAdmin
from stripe_emulator.persist import FORMAT_VERSION, MAGIC

from .conftest import make_client
from .helpers import make_customer, make_meter, push


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


@pytest.fixture
def emulators() -> Iterator[list[Emulator]]:
    started: list[Emulator] = []
    yield started
    for emu in started:
        emu.kill()


def _new(emulators: list[Emulator], state_file: Path, **kw: Any) -> Emulator:
    emu = Emulator(state_file, **kw)
    emulators.append(emu)
    return emu.start()


async def _observe(client: stripe.StripeClient, admin: EmulatorAdmin) -> dict[str, Any]:
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


async def _populate(client: stripe.StripeClient, admin: EmulatorAdmin) -> dict[str, Any]:
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


async def test_sigterm_saves_and_restart_restores_everything(
    tmp_path: Path, emulators: list[Emulator]
) -> None:
    state_file = tmp_path / "emulator-state.pickle"
    emu = _new(emulators, state_file, save_interval=0)  # only the shutdown save
    client = make_client(emu.url)
    async with EmulatorAdmin(emu.url) as admin:
        ids = await _populate(client, admin)
        # an idempotent request: its replay must survive too
        cus = await client.v1.customers.create_async(
            params={"email": "idem@example.com"}, options={"idempotency_key": "k-1"}
        )
        before = await _observe(client, admin)
    assert not state_file.exists()
    code, out = emu.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal once shut down
    assert "saved state to" in out
    assert state_file.read_bytes().startswith(MAGIC)

    emu2 = _new(emulators, state_file)
    client2 = make_client(emu2.url)
    async with EmulatorAdmin(emu2.url) as admin2:
        after = await _observe(client2, admin2)
        # request stats come along too (the GETs differ: _observe itself reads)
        posts = [
            {k: v for k, v in o.pop("stats").items() if k.startswith("POST")}
            for o in (before, after)
        ]
        assert posts[0] == posts[1] and posts[0]["POST /v1/billing/meter_events"] == 42
        assert after == before
        assert len(after["meter_events"]) == 20 + 20 + 1 + 1 + 500
        assert any(m["cancelled"] for m in after["meter_events"])
        total_b = sum(s["aggregated_value"] for s in after["summaries"][(ids["meter"], ids["b"])])
        assert total_b == 19 * 2.5 + 500
        # indexes work after the restore: dedupe refuses a known identifier, a new one counts
        with pytest.raises(stripe.InvalidRequestError, match="already exists"):
            await push(client2, ids["b"], "1", identifier="b-0")
        await push(client2, ids["b"], "1", identifier="b-new")
        # the idempotency record came along
        again = await client2.v1.customers.create_async(
            params={"email": "idem@example.com"}, options={"idempotency_key": "k-1"}
        )
        assert again.id == cus.id
        restored = await client2.v1.customers.retrieve_async(ids["a"])
        assert restored.metadata.to_dict() == {"tier": "gold"}
    code, out = emu2.stop(signal.SIGINT)
    assert code in (0, -signal.SIGINT), out
    assert "saved state to" in out


async def test_sigkill_keeps_the_last_periodic_save(
    tmp_path: Path, emulators: list[Emulator]
) -> None:
    state_file = tmp_path / "st.pickle"
    emu = _new(emulators, state_file, save_interval=0.3)
    client = make_client(emu.url)
    async with EmulatorAdmin(emu.url) as admin:
        meter = await make_meter(client)
        cus = await make_customer(client)
        now = await admin.now()
        for i in range(5):
            await push(client, cus.id, "3", identifier=f"e{i}", timestamp=now - 60)
        # several 0.3 s ticks: the changes are saved, then nothing more is written
        await asyncio.sleep(1.5)
        assert state_file.exists()
        saved = state_file.stat().st_mtime_ns
        await asyncio.sleep(0.7)
        assert state_file.stat().st_mtime_ns == saved, "a clean store must not be re-saved"
        events_before = [e.id for e in (await client.v1.events.list_async()).data]
    emu.proc.kill()  # type: ignore[union-attr]
    emu.proc.communicate()  # type: ignore[union-attr]

    emu2 = _new(emulators, state_file)
    client2 = make_client(emu2.url)
    async with EmulatorAdmin(emu2.url) as admin2:
        assert (await client2.v1.customers.retrieve_async(cus.id)).id == cus.id
        assert (await client2.v1.billing.meters.retrieve_async(meter.id)).id == meter.id
        assert [e["identifier"] for e in await admin2.meter_events()] == [f"e{i}" for i in range(5)]
        assert [e.id for e in (await client2.v1.events.list_async()).data] == events_before
        start = (now - 60) - (now - 60) % 86400
        page = await client2.v1.billing.meters.event_summaries.list_async(
            meter.id, params={"customer": cus.id, "start_time": start, "end_time": start + 86400}
        )
        assert page.data[0].aggregated_value == 15.0


async def test_snapshot_route_and_start_option_override(
    tmp_path: Path, emulators: list[Emulator]
) -> None:
    state_file = tmp_path / "st.pickle"
    emu = _new(emulators, state_file, save_interval=0)
    client = make_client(emu.url)
    async with EmulatorAdmin(emu.url) as admin:
        cus = await make_customer(client)
        await admin.configure(drop_webhooks=True)  # runtime change: kept
        info = await admin.snapshot()
        assert info["path"] == str(state_file) and info["bytes"] > 0
    emu.kill()  # no shutdown save: the snapshot alone must be enough

    emu2 = Emulator(state_file)
    emu2.command = lambda: [*Emulator.command(emu2), "--summary-lag-seconds", "30"]  # type: ignore[method-assign]
    emulators.append(emu2)
    emu2.start()
    async with EmulatorAdmin(emu2.url) as admin2:
        assert (await make_client(emu2.url).v1.customers.retrieve_async(cus.id)).id == cus.id
        config = await admin2.get_config()
        assert config["drop_webhooks"] is True  # saved runtime change
        assert config["summary_lag_seconds"] == 30  # changed start option wins
        assert config["rate_limit"] == 0


async def test_snapshot_without_state_file_is_refused(emulator_url: str) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{emulator_url}/_emulator/snapshot")
    assert resp.status_code == 409
    assert "--state-file" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello", "not a Stripe emulator state file"),
        (
            MAGIC + b"999\n" + b"x",
            f"format version 999; this emulator reads version {FORMAT_VERSION}",
        ),
        (MAGIC + f"{FORMAT_VERSION}\n".encode() + b"\x80\x05garbage", "corrupt or truncated"),
    ],
)
def test_unusable_state_file_fails_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    state_file = tmp_path / "st.pickle"
    state_file.write_bytes(content)
    emu = Emulator(state_file)
    result = subprocess.run(
        emu.command(), capture_output=True, timeout=30, text=True, env=emu.env()
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert state_file.read_bytes() == content  # never overwritten
