"""Heartbeats and checkpoints of the activities that loop over pages.

A paged activity keeps how far it got in one pydantic checkpoint model. It resumes from the
checkpoint its previous attempt heartbeated (`resume`), records a newer one after every unit of
work (`Heartbeater.record`, which heartbeats it at once), and meanwhile the `Heartbeater` re-sends
the latest recorded checkpoint every second, so a long unit of work (many Stripe calls under the
rate limiter) never looks like a dead worker, and a cancellation reaches the activity within
seconds. Modelled on PostHog's `posthog/temporal/common/heartbeat.py`.

    cp = resume(PageCheckpoint, PageCheckpoint(cursor=inp.cursor))
    async with Heartbeater(cp) as hb:
        for item in items_after(cp.cursor):
            ...  # one unit of work, updating cp
            hb.record(cp)

or, for a listing paged by a cursor (Stripe's lists), `heartbeat_pages(cp, one_page, max_pages=n)`.

What is heartbeated is a JSON snapshot taken when `record` is called: a checkpoint mutated in
place while a page is half done is never sent half done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import activity

log = logging.getLogger(__name__)

# The latest checkpoint is re-sent this often (the worker throttles what reaches the server).
HEARTBEAT_EVERY_SECONDS = 1.0

C = TypeVar("C", bound=BaseModel)


def resume(model: type[C], fresh: C) -> C:
    """The checkpoint the previous attempt of this activity heartbeated, validated into `model`
    (heartbeat details come back as plain dicts); `fresh` on a first attempt, or when the details
    do not fit the model (a checkpoint of an older build: the work is done again, not skipped)."""
    details = activity.info().heartbeat_details
    if not details:
        return fresh
    try:
        return model.model_validate(details[0])
    except ValidationError as e:
        log.warning("heartbeat details do not fit %s; starting afresh: %s", model.__name__, e)
        return fresh


class Heartbeater(Generic[C]):
    """Heartbeats the latest recorded checkpoint on entry, on every `record` and every `every`
    seconds until the block ends."""

    def __init__(self, first: C, *, every: float = HEARTBEAT_EVERY_SECONDS) -> None:
        self._details: dict[str, Any] = first.model_dump(mode="json")
        self._every = every
        self._task: asyncio.Task[None] | None = None

    @property
    def details(self) -> dict[str, Any]:
        """What was last heartbeated (a JSON snapshot of the latest checkpoint)."""
        return self._details

    def record(self, checkpoint: C) -> None:
        """`checkpoint` is how far the activity got: heartbeat it now and from now on."""
        self._details = checkpoint.model_dump(mode="json")
        activity.heartbeat(self._details)

    async def _beat(self) -> None:
        while True:
            activity.heartbeat(self._details)
            await asyncio.sleep(self._every)

    async def __aenter__(self) -> Heartbeater[C]:
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            # Not awaited: awaiting it could swallow a cancellation of the activity itself.
            self._task.cancel()
            self._task = None


async def heartbeat_pages(checkpoint: C, one_page: Callable[[], Awaitable[bool]], *,
                          max_pages: int | None = None, every: float = HEARTBEAT_EVERY_SECONDS) -> bool:
    """Page through a listing: `one_page()` does one page, advancing `checkpoint` (its cursor,
    counts), and says whether more pages follow; the checkpoint is recorded after each page.
    At most `max_pages` pages (None: to the end). True when the listing is exhausted, False
    when `max_pages` stopped it (the checkpoint's cursor is where the next activity goes on)."""
    async with Heartbeater(checkpoint, every=every) as hb:
        pages = 0
        while max_pages is None or pages < max_pages:
            more = await one_page()
            pages += 1
            hb.record(checkpoint)
            if not more:
                return True
    return False
