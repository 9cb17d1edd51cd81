"""The heartbeat/checkpoint helper (common/heartbeat.py) in a real activity context."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pydantic import BaseModel, Field
from temporalio.testing import ActivityEnvironment

from common.heartbeat import Heartbeater, heartbeat_pages, resume


class Checkpoint(BaseModel):
    cursor: str | None = None
    pages: int = 0
    seen: list[str] = Field(default_factory=list)


def env_with(details: list[Any] | None = None) -> tuple[ActivityEnvironment, list[Any]]:
    env = ActivityEnvironment()
    if details is not None:
        env.info = dataclasses.replace(env.info, heartbeat_details=details)
    beats: list[Any] = []
    env.on_heartbeat = lambda *d: beats.append(d[0])
    return env, beats


async def test_a_first_attempt_starts_from_the_fresh_checkpoint():
    env, _ = env_with()
    cp = env.run(resume, Checkpoint, Checkpoint(cursor="start"))
    assert cp == Checkpoint(cursor="start")


async def test_a_retry_resumes_from_the_heartbeated_dict_as_the_model():
    env, _ = env_with([{"cursor": "sub_9", "pages": 3, "seen": ["a", "b"]}])
    cp = env.run(resume, Checkpoint, Checkpoint(cursor="start"))
    assert isinstance(cp, Checkpoint)
    assert cp == Checkpoint(cursor="sub_9", pages=3, seen=["a", "b"])


async def test_details_of_another_shape_start_afresh():
    env, _ = env_with([{"pages": "not a number"}])
    cp = env.run(resume, Checkpoint, Checkpoint(cursor="start"))
    assert cp == Checkpoint(cursor="start")


async def test_record_heartbeats_a_snapshot_at_once():
    env, beats = env_with()

    async def work() -> None:
        cp = Checkpoint()
        async with Heartbeater(cp, every=3600) as hb:
            cp.cursor, cp.pages = "p1", 1
            hb.record(cp)
            cp.pages = 99  # mutated after recording: not what was heartbeated
            assert hb.details == {"cursor": "p1", "pages": 1, "seen": []}

    await env.run(work)
    assert {"cursor": "p1", "pages": 1, "seen": []} in beats
    assert all(b["pages"] != 99 for b in beats)


async def test_the_latest_checkpoint_is_re_sent_while_a_long_step_works():
    env, beats = env_with()
    four = asyncio.Event()

    def on_heartbeat(*d: Any) -> None:
        beats.append(d[0])
        if len(beats) >= 4:
            four.set()

    env.on_heartbeat = on_heartbeat

    async def work() -> None:
        async with Heartbeater(Checkpoint(), every=0.001) as hb:
            hb.record(Checkpoint(cursor="p1", pages=1))
            await four.wait()  # a long step that never records: the helper keeps beating

    await asyncio.wait_for(env.run(work), timeout=30)
    assert beats[-1] == beats[-2] == {"cursor": "p1", "pages": 1, "seen": []}


async def test_heartbeats_stop_when_the_block_ends():
    env, beats = env_with()

    async def work() -> int:
        async with Heartbeater(Checkpoint(), every=0.001):
            await asyncio.sleep(0.01)
        n = len(beats)
        await asyncio.sleep(0.01)
        return n

    n = await env.run(work)
    assert n >= 1 and len(beats) == n


async def test_heartbeat_pages_records_each_page_and_stops_at_the_end_or_the_limit():
    listing = {None: ("p1", True), "p1": ("p2", True), "p2": ("p3", False)}

    async def pages(max_pages: int | None) -> tuple[bool, Checkpoint, list[Any]]:
        env, beats = env_with()
        cp = Checkpoint()

        async def one_page() -> bool:
            cp.cursor, more = listing[cp.cursor]
            cp.pages += 1
            return more

        done = await env.run(heartbeat_pages, cp, one_page, max_pages=max_pages, every=3600)
        return done, cp, beats

    done, cp, beats = await pages(None)
    assert done and cp.pages == 3
    assert [b["cursor"] for b in beats if b["pages"]] == ["p1", "p2", "p3"]
    done, cp, beats = await pages(2)
    assert not done and (cp.cursor, cp.pages) == ("p2", 2)
    assert beats[-1] == {"cursor": "p2", "pages": 2, "seen": []}
