"""Debian's headless Chromium driven over the DevTools protocol (``websockets``), for the studio's page.

Also runnable to take the README's screenshot of a running studio:
``python -m tests.studio.browser http://127.0.0.1:8000/ docs/studio.png 春江花月``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(leader: int) -> list[int]:
    """The live processes of the session ``leader`` started (zombies left out), read from /proc."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if session == str(leader) and state != "Z":
            members.append(int(entry.name))
    return members


def end_session(proc: subprocess.Popen, timeout: float = 20) -> None:
    """End ``proc`` (started with ``start_new_session``) and every process of its session.

    Chromium's renderer and utility processes can outlive its main process by a moment, still writing
    into the profile folder: removing that folder then fails with "Directory not empty"."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + timeout
    while (left := session_members(proc.pid)) and time.monotonic() < deadline:
        for pid in left:  # the helpers, whatever process group they moved to
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


class Browser:
    """One headless Chromium page. ``evaluate`` runs JavaScript in it and returns the value."""

    def __init__(self, url: str, width: int = 1280, height: int = 900):
        from websockets.sync.client import connect

        self._profile = tempfile.TemporaryDirectory(prefix="studio-chromium-")
        port = free_port()
        self._proc = subprocess.Popen([
            chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
            f"--user-data-dir={self._profile.name}", f"--remote-debugging-port={port}", "--remote-allow-origins=*",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--window-size={width},{height}",
            "--force-device-scale-factor=1", "about:blank",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = iter(range(1, 10**9))
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(connect(self._page(port), max_size=64 * 2**20, open_timeout=30))
        self.navigate(url)

    def _page(self, port: int, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("Chromium's DevTools endpoint did not come up")

    def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout} s for {expression}")
            time.sleep(0.2)

    def type(self, text: str) -> None:
        self.call("Input.insertText", text=text)

    def press_enter(self) -> None:
        key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", **key)
        self.call("Input.dispatchKeyEvent", type="keyUp", **key)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until its document (not the previous one: it is marked) has loaded."""
        self.evaluate("window.__previousDocument = true")
        self.call("Page.navigate", url=url)
        self.wait_for("!window.__previousDocument && document.readyState === 'complete'")

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=True)

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        params = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
                          captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", **params)["data"]))

    def close(self) -> None:
        """Close the page, end Chromium and every helper process it started, remove its profile."""
        try:
            self._stack.close()
        finally:
            end_session(self._proc)
            self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_with_acrostic(browser: Browser, acrostic: str) -> None:
    """As a person would: focus the acrostic field, type, press Enter; wait for the poems."""
    browser.evaluate("document.getElementById('acrostic').focus()")
    browser.type(acrostic)
    browser.press_enter()
    browser.wait_for("document.querySelectorAll('#poems .poem').length > 0 && "
                     "document.getElementById('results').getAttribute('aria-busy') === 'false'")


if __name__ == "__main__":  # the README's screenshot of a running studio
    url, out, acrostic = sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "春江花月"
    with Browser(url, 1280, 1000) as b:
        write_with_acrostic(b, acrostic)
        time.sleep(0.5)
        b.screenshot(out)
    print(out, out.stat().st_size, "bytes")
