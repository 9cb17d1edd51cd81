"""Pure-python pieces: form parsing, CLI signature, config handling."""

from __future__ import annotations

import inspect
import time

import pytest

from stripe_emulator.cli import run
from stripe_emulator.config import Config
from stripe_emulator.forms import encode, parse_pairs, parse_qs
from stripe_emulator.state import EmulatorClock
from stripe_emulator.webhooks import sign


def test_bracket_parsing_roundtrip():
    params = {
        "payload": {"value": "3", "stripe_customer_id": "cus_1"},
        "created": {"gte": "5"},
        "types": ["a", "b"],
        "items": [{"price": "p1", "quantity": "2"}, {"price": "p2"}],
        "flag": True,
    }
    parsed = parse_pairs(encode(params))
    assert parsed == {**params, "flag": "true"}
    assert parse_qs("expand[]=a&expand[]=b&x=") == {"expand": ["a", "b"], "x": ""}
    assert parse_qs(b"types%5B0%5D=customer.created") == {"types": ["customer.created"]}


def test_cli_signature():
    names = list(inspect.signature(run).parameters)
    assert names == [
        "host",
        "port",
        "rate_limit",
        "summary_lag_seconds",
        "seed",
        "webhook_secret",
        "log_level",
        "state_file",
        "save_interval",
        "endpoint_rate_limit",
    ]


def test_config_validation_and_clock():
    cfg = Config()
    cfg.update({"faults": [{"path_prefix": "/v1/x", "status": 500, "probability": 0.5}], "seed": 3})
    assert cfg.to_dict()["faults"][0]["probability"] == 0.5
    with pytest.raises(ValueError):
        cfg.update({"nope": 1})
    with pytest.raises(ValueError):
        cfg.update({"faults": [{"probability": 2}]})
    clock = EmulatorClock()
    t = clock.now()
    assert clock.advance(100) >= t + 100
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_signature_format():
    assert sign("{}", "whsec_x", 10).startswith("t=10,v1=")


async def test_reset_keeps_config_unless_asked(admin):
    await admin.configure(summary_lag_seconds=42)
    await admin.advance_clock(1000)
    await admin.reset()
    assert (await admin.get_config())["summary_lag_seconds"] == 42
    await admin.reset(reset_config=True)
    cfg = await admin.get_config()
    assert cfg["summary_lag_seconds"] == 0 and cfg["rate_limit"] == 25
    assert abs(await admin.now() - time.time()) < 5
