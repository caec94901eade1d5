"""``termigen view RUN_DIR``: the run's pages on loopback, rebuilt when the run's store changed.

A long run can be watched: each request for a page compares the run's files (``run.db``,
its WAL, ``summary.json``) with what they were when the page was last built, and rebuilds it
only if they changed, so a reload shows the new items and an idle run costs nothing. The
server answers ``GET`` (and ``HEAD``) of the two pages and nothing else: no directory
listing, no other file of the run directory, whatever the path says. It listens on
loopback by default and only answers requests addressed to it by name or address (a
``Host`` check, so a web page cannot reach it through DNS rebinding).

It is the standard library's ``ThreadingHTTPServer`` with ``TCP_NODELAY`` on each
connection (without it every small reply waits ~40 ms for a delayed ACK).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import threading
import webbrowser
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from termigen_core.errors import TermigenError

PageWriter = Callable[[Path], Path]
#: The files whose change means the pages are out of date.
WATCHED = ("run.db", "run.db-wal", "summary.json")
#: Where ``/`` leads.
HOME_PAGE = "report.html"


def _write_report(run_dir: Path) -> Path:
    from .report_page import write_report_html

    return write_report_html(run_dir)


def _write_browse(run_dir: Path) -> Path:
    from .browse_page import write_browse_html

    return write_browse_html(run_dir)


#: The pages served, by URL path, and the function that writes each into the run directory.
PAGES: dict[str, PageWriter] = {"report.html": _write_report, "browse.html": _write_browse}


class ViewError(TermigenError):
    """The server cannot start (the port is taken, the address is not this machine's, ...)."""


class Pages:
    """The run's pages, each rebuilt when the run's files changed since it was built."""

    def __init__(self, run_dir: Path, writers: dict[str, PageWriter] | None = None) -> None:
        self.run_dir = run_dir
        self.writers = dict(writers or PAGES)
        self._built: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()  # one build at a time: builds share the store and the output files

    def signature(self) -> tuple[Any, ...]:
        """What the watched files look like now (size and modification time of each)."""
        marks: list[Any] = []
        for name in WATCHED:
            try:
                stat = (self.run_dir / name).stat()
            except FileNotFoundError:
                marks.append(None)
            else:
                marks.append((stat.st_mtime_ns, stat.st_size))
        return tuple(marks)

    def get(self, name: str) -> bytes:
        """The page ``name``, rebuilt first if the run changed since it was last built here."""
        with self._lock:
            path = self.run_dir / name
            # taken before the build: a change during the build is seen by the next request
            # (at worst one extra build, caused by the store's own WAL being tidied on close)
            before = self.signature()
            if self._built.get(name) != before or not path.is_file():
                self.writers[name](self.run_dir)
                self._built[name] = before
            return path.read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    pages: Pages
    #: ``Host`` headers answered; None: any (the user chose to listen beyond loopback)
    allowed_hosts: frozenset[str] | None

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a reader that went away
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "termigen-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - a request log is noise in the terminal
        return

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(with_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(with_body=True)

    def _answer(self, *, with_body: bool) -> None:
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host", "").lower() not in allowed:
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"this server answers only requests addressed to it\n", "text/plain", with_body)
            return
        path = urlsplit(self.path).path
        if path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/" + HOME_PAGE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/favicon.ico":  # browsers ask for one; "none" is an answer, a 404 is an error in their console
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", with_body)
            return
        name = path.removeprefix("/")
        if name not in self.server.pages.writers:
            self._send(HTTPStatus.NOT_FOUND, f"not found; the pages are {', '.join('/' + p for p in PAGES)}\n".encode(), "text/plain", with_body)
            return
        try:
            body = self.server.pages.get(name)
        except ImportError as exc:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{name} is not available in this termigen ({exc})\n".encode(), "text/plain", with_body)
            return
        except Exception as exc:  # noqa: BLE001 - a page that cannot be built is reported, the server goes on
            message = f"{name} could not be built from {self.server.pages.run_dir}: {type(exc).__name__}: {exc}\n"
            sys.stderr.write("termigen view: " + message)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, message.encode(), "text/plain", with_body)
            return
        self._send(HTTPStatus.OK, body, "text/html", with_body)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, with_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if with_body:
            self.wfile.write(body)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` headers a loopback server answers: its own names only, so a web page cannot
    reach it through a DNS name rebound to 127.0.0.1. Listening beyond loopback is a choice to
    be reached by other names: then any."""
    if not is_loopback(host):
        return None
    return frozenset(f"{name}:{port}".lower() for name in (host, "localhost", "127.0.0.1", "[::1]"))


class ViewServer:
    """The pages of one run directory on ``host:port`` (port 0: any free one); see :func:`serve`."""

    def __init__(self, run_dir: Path, *, host: str = "127.0.0.1", port: int = 0, writers: dict[str, PageWriter] | None = None) -> None:
        try:
            self.httpd = _Server((host, port), _Handler)
        except OSError as exc:
            raise ViewError(_bind_problem(host, port, exc)) from None
        self.httpd.pages = Pages(run_dir, writers)
        self.port = int(self.httpd.server_address[1])
        self.host = host
        self.httpd.allowed_hosts = _allowed_hosts(host, self.port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "ViewServer":
        """Serve in a background thread (for tests and embedding); :meth:`stop` ends it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="termigen-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (another `termigen view`?); choose another with --port, or --port 0 for any free one"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port}; use a port above 1023, or --port 0 for any free one"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; use --host 127.0.0.1"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def serve(run_dir: Path, *, host: str, port: int, open_browser: bool) -> None:
    """Serve ``run_dir``'s report and browser until Ctrl-C; prints the URL (and opens it with ``open_browser``)."""
    server = ViewServer(run_dir, host=host, port=port)
    click.echo(f"serving {run_dir} at {server.url}")
    for name in PAGES:
        click.echo(f"  {server.url}{name}")
    if not is_loopback(host):
        click.echo(f"note: listening on {host}, not loopback: anyone who can reach this machine can read the run's pages")
    click.echo("pages are rebuilt when the run changes; Ctrl-C stops")
    if open_browser and not webbrowser.open(server.url):
        click.echo(f"no browser found here; open {server.url} yourself")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.httpd.server_close()
