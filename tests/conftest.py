"""Shared fixtures: an isolated TERMIGEN_HOME for every test, the real Docker engine, and a
loopback OpenAI-compatible server with a run store for the LLM tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.browser import browser, page  # noqa: F401 - shared fixtures for the headless-browser tests
from support.openai_server import OpenAIServer

from termigen_core.store import RunStore

# Drawing report.html's plots takes seconds; the hundreds of small runs in this suite skip the
# pages. The viewer and quickstart tests ask for them (env TERMIGEN_HTML_PAGES=1 on their runs).
os.environ.setdefault("TERMIGEN_HTML_PAGES", "0")


@pytest.fixture(autouse=True)
def termigen_home(tmp_path_factory, monkeypatch):
    """Keep user-level files (config, caches, indexes) out of the real home."""
    home = tmp_path_factory.mktemp("termigen-home")
    monkeypatch.setenv("TERMIGEN_HOME", str(home))
    monkeypatch.delenv("TERMIGEN_PLUGINS", raising=False)
    monkeypatch.delenv("TERMIGEN_DISABLE_PLUGINS", raising=False)
    return home


@pytest.fixture(scope="session")
def docker_client():
    """One client of the real Docker engine for the session, or a skip saying how to start one."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable engine
        pytest.skip(f"no Docker engine reachable ({exc}); start one with scripts/setup-engine.sh")
    yield client
    client.close()


@pytest.fixture(scope="session")
def python_base_engine(docker_client):
    """The Docker client, once ``termigen/python:bookworm`` (what generated tasks build FROM) exists."""
    try:
        docker_client.images.get("termigen/python:bookworm")
    except Exception:  # noqa: BLE001
        pytest.skip("termigen/python:bookworm is missing; run `termigen images bootstrap`")
    return docker_client


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    """One loopback OpenAI-compatible server per test module."""
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def api(server: OpenAIServer) -> Iterator[OpenAIServer]:
    """The module's server; each test enqueues its own behaviours and consumes them all."""
    assert server.pending == 0, "a previous test left behaviours queued"
    yield server
    assert server.pending == 0, "the test queued behaviours that were never requested"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    """A fresh run store in the test's own directory."""
    st = RunStore(tmp_path / "run")
    yield st
    st.close()
