"""Helpers for tests: run the real CLI, write configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
TEST_PLUGIN = FIXTURES / "test_components.py"


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``termigen`` in a subprocess, as a user would (stdout piped: plain log lines)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "termigen_core", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prune_run_images(run_dir: Path) -> None:
    """Remove a test run's task images the way a user would (``termigen images prune --run``): only the
    images that run holds, never one another run (another test process) holds at the same time."""
    if (run_dir / "run.db").exists():
        run_cli("images", "prune", "--run", str(run_dir), timeout=120)


def default_sigint() -> None:
    """``preexec_fn`` for a child a test sends Ctrl-C (SIGINT) to.

    A shell starts a background job with SIGINT ignored, and Python keeps it ignored, so
    without this every Ctrl-C test would pass or fail by how the suite itself was started
    (``.ci/run &`` from a script ignores it; a terminal does not).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Return once ``condition()`` holds; fail if ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs (a test's cleanup)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
