"""`--state-file`: the whole store survives a restart (SIGTERM saves; the periodic save bounds
what a SIGKILL loses). Each test runs its own emulator subprocesses on a temp file."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from stripe_emulator.admin import EmulatorAdmin
from stripe_emulator.persist import FORMAT_VERSION, MAGIC

from .helpers import make_client, make_customer, make_meter, push
from .persistence_helpers import (
    SAVED_OBSERVATION,
    SAVED_STATE,
    Emulator,
    as_json,
    comparable,
    observe,
    populate_and_observe,
)


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


async def test_sigterm_saves_and_restart_restores_everything(
    tmp_path: Path, emulators: list[Emulator]
) -> None:
    state_file = tmp_path / "emulator-state.pickle"
    emu = _new(emulators, state_file, save_interval=0)  # only the shutdown save
    saved = await populate_and_observe(emu)
    before, ids = saved["observed"], saved["ids"]
    assert not state_file.exists()
    code, out = emu.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal once shut down
    assert "saved state to" in out
    assert state_file.read_bytes().startswith(MAGIC)

    emu2 = _new(emulators, state_file)
    client2 = make_client(emu2.url)
    async with EmulatorAdmin(emu2.url) as admin2:
        after = as_json(await observe(client2, admin2))
        assert comparable(after) == comparable(before)  # request stats (POSTs) came along too
        assert after["stats"]["POST /v1/billing/meter_events"] == 42
        assert len(after["meter_events"]) == 20 + 20 + 1 + 1 + 500
        assert any(m["cancelled"] for m in after["meter_events"])
        total_b = sum(
            s["aggregated_value"] for s in after["summaries"][f"{ids['meter']}|{ids['b']}"]
        )
        assert total_b == 19 * 2.5 + 500
        # indexes work after the restore: dedupe refuses a known identifier, a new one counts
        with pytest.raises(stripe.InvalidRequestError, match="already exists"):
            await push(client2, ids["b"], "1", identifier="b-0")
        await push(client2, ids["b"], "1", identifier="b-new")
        # the idempotency record came along
        again = await client2.v1.customers.create_async(
            params={"email": "idem@example.com"}, options={"idempotency_key": "k-1"}
        )
        assert again.id == ids["idempotent_customer"]
        restored = await client2.v1.customers.retrieve_async(ids["a"])
        assert restored.metadata.to_dict() == {"tier": "gold"}
    code, out = emu2.stop(signal.SIGINT)
    assert code in (0, -signal.SIGINT), out
    assert "saved state to" in out


async def test_a_state_file_saved_by_an_earlier_version_still_loads(
    tmp_path: Path, emulators: list[Emulator]
) -> None:
    """fixtures/emulator-state-v1.pickle was written by the emulator before its modules were
    reorganised (see fixtures/README.md): the format holds builtins only, so it loads unchanged
    and a client sees exactly what it saw then."""
    saved = json.loads(SAVED_OBSERVATION.read_text())
    state_file = tmp_path / "old.pickle"
    shutil.copyfile(SAVED_STATE, state_file)
    emu = _new(emulators, state_file, save_interval=0)
    client = make_client(emu.url)
    async with EmulatorAdmin(emu.url) as admin:
        after = as_json(await observe(client, admin))
        # Config fields added since the file was saved take their defaults.
        added = set(after["config"]) - set(saved["observed"]["config"])
        assert {k: after["config"].pop(k) for k in added} == {
            "invoice_finalization_grace_seconds": 3600.0, "endpoint_rate_limit": 25.0, "endpoint_rate_limits": {},
            "own_bucket_routes": [], "request_log_size": 500_000}
        assert comparable(after) == comparable(saved["observed"])
        assert len(after["meter_events"]) == 542
        ids = saved["ids"]
        with pytest.raises(stripe.InvalidRequestError, match="already exists"):
            await push(client, ids["b"], "1", identifier="b-0")
        again = await client.v1.customers.create_async(
            params={"email": "idem@example.com"}, options={"idempotency_key": "k-1"}
        )
        assert again.id == ids["idempotent_customer"]


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
