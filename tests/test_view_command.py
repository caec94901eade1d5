"""`termigen view RUN_DIR`: the pages over loopback in a real Chromium, rebuilt when the store
changes, nothing else of the run directory served, a taken port refused cleanly, Ctrl-C stops."""

from __future__ import annotations

import http.client
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_browse_html import all_item_ids, plant_hostile_item, quickstart_run, visible_ids  # noqa: F401 - the module's run

from helpers import default_sigint
from termigen_core.runlock import RunLock
from termigen_core.store import RunStore
from termigen_plugins.viewer.serve import PAGES, ViewServer

pytestmark = [pytest.mark.docker, pytest.mark.slow]

URL_WAIT_S = 60


@pytest.fixture
def run_copy(quickstart_run, tmp_path) -> Path:  # noqa: F811 - the fixture imported above
    """A copy of the quickstart's run that a test may add items to."""
    copy = tmp_path / "run"
    shutil.copytree(quickstart_run, copy, ignore=shutil.ignore_patterns("work", "export"))
    return copy


@pytest.fixture
def server(run_copy):
    view = ViewServer(run_copy, host="127.0.0.1", port=0).start()
    try:
        yield view
    finally:
        view.stop()


def get(port: int, path: str, *, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_view_serves_the_browser_and_rebuilds_it_when_the_store_changes(page, server, run_copy):
    # as while a run goes on: its process holds the run lock and the store open
    with RunLock(run_copy):
        live = RunStore(run_copy)
        try:
            watch_the_run(page, server, run_copy)
        finally:
            live.close()


def watch_the_run(page, server, run_copy: Path) -> None:
    page.open(server.url + "browse.html")
    assert visible_ids(page) == all_item_ids(run_copy)
    page.assert_clean()
    built = (run_copy / "browse.html").stat().st_mtime_ns
    page.reload()
    assert (run_copy / "browse.html").stat().st_mtime_ns == built  # nothing changed: nothing rebuilt

    added = plant_hostile_item(run_copy, task_id="added-while-watching")
    page.reload()
    shown = visible_ids(page)
    assert added in shown and "added-while-watching" in shown
    assert shown == all_item_ids(run_copy)
    page.goto(f"{server.url}browse.html#traj/{added}")
    assert page.locator("#trajectory").get_attribute("data-id") == added
    page.screenshot_to("view-browse-live")
    page.assert_clean()


def test_view_serves_the_report(page, server):
    pytest.importorskip("termigen_plugins.viewer.report_page", reason="report.html is another part of issue 13")
    page.open(server.url)  # `/` leads to the report
    assert page.url == server.url + "report.html"
    page.screenshot_to("view-report")
    page.assert_clean()


def test_view_serves_nothing_else_of_the_run_directory(server, run_copy):
    assert (run_copy / "run.db").is_file() and (run_copy / "config.yaml").is_file()
    for path in ("/run.db", "/config.yaml", "/../run.db", "/%2e%2e/run.db", "/artifacts/", "/browse.html/", "//etc/passwd",
                 "/browse.html/../run.db", "/summary.json"):
        status, _, body = get(server.port, path)
        assert status == 404, path
        assert b"SQLite" not in body and b"stages" not in body
    status, headers, _ = get(server.port, "/")
    assert status == 302 and headers["Location"] == "/report.html"
    status, headers, body = get(server.port, "/browse.html?x=1", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0 and headers["Cache-Control"] == "no-store"
    assert get(server.port, "/browse.html", method="POST")[0] == 501
    assert get(server.port, "/browse.html", host="attacker.example:80")[0] == 421  # DNS rebinding


def test_a_page_that_cannot_be_built_is_reported_and_the_server_goes_on(run_copy):
    def broken(run_dir: Path) -> Path:
        raise RuntimeError("the store says no")

    view = ViewServer(run_copy, writers={**PAGES, "report.html": broken}).start()
    try:
        status, _, body = get(view.port, "/report.html")
        assert status == 500 and b"RuntimeError: the store says no" in body
        status, _, body = get(view.port, "/browse.html")
        assert status == 200 and b'id="browse-data"' in body
    finally:
        view.stop()


def wait_for(condition, timeout_s: float = URL_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{condition} never became true"
        time.sleep(0.05)


def read_url(proc: subprocess.Popen) -> str:
    """The URL `termigen view` prints (waiting at most URL_WAIT_S for it)."""
    deadline = time.monotonic() + URL_WAIT_S
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("serving "):
            return line.rsplit(" at ", 1)[1].strip()
    raise AssertionError(f"termigen view printed no URL: {seen!r}, stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


def test_termigen_view_prints_the_url_refuses_a_taken_port_and_stops_on_ctrl_c(page, run_copy, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"  # what $BROWSER names is what `webbrowser` runs for --open
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    command = [sys.executable, "-m", "termigen_core", "view", str(run_copy), "--port", "0", "--open"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "BROWSER": str(browser)},
                            preexec_fn=default_sigint)
    try:
        url = read_url(proc)
        assert url.startswith("http://127.0.0.1:")
        wait_for(opened.is_file)
        assert opened.read_text().strip() == url
        page.open(url + "browse.html")
        assert visible_ids(page) == all_item_ids(run_copy)
        page.assert_clean()

        port = url.rstrip("/").rsplit(":", 1)[1]
        second = subprocess.run([sys.executable, "-m", "termigen_core", "view", str(run_copy), "--port", port],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"port {port} on 127.0.0.1 is already in use" in second.stderr
        assert "Traceback" not in second.stderr + second.stdout

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped" in out and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_termigen_report_rewrites_the_pages_of_a_run(run_copy):
    (run_copy / "browse.html").unlink(missing_ok=True)
    plant_hostile_item(run_copy, task_id="added-before-report")
    result = subprocess.run([sys.executable, "-m", "termigen_core", "report", str(run_copy)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"wrote {run_copy.resolve() / 'browse.html'}" in result.stdout
    assert "added-before-report" in (run_copy / "browse.html").read_text(encoding="utf-8")


def test_termigen_view_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "termigen_core", "view", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "is not a run directory" in result.stderr and "Traceback" not in result.stderr
