"""Open an HTML report in headless Chromium and say what is wrong with it.

Drives the Debian ``chromium`` binary over the DevTools protocol (a websocket, via
``websocket-client``), so no browser download and no Playwright/Chromium version coupling.
:func:`check_report` lists the problems: JavaScript exceptions and console errors, figure divs
that did not render, figures without traces. An empty list means the page is good.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websocket

INSTALL = "apt-get update && apt-get install -y chromium   (or: bash scripts/setup.sh as root)"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-background-networking", "--mute-audio", "--hide-scrollbars",
    # WebGL (3-D plots) without a GPU: SwiftShader, which Chromium no longer falls back to on its own.
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]
GL3D = {"scatter3d", "surface", "mesh3d", "cone", "streamtube", "isosurface", "volume"}

# Per plotly div: is it drawn (svg.main-svg), how many traces has it, what got drawn for them.
_INSPECT = """
Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({
  id: d.id,
  svg: !!d.querySelector('svg.main-svg'),
  data: Array.isArray(d.data) ? d.data.length : -1,
  types: Array.isArray(d.data) ? d.data.map(t => t.type || 'scatter') : [],
  traces2d: d.querySelectorAll('.cartesianlayer g.trace, .heatmaplayer image, .polarlayer g.trace, .pielayer g.trace').length,
  canvases: d.querySelectorAll('.gl-container canvas').length,
  glError: (d.textContent || '').includes('WebGL is not supported'),
  height: d.getBoundingClientRect().height,
}))
"""
# An injected script usually calls alert(); make that a console error instead of a blocking dialog.
_TRAP_DIALOGS = """
for (const name of ['alert', 'confirm', 'prompt']) {
  window[name] = (...args) => console.error(`${name}() called: ${args.join(' ')}`);
}
"""

# True once every plotly div is drawn, failed visibly, or was never plotted (so never will be).
_SETTLED = """
Array.from(document.querySelectorAll('.plotly-graph-div')).every(d =>
  !Array.isArray(d.data) || (d.textContent || '').includes('WebGL is not supported') ||
  (d.querySelector('svg.main-svg') &&
   (!d.data.some(t => %s.includes(t.type)) || d.querySelector('.gl-container canvas'))))
""" % json.dumps(sorted(GL3D))


def chromium_path() -> str | None:
    """The browser the static export drives too (:func:`analyses.report.export.chrome_path`)."""
    from analyses.report.export import chrome_path

    return chrome_path()


class Page:
    """One browser tab over the DevTools protocol; collects JS exceptions and console errors."""

    def __init__(self, ws: websocket.WebSocket, session: str) -> None:
        self._ws, self._session, self._ids = ws, session, itertools.count(1)
        self.errors: list[str] = []
        self.loaded = False

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its reply; events that arrive meanwhile are recorded."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params, "sessionId": self._session}))
        deadline = time.monotonic() + timeout
        while (msg := self._receive(deadline)) is not None:
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
        raise TimeoutError(f"no reply to {method} within {timeout} s")

    def navigate(self, url: str, timeout: float) -> bool:
        """Open ``url`` and wait for its load event; False if it did not come within ``timeout``."""
        self.loaded = False
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self.loaded and (msg := self._receive(deadline)) is not None:
            self._event(msg)
        return self.loaded

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float) -> bool:
        """Poll a JS expression until it is truthy; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.1)
        return False

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (1280 px wide)."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)  # let responsive plots settle to the new viewport
        png = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(png))
        return path

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        """The next protocol message, or None once ``deadline`` has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self._ws.settimeout(remaining)
        try:
            return json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text", "exception")
            self.errors.append(f"uncaught exception: {text.splitlines()[0]} (line {d.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"browser log: {params['entry'].get('text')}")
        elif method == "Page.loadEventFired":
            self.loaded = True


@contextmanager
def browser_page(binary: str | None = None, timeout: float = 30) -> Iterator[Page]:
    """Start headless Chromium with a throw-away profile, yield a fresh tab, then shut it down."""
    binary = binary or chromium_path()
    if not binary:
        raise FileNotFoundError(f"Chromium not found; install it: {INSTALL}")
    profile = tempfile.mkdtemp(prefix="probe-chromium-")
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        ws = websocket.create_connection(_devtools_url(proc, timeout), timeout=timeout, suppress_origin=True)
        try:
            ws.send(json.dumps({"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}))
            target = _reply(ws, 1)["targetId"]
            ws.send(json.dumps({"id": 2, "method": "Target.attachToTarget",
                                "params": {"targetId": target, "flatten": True}}))
            page = Page(ws, _reply(ws, 2)["sessionId"])
            for domain in ("Runtime", "Log", "Page"):
                page.send(f"{domain}.enable")
            yield page
        finally:
            ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _remove_profile(profile)


def _remove_profile(profile: str) -> None:
    """Delete the throw-away profile; Chromium's helper processes may still write to it briefly."""
    for _ in range(50):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    shutil.rmtree(profile, ignore_errors=True)


def check_report(path: str | os.PathLike[str], expected_ids: list[str] | None = None, *,
                 screenshot: Path | None = None, timeout: float = 30) -> list[str]:
    """Open ``path`` (file://) in headless Chromium; return a list of problems, empty when good.

    Problems: JS exceptions and console/browser errors; any ``alert``/``confirm``/``prompt`` call
    (an injected script would make one); a missing expected div; a plotly div
    with no ``svg.main-svg``, no ``.data``, zero traces, zero height, or nothing drawn for its
    traces (no ``g.trace``/heatmap image for 2-D, no WebGL canvas for 3-D).
    """
    with browser_page(timeout=timeout) as page:
        page.send("Page.addScriptToEvaluateOnNewDocument", source=_TRAP_DIALOGS)
        if not page.navigate(Path(path).resolve().as_uri(), timeout):
            return [f"page did not finish loading within {timeout} s", *page.errors]
        # Figures draw asynchronously (3-D scenes especially); a div never given data never will.
        page.wait_until(_SETTLED, timeout)
        time.sleep(0.5)  # late errors (e.g. from requestAnimationFrame) get a chance to surface
        page.evaluate("1")  # drain pending events
        figures = page.evaluate(_INSPECT)
        problems = list(page.errors)
        if screenshot is not None:
            page.screenshot(screenshot)
    found = {f["id"] for f in figures}
    problems += [f"{i}: no such figure div on the page" for i in expected_ids or [] if i not in found]
    for f in figures:
        problems += [f"{f['id']}: {p}" for p in _figure_problems(f)]
    return problems


def _figure_problems(f: dict[str, Any]) -> list[str]:
    if f["data"] < 0:
        return ["not a plotted figure (no .data: plotly.js missing or Plotly.newPlot failed)"]
    problems = []
    if not f["svg"]:
        problems.append("no svg.main-svg rendered")
    if f["data"] == 0:
        problems.append("figure has no traces")
    if f["height"] <= 0:
        problems.append("figure has zero height")
    if f["glError"]:
        problems.append("WebGL is not available for its 3-D traces")
    gl3d = [t for t in f["types"] if t in GL3D]
    if gl3d and f["canvases"] == 0:
        problems.append(f"3-D traces {gl3d} but no WebGL canvas")
    if len(gl3d) < f["data"] and f["traces2d"] == 0:
        problems.append("2-D traces but nothing drawn (no g.trace / heatmap image)")
    return problems


def _devtools_url(proc: subprocess.Popen[str], timeout: float) -> str:
    """Read Chromium's stderr until it prints 'DevTools listening on ws://…'."""
    assert proc.stderr is not None
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                found.append(m.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise RuntimeError(f"Chromium gave no DevTools URL within {timeout} s; its stderr:\n{''.join(lines)[-2000:]}")
    # Keep draining stderr so a chatty browser never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return found[0]


def _reply(ws: websocket.WebSocket, msg_id: int) -> dict[str, Any]:
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == msg_id:
            if "error" in msg:
                raise RuntimeError(f"DevTools: {msg['error']}")
            return msg["result"]
