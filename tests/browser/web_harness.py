"""Helpers of the browser tests: a real `courier serve` subprocess, Debian's Chromium, and the
few page actions every scenario repeats (log in, open a chat, send, read ticks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.procs import ServerProcess

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import BrowserContext, Page

    NewContext = Callable[..., BrowserContext]

PASSWORD = "correct horse battery"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
XSS_BODY = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=1>"
TIMEOUT_MS = 15000


class CourierServer(ServerProcess):
    """`courier serve` plus the HTTP calls the tests use to set up and check the pages."""

    # ---- the HTTP API, for setting up and checking what the pages did ----------------------

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def register(self, username: str) -> str:
        """Create an account and return a token of it."""
        self.call("POST", "/v1/users", {"username": username, "password": PASSWORD})
        answer = self.call("POST", "/v1/sessions", {"username": username, "password": PASSWORD})
        token: str = answer["token"]
        return token

    def send(
        self, token: str, to: str | None, body: str, client_id: str, group: str | None = None
    ) -> None:
        """POST /v1/messages (to a user, or to a ``group``), waiting out the per-user send
        rate limit (429) like a client."""
        target = {"group": group} if group is not None else {"to": to}
        for _ in range(100):
            try:
                self.call(
                    "POST", "/v1/messages", {**target, "body": body, "client_id": client_id}, token
                )
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 429:
                    raise
                time.sleep(0.1)
        raise RuntimeError("still rate limited after 10 s")

    def bodies(self, token: str, peer: str) -> list[str]:
        """Every message body of one conversation as the server stored it, oldest first."""
        bodies: list[str] = []
        before: int | None = None
        while True:
            query = "?limit=200" + (f"&before={before}" if before is not None else "")
            page = self.call("GET", f"/v1/conversations/{peer}/messages{query}", token=token)
            bodies.extend(m["body"] for m in page["messages"])
            before = page["next_before"]
            if before is None:
                return bodies[::-1]


def wait_until(page: Page, expression: str, arg: Any = None, timeout: int = TIMEOUT_MS) -> None:
    """Wait until `expression` (or the function it names, given `arg`) is truthy in the page.

    Polls with `page.evaluate` rather than `wait_for_function`: the app's Content-Security-Policy
    has no 'unsafe-eval', and Playwright's in-page polling loop evaluates the predicate with
    `eval` after its first round, which that policy refuses now and then.
    """
    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout / 1000
    while True:
        try:
            if page.evaluate(expression, arg):
                return
        except Error as error:  # a navigation replaced the document: ask the new one
            if "context" not in str(error) and "navigat" not in str(error):
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} ms: {expression} ({arg!r})")
        page.wait_for_timeout(50)


def new_username(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def chromium_problem() -> str | None:
    """Make sure Debian's Chromium is there; installs it when root. A reason when it can't."""
    if CHROMIUM.exists():
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)"
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and there is no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=900, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(command)} failed: {exc}"
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip()[-500:]
            return f"{' '.join(command)} failed ({done.returncode}): {tail}"
    return None if CHROMIUM.exists() else f"{CHROMIUM} is still missing after apt-get install"


# ---- page actions -------------------------------------------------------------------------


def accessibility_violations(page: Page, context: str | None = None) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now (or inside the
    ``context`` selector), one readable line each: rule, impact and the nodes at fault.
    axe is injected through the debugging protocol, so the page's CSP stays as strict."""
    from axe_playwright_python.sync_playwright import Axe

    options = {
        "resultTypes": ["violations"],
        "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
    }
    results = Axe().run(page, context=context, options=options)
    found: list[str] = []
    for violation in results.response["violations"]:
        nodes = "; ".join(
            " ".join(node["target"]) + ": " + node.get("failureSummary", "").replace("\n", " ")
            for node in violation["nodes"][:5]
        )
        found.append(f"{violation['id']} ({violation['impact']}): {nodes}")
    return found


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def log_in(page: Page, url: str, username: str, *, register: bool = False) -> None:
    """Open the app, log in (or create the account) and wait until it is connected."""
    page.goto(url + "/")
    page.fill("#login-username", username)
    page.fill("#login-password", PASSWORD)
    page.click("#register-submit" if register else "#login-submit")
    page.wait_for_selector("#main", state="visible", timeout=TIMEOUT_MS)
    wait_connected(page)


def wait_connected(page: Page, transport: str | None = None) -> None:
    selector = '#conn-status[data-state="connected"]'
    if transport:
        selector += f'[data-transport="{transport}"]'
    page.wait_for_selector(selector, timeout=TIMEOUT_MS)


def open_chat(page: Page, peer: str) -> None:
    """Start (or reopen) the chat with `peer` from the form, as a user would."""
    page.fill("#new-chat-username", peer)
    page.press("#new-chat-username", "Enter")
    wait_until(
        page,
        "peer => document.getElementById('chat-title').textContent === peer",
        arg=peer,
        timeout=TIMEOUT_MS,
    )


def send(page: Page, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def message_texts(page: Page) -> list[str]:
    """The bodies shown in the open chat, top to bottom."""
    texts: list[str] = page.eval_on_selector_all(
        "#message-items .msg .body", "nodes => nodes.map(n => n.textContent)"
    )
    return texts


def wait_for_message(page: Page, text: str) -> None:
    wait_until(
        page,
        "text => [...document.querySelectorAll('#message-items .msg .body')]"
        ".some(n => n.textContent === text)",
        arg=text,
        timeout=TIMEOUT_MS,
    )


def wait_for_status(page: Page, text: str, status: str, timeout_ms: int = TIMEOUT_MS) -> None:
    """Wait until the outgoing message `text` shows tick `status` (sent, delivered, read...)."""
    wait_until(
        page,
        """([text, status]) => [...document.querySelectorAll('#message-items .msg.out')]
            .some(m => m.querySelector('.body').textContent === text
                       && m.dataset.status === status)""",
        arg=[text, status],
        timeout=timeout_ms,
    )


def status_of(page: Page, text: str) -> str | None:
    status: str | None = page.evaluate(
        """text => {
            const m = [...document.querySelectorAll('#message-items .msg.out')]
                .find(m => m.querySelector('.body').textContent === text);
            return m ? m.dataset.status : null;
        }""",
        text,
    )
    return status


def unread_badge(page: Page, peer: str) -> str:
    """The unread count shown next to a conversation ("0" when there is no badge)."""
    count: str = page.eval_on_selector(
        f'#conversations li[data-peer="{peer}"] .conv-unread', "n => n.dataset.count || '0'"
    )
    return count
