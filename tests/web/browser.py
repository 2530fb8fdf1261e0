"""What the console's browser tests share: Debian's chromium driven by Playwright, a live console, screenshots.

Playwright's own browser download (``playwright install``) is never used: ``browser()``
launches ``/usr/bin/chromium`` (``make test`` installs it with apt-get when it is missing).
``needs_chromium`` skips a module, saying why, only when it is not there -- except in CI
(``CI=true``), where a missing browser fails the tests. ``console_url`` serves the console
app over uvicorn on 127.0.0.1 in this process; ``artifacts()`` is where screenshots go
(``$TEACHLOOP_TEST_ARTIFACTS/console``, default ``.pytest-artifacts/console``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from teachloop.app import AppDeps
from teachloop.serve import Serving
from teachloop.store import BlobStore, Database
from teachloop.web import create_console_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LAPTOP = {"width": 1280, "height": 800}

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="no /usr/bin/chromium: install it with `apt-get install chromium` (make test does so as root)",
)


def artifacts() -> Path:
    """The folder screenshots are written to (created)."""
    root = Path(os.environ.get("TEACHLOOP_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / ".pytest-artifacts")
    folder = root / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def console_url(database: Database, blobs: BlobStore, serving: Serving, settings: Any) -> Iterator[str]:
    """The console app served by uvicorn on a free 127.0.0.1 port in this process, while the block runs."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    app = create_console_app(AppDeps(settings, database, blobs, serving=serving))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium launched by Playwright, closed afterwards."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
