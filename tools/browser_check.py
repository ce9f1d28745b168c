#!/usr/bin/env python3
"""Open an HTML report in headless Chromium, take a screenshot, fail on anything broken.

::

    python tools/browser_check.py runs/demo-x/report.html --screenshot shot.png
    python tools/browser_check.py report.html --install     # apt-get install chromium first

Fails (exit 1, one line per problem) on: an image that does not decode, a video or
audio element without playable media, a ``src``/``href``/``poster`` naming a local file
that does not exist, any request leaving the machine (``http``/``https``: a report must
work offline, no CDN), a console error (``console.error``/``console.assert``, an
uncaught exception, a browser log entry at level error, e.g. a failed load).

How: Chromium runs with ``--remote-debugging-port`` and a fresh ``--user-data-dir``;
this script speaks the DevTools protocol to it over a small standard-library websocket
client (RFC 6455), records console, log and network events while the page loads, then
asks the page itself whether every image decoded (``naturalWidth``) and every media
element reached ``HAVE_METADATA`` (``readyState >= 1``, no ``error``, not
``NETWORK_NO_SOURCE``); lazy images are made eager and ``preload=none`` media are
loaded first so nothing escapes the check by not being fetched. No third-party
packages, so it runs under any Python >= 3.10.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Flags for a quiet, offline, root-in-a-container headless Chromium.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--hide-scrollbars",
    "--mute-audio",
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = (1200, 900)
MAX_SCREENSHOT_HEIGHT = 16000


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or stopped answering."""


# -- a minimal websocket client (RFC 6455), enough for the DevTools protocol ----------


class WebSocket:
    """Blocking text-frame websocket client over a plain TCP socket (no TLS)."""

    _GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname or not parts.port:
            raise BrowserError(f"expected a ws://host:port/... DevTools URL, got {url!r}")
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BrowserError("DevTools closed the connection during the handshake")
            head += chunk
        head, self._buffer = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise BrowserError(f"websocket handshake refused: {lines[0]}")
        accept = base64.b64encode(hashlib.sha1((key + self._GUID).encode()).digest()).decode()
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        if headers.get("sec-websocket-accept") != accept:
            raise BrowserError("websocket handshake: wrong Sec-WebSocket-Accept")

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(max(65536, count - len(self._buffer)))
            if not chunk:
                raise BrowserError("DevTools connection closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        mask = os.urandom(4)  # client frames must be masked
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        """The next text message (continuation frames joined; pings answered)."""
        message = b""
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise BrowserError("DevTools closed the websocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class DevTools:
    """Commands and events of one page target."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        wanted = self.next_id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise BrowserError(f"{method}: no answer within {timeout:.0f} s")

    def wait_event(self, method: str, timeout: float) -> dict[str, Any] | None:
        if any(e["method"] == method for e in self.events):
            return next(e for e in self.events if e["method"] == method)
        deadline = time.monotonic() + timeout
        self.ws.sock.settimeout(timeout)
        try:
            while time.monotonic() < deadline:
                message = json.loads(self.ws.recv())
                if "method" in message:
                    self.events.append(message)
                    if message["method"] == method:
                        return message
        except TimeoutError:
            return None
        finally:
            self.ws.sock.settimeout(30.0)
        return None


# -- chromium -------------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def install_chromium() -> str:
    """Debian's ``chromium`` via apt-get when no Chromium is on PATH (needs root)."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0:
        raise BrowserError("no chromium on PATH; install it (apt-get install chromium) as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
        check=True,
        env=env,
    )
    found = find_chromium()
    if not found:
        raise BrowserError("apt-get installed chromium but it is not on PATH")
    return found


@dataclass
class Result:
    """What the page showed: problems (empty when clean) and what was checked."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: int = 0
    media: int = 0
    screenshot: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


# Runs in the page: makes every image and media element load, waits for each to finish
# (or fail), then reports every reference and every element's state.
_PAGE_CHECK = """
(async (timeoutMs) => {
  const imgs = [...document.images];
  const media = [...document.querySelectorAll('video, audio')];
  for (const img of imgs) img.loading = 'eager';
  for (const m of media) {
    if (m.readyState === 0 && !m.error && m.preload === 'none') { m.preload = 'metadata'; m.load(); }
  }
  const settle = (img) => new Promise((resolve) => {
    if (img.complete) return resolve();
    img.addEventListener('load', () => resolve(), {once: true});
    img.addEventListener('error', () => resolve(), {once: true});
    setTimeout(resolve, timeoutMs);
  });
  // Media are polled: the resource selection algorithm passes through NETWORK_NO_SOURCE
  // (3) on its way to a source, so only a no-source state that lasts means "none works".
  const settleMedia = (m) => new Promise((resolve) => {
    const start = Date.now();
    let noSource = 0;
    const tick = () => {
      noSource = m.networkState === 3 ? noSource + 1 : 0;
      if (m.readyState >= 1 || m.error || noSource >= 10 || Date.now() - start > timeoutMs)
        return resolve();
      setTimeout(tick, 50);
    };
    tick();
  });
  await Promise.all([...imgs.map(settle), ...media.map(settleMedia)]);
  const refs = [];
  for (const el of document.querySelectorAll('[src], [href], [poster], object[data]')) {
    for (const attr of ['src', 'href', 'poster', 'data']) {
      const raw = el.getAttribute(attr);
      if (raw === null || (attr === 'data' && el.tagName !== 'OBJECT')) continue;
      let url = raw;
      try { url = new URL(raw, document.baseURI).href; } catch (e) {}
      refs.push({tag: el.tagName.toLowerCase(), attr, raw: raw.slice(0, 120), url: url.slice(0, 2000)});
    }
  }
  return {
    refs,
    images: imgs.map((i) => ({src: (i.getAttribute('src') || '').slice(0, 120), alt: i.alt,
                              complete: i.complete, width: i.naturalWidth})),
    media: media.map((m) => ({tag: m.tagName.toLowerCase(),
                              src: (m.currentSrc || m.getAttribute('src') || '').slice(0, 120),
                              ready: m.readyState, network: m.networkState,
                              error: m.error ? m.error.code : null,
                              width: m.videoWidth === undefined ? null : m.videoWidth})),
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})
"""


def _short(url: str) -> str:
    return url if len(url) <= 100 else url[:60] + "..." + url[-30:]


def _launch(chromium: str, profile: Path, timeout: float) -> tuple[subprocess.Popen, int]:
    argv = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",  # any free port, written to DevToolsActivePort
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "about:blank",
    ]
    with open(profile / "chromium.log", "wb") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (profile / "chromium.log").read_text(errors="replace")[-2000:]
            raise BrowserError(f"chromium exited with {process.returncode}:\n{tail}")
        if port_file.is_file():
            lines = port_file.read_text().split()
            if lines and lines[0].isdigit():
                return process, int(lines[0])
        time.sleep(0.05)
    process.kill()
    raise BrowserError(f"chromium did not open its DevTools port within {timeout:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    """End Chromium and the processes it started (its own process group: renderer, network
    and GPU helpers write to the profile until they exit, not when the browser does)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    process.wait()


def _remove_profile(profile: Path, attempts: int = 20) -> None:
    """Delete the browser profile, retrying while late writers finish (a helper killed a
    moment ago may still flush a file into a directory being removed)."""
    for _ in range(attempts - 1):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.25)
    shutil.rmtree(profile, ignore_errors=True)


def _page_socket(port: int, timeout: float) -> WebSocket:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                targets = json.load(answer)
        except OSError:
            targets = []
        pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
        if pages:
            return WebSocket(pages[0]["webSocketDebuggerUrl"])
        time.sleep(0.1)
    raise BrowserError("chromium shows no page target")


def _event_problems(events: list[dict[str, Any]], result: Result) -> None:
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])
            )
            if params.get("type") in ("error", "assert"):
                result.problems.append(f"console.{params['type']}: {text}")
            elif params.get("type") == "warning":
                result.warnings.append(f"console.warn: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            result.problems.append(f"uncaught exception: {text.splitlines()[0] if text else '?'}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            line = f"{entry.get('source')}: {entry.get('text')} {_short(entry.get('url', ''))}"
            if entry.get("level") == "error":
                result.problems.append(f"browser log error: {line.strip()}")
            elif entry.get("level") == "warning":
                result.warnings.append(f"browser log warning: {line.strip()}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if urllib.parse.urlsplit(url).scheme not in ("file", "data", "blob", "about"):
                result.problems.append(
                    f"request leaves the machine (report must work offline): {_short(url)}"
                )
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            result.problems.append(f"load failed: {params.get('errorText')} ({params.get('type')})")


def _page_problems(state: dict[str, Any], result: Result) -> None:
    for ref in state["refs"]:
        scheme = urllib.parse.urlsplit(ref["url"]).scheme
        where = f"<{ref['tag']} {ref['attr']}={ref['raw']!r}>"
        if scheme in ("http", "https", "ftp", "ws", "wss") or ref["url"].startswith("//"):
            result.problems.append(f"external reference (report must work offline): {where}")
        elif scheme == "file":
            path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(ref["url"]).path))
            if not path.exists():
                result.problems.append(f"missing file {path} referenced by {where}")
    for image in state["images"]:
        result.images += 1
        if not image["complete"] or image["width"] == 0:
            result.problems.append(f"image does not display: <img src={image['src']!r}>")
        elif not image["alt"]:
            result.warnings.append(f"image without alt text: <img src={image['src']!r}>")
    for media in state["media"]:
        result.media += 1
        broken = media["error"] is not None or media["network"] == 3 or media["ready"] < 1
        if broken or (media["tag"] == "video" and not media["width"]):
            result.problems.append(
                f"{media['tag']} does not play: src={media['src']!r} (readyState {media['ready']}, "
                f"networkState {media['network']}, error {media['error']})"
            )


def check_report(
    report: str | os.PathLike[str],
    *,
    screenshot: str | os.PathLike[str] | None = None,
    chromium: str | None = None,
    timeout: float = 60.0,
) -> Result:
    """Render ``report`` in headless Chromium and list what is broken.

    Args:
        report: an HTML file.
        screenshot: where to write a full-page PNG (None: no screenshot).
        chromium: the browser binary (default: the first of chromium, chromium-browser,
            google-chrome on PATH).
        timeout: seconds for the browser to start, the page to load and each element
            to settle.

    Returns:
        The problems found (``result.ok`` when none) and counts of what was checked.

    Raises:
        FileNotFoundError: ``report`` does not exist.
        BrowserError: no Chromium, or it did not start or answer.
    """
    start = time.monotonic()
    path = Path(report).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"report: no such file {path}")
    binary = chromium or find_chromium()
    if binary is None:
        raise BrowserError("no chromium on PATH (apt-get install chromium, or pass --install)")
    result = Result()
    profile = Path(tempfile.mkdtemp(prefix="dfm-chromium-"))
    try:
        process, port = _launch(binary, profile, timeout)
        try:
            tools = DevTools(_page_socket(port, timeout))
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.call(f"{domain}.enable")
            tools.call(
                "Emulation.setDeviceMetricsOverride",
                width=VIEWPORT[0],
                height=VIEWPORT[1],
                deviceScaleFactor=1,
                mobile=False,
            )
            tools.events.clear()
            tools.call("Page.navigate", url=path.as_uri())
            if tools.wait_event("Page.loadEventFired", timeout) is None:
                result.problems.append(f"page did not finish loading within {timeout:.0f} s")
            answer = tools.call(
                "Runtime.evaluate",
                timeout=timeout + 10,
                expression=f"({_PAGE_CHECK.strip()})({int(timeout * 1000)})",
                awaitPromise=True,
                returnByValue=True,
            )
            if "exceptionDetails" in answer:
                raise BrowserError(f"page check failed: {answer['exceptionDetails']}")
            state = answer["result"]["value"]
            _page_problems(state, result)
            if screenshot is not None:
                height = max(VIEWPORT[1], min(int(state["height"]), MAX_SCREENSHOT_HEIGHT))
                shot = tools.call(
                    "Page.captureScreenshot",
                    timeout=timeout,
                    format="png",
                    captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1},
                )
                result.screenshot = Path(screenshot)
                result.screenshot.write_bytes(base64.b64decode(shot["data"]))
            tools.wait_event("__drain__", 0.3)  # late console/log events
            _event_problems(tools.events, result)
            tools.ws.close()
        finally:
            _stop(process)
    finally:
        _remove_profile(profile)
    result.problems = list(dict.fromkeys(result.problems))  # one line per distinct problem
    result.seconds = time.monotonic() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the HTML file to check")
    parser.add_argument("--screenshot", type=Path, help="write a full-page PNG here")
    parser.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument(
        "--install", action="store_true", help="apt-get install chromium if missing"
    )
    args = parser.parse_args(argv)
    try:
        chromium = install_chromium() if args.install else args.chromium
        result = check_report(
            args.report, screenshot=args.screenshot, chromium=chromium, timeout=args.timeout
        )
    except (BrowserError, FileNotFoundError, subprocess.CalledProcessError) as error:
        print(f"browser_check: error: {error}", file=sys.stderr)
        return 2
    for line in result.warnings:
        print(f"warning: {line}")
    for line in result.problems:
        print(f"PROBLEM: {line}")
    shot = f", screenshot {result.screenshot}" if result.screenshot else ""
    verdict = "ok" if result.ok else f"{len(result.problems)} problem(s)"
    print(
        f"{args.report}: {verdict}; {result.images} image(s), {result.media} video/audio "
        f"element(s) checked in {result.seconds:.1f} s{shot}"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
