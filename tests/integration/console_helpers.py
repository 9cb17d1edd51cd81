"""The operator console as the tests run it: `python -m console` in a subprocess (the way `dev up`
starts it) against the session's Postgres and Temporal, and a headless Chromium driven by
selenium (Debian's `chromium` + `chromium-driver`; nothing downloaded)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
SCREENSHOTS = ROOT / "docs" / "img"

# actor -> (role, token): static tokens of CONSOLE_TOKENS
USERS = {
    "ada-approver": ("approver", "approver-token-0123456789abcdef"),
    "otto-operator": ("operator", "operator-token-0123456789abcdef"),
    "vera-viewer": ("viewer", "viewer-token-0123456789abcdef"),
}


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: install the Debian packages chromium and chromium-driver (.ci/run does)"
    return None


@contextlib.contextmanager
def console_process(env: dict[str, str], log: Path, **extra: str) -> Iterator[str]:
    """The console on a free loopback port; yields its base URL."""
    port = free_port()
    tokens = ",".join(f"{actor}:{role}:{token}" for actor, (role, token) in USERS.items())
    full = {**env, "CONSOLE_PORT": str(port), "CONSOLE_TOKENS": tokens,
            "CONSOLE_SECRET_KEY": "console-test-signing-key", "TEMPORAL_UI_URL": "http://ui.test:8233", **extra}
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "console"], cwd=ROOT, env=full, stdin=subprocess.DEVNULL,
                                stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the console exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the console did not answer: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def signed_in(base: str, actor: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client signed in as `actor` (through the login form, with its CSRF token)."""
    async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=60) as client:
        page = await client.get("/login")
        r = await client.post("/login", data={"csrf_token": csrf_of(page.text), "token": USERS[actor][1]})
        assert r.status_code == 303, r.text
        yield client


def csrf_of(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


class Browser:
    """A headless Chromium; every call runs in a thread so that the test's event loop (and the
    worker in it) keeps running while the browser waits for the console."""

    def __init__(self, base: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base = base
        self.profile = tempfile.mkdtemp(prefix="console-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        self.driver.set_page_load_timeout(120)
        self.driver.implicitly_wait(10)  # a click returns before the next page has loaded

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def get(self, path: str) -> None:
        await self.call(self.driver.get, self.base + path)

    async def fill(self, element_id: str, value: str) -> None:
        def go() -> None:
            field = self.driver.find_element("id", element_id)
            field.clear()
            field.send_keys(value)
        await self.call(go)

    async def click(self, element_id: str) -> None:
        """Click a button or link that loads a page, and wait until the next page replaced this one."""
        await self.call(self._navigate, "id", element_id)

    async def click_link(self, text: str) -> None:
        await self.call(self._navigate, "link text", text)

    def _navigate(self, by: str, value: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.support.wait import WebDriverWait

        page = self.driver.find_element("tag name", "html")
        self.driver.find_element(by, value).click()

        def replaced(_driver: Any) -> bool:
            # The old page's node is gone. Chromium says so as a stale reference, or (racing the
            # navigation) as an inspector error naming a node no longer in the document.
            try:
                page.is_enabled()
                return False
            except StaleElementReferenceException:
                return True
            except WebDriverException as e:
                if "does not belong to the document" in str(e) or "No node with given id" in str(e):
                    return True
                raise

        WebDriverWait(self.driver, 120).until(replaced)

    async def text(self, element_id: str) -> str:
        return await self.call(lambda: self.driver.find_element("id", element_id).text)

    async def texts(self, css: str) -> list[str]:
        return await self.call(lambda: [e.text for e in self.driver.find_elements("css selector", css)])

    async def path(self) -> str:
        url: str = await self.call(lambda: self.driver.current_url)
        return url.removeprefix(self.base)

    async def wait_text(self, element_id: str, wanted: str, limit: float = 90) -> str:
        """The element's text once it contains `wanted` (the repair page refreshes itself)."""
        deadline = time.monotonic() + limit
        while True:
            with contextlib.suppress(Exception):
                text = await self.text(element_id)
                if wanted in text:
                    return text
            if time.monotonic() > deadline:
                raise AssertionError(f"#{element_id} never showed {wanted!r}: {await self.call(lambda: self.driver.page_source[:3000])}")
            await asyncio.sleep(0.5)

    async def sign_in(self, actor: str) -> None:
        await self.get("/login")
        await self.fill("token", USERS[actor][1])
        await self.click("sign-in")

    async def screenshot(self, name: str) -> None:
        """docs/img/console-<name>.png, the pictures in docs/console.md (CONSOLE_SCREENSHOTS=1
        re-takes them; otherwise a run leaves the repository as it was)."""
        if os.environ.get("CONSOLE_SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.call(self.driver.save_screenshot, str(SCREENSHOTS / f"console-{name}.png"))

    async def close(self) -> None:
        await self.call(self.driver.quit)
        shutil.rmtree(self.profile, ignore_errors=True)
