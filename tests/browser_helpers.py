"""Shared by the browser tests: headless Chromium from Debian's packages driven through the DevTools
protocol (a websocket), and the CI rule (with CI=true a missing piece fails, else skips).

Chromium is installed with apt-get when it is missing and apt-get can run (root), the way
tests/container_helpers.py installs podman; the websocket client (`websocket-client`) comes with
the dev extra.  Nothing is fetched from the network by the page: it is loaded from a file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CI = os.environ.get("CI") == "true"
CHROMIUM = "/usr/bin/chromium"
APT_TIMEOUT = 900

# The flags of the brief: headless, no sandbox (tests run as root), no GPU, and nothing that
# reaches out (QUIC, background networking, component updates, sync, first-run pages).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
)


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true, where the browser tests are mandatory."""
    if CI:
        pytest.fail(f"CI=true: the browser tests must run, but {reason}")
    pytest.skip(reason)


def _apt_install(package: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", package]
    return subprocess.run(argv, capture_output=True, text=True, timeout=APT_TIMEOUT, env=env)


def chromium() -> str:
    """The Chromium binary, installed from Debian's packages first if it is missing."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        unavailable("chromium is not installed and apt-get cannot install it here (run as root on Debian)")
    proc = _apt_install("chromium")
    if proc.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=APT_TIMEOUT)
        proc = _apt_install("chromium")
    if proc.returncode != 0 or not Path(CHROMIUM).exists():
        unavailable(f"apt-get install chromium failed: {proc.stderr.strip()[-500:]}")
    return CHROMIUM


class DevTools:
    """A DevTools-protocol connection to the browser; page calls go to one attached target
    (flat sessions).  Every event that arrives while waiting for a reply is kept in `events`."""

    def __init__(self, url: str) -> None:
        try:
            import websocket
        except ImportError:
            unavailable("websocket-client is not installed; install the dev extra: pip install -e '.[dev]'")
        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def call(self, method: str, browser: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session unless `browser`) and return its result."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session and not browser:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                result: dict[str, Any] = reply["result"]
                return result
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """The first event `method` (already received or arriving within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        """Every console error, uncaught exception and browser log error seen so far."""
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')}")
        return errors


@contextmanager
def headless_chromium(profile: Path) -> Iterator[DevTools]:
    """Chromium with a fresh profile folder `profile`, and a DevTools connection attached to a new
    blank page (console, runtime, log and page events enabled)."""
    binary = chromium()
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile.parent / f"{profile.name}.log").open("w")
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            assert proc.poll() is None, f"chromium exited {proc.returncode}; see {log.name}"
            assert time.monotonic() < deadline, f"chromium did not open its DevTools port; see {log.name}"
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.call("Target.createTarget", browser=True, url="about:blank")["targetId"]
        tools.session = tools.call("Target.attachToTarget", browser=True, targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def load(tools: DevTools, path: Path) -> None:
    """Open a local file in the page and wait for its load event and for every image to decode."""
    tools.events.clear()  # the events of an earlier page
    tools.call("Page.navigate", url=path.resolve().as_uri())
    tools.wait_for("Page.loadEventFired")
    tools.evaluate("Promise.allSettled(Array.from(document.images).map(i => i.decode())).then(() => true)")


def screenshot(tools: DevTools, out: Path) -> tuple[int, int]:
    """Save a PNG of the whole page (beyond the window) to `out`; returns its CSS (width, height)."""
    import base64

    size = tools.call("Page.getLayoutMetrics")["cssContentSize"]
    width, height = int(size["width"]), int(size["height"])
    shot = tools.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    )
    out.write_bytes(base64.b64decode(shot["data"]))
    return width, height
