"""The dashboard and the report, in a real browser: Chromium from Debian, driven by Playwright.

While a sweep with a failing task runs (on each backend): the live page's counts match
`status --json` and follow the sweep without a reload; a click on a failure shows its traceback;
the memory chart shows the memory= asked; the page logs no console error. The report, opened from
file://, makes no network request and shows the same counts. Off loopback, no token, no page.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import IN_CI, BackendName, cli, wait_until

import sheepdog_drmaa

pytestmark = pytest.mark.dashboard

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def held_unless_bad(directory: str, x: int) -> int:
    """Task 3 fails at once; the others run until the test lets them go (at most 90 s)."""
    if x == 3:
        raise ValueError(f"point {x} is out of range")
    deadline = time.monotonic() + 90
    while not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return x * x


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system's packages: nothing is downloaded."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("playwright is not installed: ci/test.sh installs it")
        pytest.skip("playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail(f"no Chromium at {CHROMIUM}: ci/test.sh installs it (apt-get install chromium)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def dashboard(store: str) -> Iterator[Any]:
    """Start `sheepdog-drmaa dashboard` on a free port; yields a function giving its URL."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        process = subprocess.Popen([sys.executable, "-m", "sheepdog_drmaa", "dashboard", "--port", "0", "--store",
                                    store, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd="/")
        started.append(process)
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), process.stderr.read() if process.stderr else url
        return url
    yield start
    for process in started:
        process.terminate()
        process.communicate(timeout=30)


def shown_counts(page: Any) -> dict[str, int]:
    counts = page.locator("#counts")
    return {name: int(counts.get_attribute(f"data-{name}")) for name in ("done", "failed", "running", "queued")}


def test_the_live_page_follows_a_sweep_and_opens_its_failures(browser: Any, dashboard: Any, backend: BackendName,
                                                              store: str, tmp_path: pathlib.Path) -> None:
    sweep = sheepdog_drmaa.map_async(held_unless_bad, [(str(tmp_path), x) for x in range(6)], backend=backend,
                                     store=store, progress=False, name="watched", workers=6, retries=0,
                                     memory="1G")
    try:
        watch_the_sweep(browser, dashboard, store, sweep, tmp_path)
    finally:  # whatever failed, the held tasks go, and the sweep ends
        (tmp_path / "release").touch()
        sweep.wait(120)


def watch_the_sweep(browser: Any, dashboard: Any, store: str, sweep: sheepdog_drmaa.Sweep,
                    tmp_path: pathlib.Path) -> None:
    wait_until(lambda: sweep.status()["failed"] == 1 and sweep.status()["running"] == 5, 120,
               "five tasks running and one failed")
    url = dashboard()
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.get_by_role("link", name="watched").click()
    page.wait_for_selector("#counts")
    status = json.loads(cli(store, "status", "watched", "--json").stdout)
    assert shown_counts(page) == status["counts"] == {"done": 0, "failed": 1, "running": 5, "queued": 0}

    failure = page.locator("details.failure").first
    page.locator("#cause-exception > summary").click()
    failure.locator("summary").click()
    traceback = failure.locator("pre.traceback")
    assert traceback.is_visible() and "ValueError: point 3 is out of range" in traceback.inner_text()
    assert "held_unless_bad" in traceback.inner_text()
    assert "memory= asked: 1.0 GiB" in page.locator("#chart-memory").inner_text()

    (tmp_path / "release").touch()
    assert sweep.wait(120)
    from playwright.sync_api import expect
    expect(page.locator("#counts")).to_have_attribute("data-done", "5", timeout=30_000)
    assert page.locator("body").get_attribute("data-refreshed")  # by the JSON endpoint, not a reload
    final = json.loads(cli(store, "status", "watched", "--json").stdout)
    assert shown_counts(page) == final["counts"] == {"done": 5, "failed": 1, "running": 0, "queued": 0}
    assert page.locator("#cause-exception").get_attribute("open") is not None  # kept open across refreshes
    assert not errors, errors


def test_the_report_is_one_file_that_asks_nothing_of_the_network(browser: Any, store: str,
                                                                 tmp_path: pathlib.Path) -> None:
    (tmp_path / "release").touch()
    with pytest.raises(sheepdog_drmaa.SweepFailed):
        sheepdog_drmaa.map(held_unless_bad, [(str(tmp_path), x) for x in range(5)], backend="local", store=store,
                           progress=False, name="reported", retries=0)
    report = tmp_path / "report.html"
    written = cli(store, "report", "reported", "-o", str(report))
    assert written.returncode == 0, written.stderr
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.wait_for_selector("#counts")
    assert requests == [report.as_uri()]  # the file itself, and nothing else
    status = json.loads(cli(store, "status", "reported", "--json").stdout)
    assert shown_counts(page) == status["counts"] == {"done": 4, "failed": 1, "running": 0, "queued": 0}
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import", report.read_text())


def test_a_dashboard_off_loopback_refuses_requests_without_its_token(dashboard: Any, store: str,
                                                                     tmp_path: pathlib.Path) -> None:
    (tmp_path / "release").touch()
    sheepdog_drmaa.map(held_unless_bad, [(str(tmp_path), 1)], backend="local", store=store, progress=False,
                       name="private")
    url = dashboard("--bind", "0.0.0.0")
    token = re.search(r"token=([\w-]+)", url)
    assert token is not None
    port = url.split(":")[2].split("/")[0]
    local = f"http://127.0.0.1:{port}"
    for path in ("/", "/sweep/private", "/api/sweep/private", f"/api/sweep/private?token={token[1][:-1]}x"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(local + path, timeout=30)
        refused.value.close()
        assert refused.value.code == 403
    with urllib.request.urlopen(f"{local}/api/sweep/private?token={token[1]}", timeout=30) as answer:
        assert json.load(answer)["counts"]["done"] == 1


def test_a_sweep_in_a_notebook_shows_its_counts_and_links_the_live_dashboard(dashboard: Any, store: str,
                                                                              tmp_path: pathlib.Path) -> None:
    (tmp_path / "release").touch()
    sheepdog_drmaa.map(held_unless_bad, [(str(tmp_path), x) for x in (1, 2)], backend="local", store=store,
                       progress=False, name="noted")
    sweep = sheepdog_drmaa.Sweep.open("noted", store=store)
    shown = sweep._repr_html_()
    assert "<td>noted</td><td>finished</td><td>2</td><td>2</td><td>0</td>" in shown and "dashboard" not in shown
    url = dashboard()
    linked = sweep._repr_html_()
    assert f'href="{url.rstrip("/")}/sweep/{sweep.id}"' in linked
    with urllib.request.urlopen(f"{url.rstrip('/')}/sweep/{sweep.id}", timeout=30) as page:
        assert "noted" in page.read().decode()
