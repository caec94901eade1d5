"""What the loopback test servers share: a threaded HTTP server on 127.0.0.1 and its lifecycle.

The protocol servers (``openai_server``, ``anthropic_server``) only define their request
handler and state; starting on a free port, ``TCP_NODELAY``, quiet hang-ups and a clean
stop live here, once.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="LoopbackServer")


class QuietThreadingServer(ThreadingHTTPServer):
    """A threaded server whose handlers see ``self.server.state``."""

    daemon_threads = True
    state: Any

    def get_request(self) -> tuple[socket.socket, Any]:
        # Without TCP_NODELAY every small reply waits for delayed ACKs (~44 ms a request).
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected (timeout tests); anything else is a bug.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Quiet, keep-alive request handling with JSON replies; protocols add ``default_headers()``."""

    protocol_version = "HTTP/1.1"  # keep-alive, like a real API
    server: QuietThreadingServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        return

    def default_headers(self) -> tuple[tuple[str, str], ...]:
        return ()

    def _send_json(self, status: int, payload: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: tuple[tuple[str, str], ...]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (*self.default_headers(), *headers):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class LoopbackServer:
    """Runs ``handler`` on 127.0.0.1 (a free port) in a thread; use as a context manager.

    Subclasses set ``handler`` and ``thread_name`` and keep their state in ``self._state``.
    """

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    thread_name: ClassVar[str] = "loopback-test-server"
    _state: Any

    _httpd: QuietThreadingServer | None = None
    _thread: threading.Thread | None = None

    def start(self: S) -> S:
        httpd = QuietThreadingServer(("127.0.0.1", 0), self.handler)
        httpd.state = self._state
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observations (the state has ``lock``, ``requests``, ``headers`` and ``queue``) -----------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of every request body received, oldest first."""
        with self._state.lock:
            return [json.loads(json.dumps(r)) for r in self._state.requests]

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The (lower-cased) headers of every request."""
        with self._state.lock:
            return [dict(h) for h in self._state.headers]

    @property
    def pending(self) -> int:
        """Behaviours still queued."""
        with self._state.lock:
            return len(self._state.queue)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"
