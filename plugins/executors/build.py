"""Image builds through a Docker-API engine, with a content-addressed cache.

An unchanged environment must never be rebuilt: the key of a build is a hash
of the context (paths, modes, contents), the ids of the ``FROM`` images it
resolves to and the engine it is built on; the per-user build index maps keys
to image ids. A hit only re-tags (one API call), so a cached rebuild runs no
build step at all.

A failed build never raises: the result's ``error`` names the failing step and
quotes the end of its output, which is what a repair loop feeds back to a
model. A missing base image is caught before the build starts, with a hint
(an ``images.aliases`` entry or ``termigen images bootstrap``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from termigen_core.dockerfile import base_images, rewrite_from
from termigen_core.sandbox import BuildResult

#: Lines of build output quoted in a failed build's ``error``.
BUILD_ERROR_TAIL = 40

#: Bumped when the key's recipe changes, so old index entries stop matching.
KEY_VERSION = b"termigen-build-v2\0"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One line about ``exc``: the engine's own explanation when it gave one."""
    text = " ".join(str(getattr(exc, "explanation", None) or exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing_image_hint(image: str) -> str:
    return (
        f"add an `images.aliases` entry mapping {image!r} to a local image "
        f"(e.g. '{image}': termigen/base:bookworm), or run `termigen images bootstrap` to build the base images"
    )


def context_digest(context_dir: Path) -> Iterator[bytes]:
    """Yield the bytes that identify a build context: sorted relative paths, modes and contents."""
    for root, dirs, files in os.walk(context_dir):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(context_dir).as_posix()
            st = path.lstat()
            yield f"{rel}\0{stat.S_IMODE(st.st_mode):o}\0{stat.S_IFMT(st.st_mode):o}\0".encode()
            if stat.S_ISLNK(st.st_mode):
                yield os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                yield f"{st.st_size}\0".encode()
                with path.open("rb") as fh:
                    yield from iter(lambda: fh.read(1 << 20), b"")


def lookup_image_id(client: Any, ref: str) -> str | None:
    """The full id (``sha256:...``) of image ``ref`` on the engine of ``client``, or ``None``."""
    import docker.errors

    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


def split_tag(ref: str) -> tuple[str, str]:
    """``(repository, tag)`` of an image reference (``latest`` when it names none; registry ports kept)."""
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(ref)
    return repo, tag or "latest"


def tag_image(client: Any, source: str, target: str) -> None:
    """Give image ``source`` (an id or a reference) the name ``target``."""
    client.api.tag(source, *split_tag(target))


def short_id(image_id: str) -> str:
    """The 12 characters an engine shows for an image id (with or without ``sha256:``)."""
    return image_id.removeprefix("sha256:")[:12]


#: Repository of the images the ``build`` stage makes, one tag per task version.
TASK_REPOSITORY = "termigen-task"
#: Between a task tag and a run's token in that run's hold tag (a task tag never contains it).
HOLD_SEPARATOR = "--"


def familiar_name(ref: str) -> str:
    """``ref`` without the registry Podman lists local names under (``localhost/``, ``docker.io/``)."""
    for prefix in ("localhost/", "docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def is_task_image(ref: str) -> bool:
    """Whether ``ref`` names a task image a run built (``termigen-task/...``), hold tags included."""
    return familiar_name(ref).startswith(TASK_REPOSITORY + "/")


def run_token(run_id: str) -> str:
    """``run_id`` as it appears in a tag (lower case; characters a tag cannot hold become ``-``)."""
    return re.sub(r"[^a-z0-9_.-]+", "-", run_id.lower()).strip(".-")[:100] or "run"


def hold_tag(task_tag: str, run_id: str) -> str:
    """The tag by which run ``run_id`` holds the image of ``task_tag``.

    Identical build contexts share one image (the build cache re-tags it) and
    two runs of one pipeline make the same task tags, so the task tag alone
    cannot say which runs still need an image. Each run adds its own hold
    while it uses the image and drops it when done; the task tag goes only
    when no run holds it (see :mod:`.lifecycle`).
    """
    repo, tag = split_tag(task_tag)
    return f"{repo}:{tag}{HOLD_SEPARATOR}{run_token(run_id)}"[: len(repo) + 1 + 128]


def held_task_tag(ref: str) -> tuple[str, str] | None:
    """``(task tag, run token)`` of a hold tag, or ``None`` for any other reference."""
    if not is_task_image(ref):
        return None
    repo, tag = split_tag(familiar_name(ref))
    base, sep, token = tag.partition(HOLD_SEPARATOR)
    return (f"{repo}:{base}", token) if sep and token else None


class BuildIndex:
    """The per-user SQLite index: context key → image id (and the tag it was built as)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS builds (key TEXT PRIMARY KEY, tag TEXT NOT NULL,"
            " image_id TEXT NOT NULL, created REAL NOT NULL)"
        )
        return conn

    def lookup(self, key: str) -> str | None:
        with self._connect() as conn:
            row = conn.execute("SELECT image_id FROM builds WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def record(self, key: str, tag: str, image_id: str) -> None:
        with self._connect() as conn:
            conn.execute("INSERT OR REPLACE INTO builds VALUES (?, ?, ?, ?)", (key, tag, image_id, time.time()))

    def _runs(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("CREATE TABLE IF NOT EXISTS runs (token TEXT PRIMARY KEY, run_id TEXT NOT NULL,"
                     " run_dir TEXT NOT NULL, seen REAL NOT NULL)")
        return conn

    def record_run(self, run_id: str, run_dir: Path) -> None:
        """Remember where run ``run_id`` lives, so ``termigen images prune --run ID`` can check its lock."""
        with self._runs() as conn:
            conn.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)",
                         (run_token(run_id), run_id, str(run_dir.resolve()), time.time()))

    def run_dir_of(self, run_id: str) -> Path | None:
        with self._runs() as conn:
            row = conn.execute("SELECT run_dir FROM runs WHERE token = ?", (run_token(run_id),)).fetchone()
        return Path(row[0]) if row else None


class ImageBuilder:
    """Builds on one engine (a docker SDK client); ``engine_id`` keeps cache keys per engine.

    ``isolate_bases`` (Podman): each build sees its ``FROM`` images under
    throw-away unique tags. Podman's builder (buildah) names its working
    container after the ``FROM`` image and, when a build is abandoned on
    timeout, leaves that container in storage; a unique name is what lets
    exactly this build's leftover be removed without touching a concurrent
    build from the same base. Docker's legacy builder needs none of this: its
    step container is named in the log and removed directly.
    """

    def __init__(self, client: Any, engine_id: str, *, isolate_bases: bool = False) -> None:
        self.client = client
        self.engine_id = engine_id
        self.isolate_bases = isolate_bases

    def image_id(self, ref: str) -> str | None:
        return lookup_image_id(self.client, ref)

    def ensure_base(self, ref: str) -> tuple[str | None, str]:
        """The id of ``ref``, pulling it if absent; else ``(None, why)``."""
        image_id = self.image_id(ref)
        if image_id:
            return image_id, ""
        repo, tag = split_tag(ref)
        error = ""
        try:  # Podman reports a failed pull inside a 200 stream, Docker as an exception: handle both
            for event in self.client.api.pull(repo, tag=tag, stream=True, decode=True):
                if isinstance(event, dict) and event.get("error"):
                    error = str(event["error"])
        except Exception as exc:  # noqa: BLE001 - no registry reachable, auth, unknown name
            error = short_error(exc, 200)
        image_id = self.image_id(ref)
        if image_id:
            return image_id, ""
        return None, (" ".join(error.split())[:200] or "the pull did not produce it")

    def tag(self, image_id: str, tag: str) -> None:
        tag_image(self.client, image_id, tag)

    def build(self, context: Path, tag: str, timeout: float, index: BuildIndex) -> BuildResult:
        start = time.monotonic()

        def failed(error: str, log_text: str = "", **details: Any) -> BuildResult:
            return BuildResult(False, tag, log_text, time.monotonic() - start, error=error, details=details)

        dockerfile = context / "Dockerfile"
        if not dockerfile.is_file():
            return failed(f"no Dockerfile in {context}")
        digest = hashlib.sha256(KEY_VERSION + self.engine_id.encode() + b"\0")
        for piece in context_digest(context):
            digest.update(piece)
        text = dockerfile.read_text(errors="replace")
        bases: dict[str, str] = {}
        for ref in base_images(text):
            image_id, why = self.ensure_base(ref)
            if image_id is None:
                return failed(f"base image {ref!r} is not available locally and cannot be pulled ({why}); "
                              f"{missing_image_hint(ref)}", missing_image=ref)
            digest.update(f"FROM {ref} {image_id}\0".encode())
            bases[ref] = image_id
        key = digest.hexdigest()

        cached_id = index.lookup(key)
        if cached_id and self.image_id(cached_id):
            self.tag(cached_id, tag)
            return BuildResult(True, tag, f"cached: context {key[:12]} was built as {cached_id}\n",
                               time.monotonic() - start, cached=True, details={"image_id": cached_id, "key": key})

        if self.isolate_bases and bases:
            outcome = self._isolated_build(context, tag, timeout, text, bases)
        else:
            outcome = self._run_build(context, tag, timeout)
        duration = time.monotonic() - start
        if outcome["error"]:
            return BuildResult(False, tag, outcome["log"], duration, error=outcome["error"], details={"key": key})
        image_id = outcome["image_id"] or self.image_id(tag)
        if not image_id:
            return BuildResult(False, tag, outcome["log"], duration, error="the build ended without producing an image")
        index.record(key, tag, image_id)
        return BuildResult(True, tag, outcome["log"], duration, details={"image_id": image_id, "key": key})

    def _isolated_build(self, context: Path, tag: str, timeout: float, text: str, bases: dict[str, str]) -> dict[str, Any]:
        """Build with every ``FROM`` image under a unique temporary tag (see the class docstring)."""
        import uuid

        temp = {ref: f"termigen-build-tmp/b{uuid.uuid4().hex[:16]}:base" for ref in bases}
        for ref, alias in temp.items():
            self.tag(bases[ref], alias)
        rewritten = rewrite_from(text, lambda ref: temp.get(ref, ref))
        try:
            outcome = self._run_build(context, tag, timeout, dockerfile_text=rewritten)
            if outcome["timed_out"]:
                self._remove_working_containers([alias.split("/")[-1].split(":")[0] for alias in temp.values()])
            for ref, alias in temp.items():  # the log and error speak of the images the Dockerfile names
                outcome["log"] = outcome["log"].replace(alias, ref)
                outcome["error"] = outcome["error"].replace(alias, ref)
            return outcome
        finally:
            for alias in temp.values():
                try:
                    self.client.api.remove_image(alias, noprune=True)  # only the name: other tags keep the image
                except Exception:  # noqa: BLE001
                    pass

    def _remove_working_containers(self, prefixes: list[str]) -> None:
        """Delete buildah working containers named ``PREFIX-working-container*`` (Podman's libpod API)."""
        api = self.client.api
        try:
            listed = api.get(api.base_url + "/v4.0.0/libpod/containers/json",
                             params={"all": "true", "external": "true"}, timeout=30).json()
        except Exception:  # noqa: BLE001 - not Podman, or it went away: nothing to clean
            return
        for container in listed if isinstance(listed, list) else []:
            names = container.get("Names") or []
            if any(name.startswith(f"{prefix}-working-container") for name in names for prefix in prefixes):
                try:
                    api.delete(api.base_url + f"/v4.0.0/libpod/containers/{container['Id']}",
                               params={"force": "true"}, timeout=60)
                except Exception:  # noqa: BLE001
                    pass

    def _run_build(self, context: Path, tag: str, timeout: float, dockerfile_text: str | None = None) -> dict[str, Any]:
        """Stream one build in a thread so the time limit holds even while a step prints nothing.

        ``dockerfile_text`` replaces the context's Dockerfile (added to the
        context tar under another name; the user's directory is not touched).
        """
        state: dict[str, Any] = {"log": [], "error": "", "image_id": None}
        stream_holder: dict[str, Any] = {}

        def consume() -> None:
            try:
                options: dict[str, Any] = {"path": str(context)}
                if dockerfile_text is not None:
                    options = _context_with_dockerfile(context, dockerfile_text)
                stream = self.client.api.build(
                    tag=tag, rm=True, forcerm=True, decode=True, pull=False, **options
                )
                stream_holder["stream"] = stream
                for chunk in stream:
                    if "stream" in chunk:  # the legacy builder colours RUN's stderr
                        state["log"].append(_ANSI.sub("", chunk["stream"]))
                    elif "status" in chunk:
                        state["log"].append(f"{chunk['status']} {chunk.get('progress', '')}".rstrip() + "\n")
                    if "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                        state["image_id"] = chunk["aux"]["ID"]
                    if "error" in chunk:
                        state["error"] = str(chunk["error"]).strip()
                        state["log"].append(f"ERROR: {state['error']}\n")
            except Exception as exc:  # noqa: BLE001 - context errors, engine errors: all are build failures
                state["error"] = state["error"] or f"{type(exc).__name__}: {short_error(exc)}"

        worker = threading.Thread(target=consume, name="termigen-build", daemon=True)
        worker.start()
        worker.join(timeout)
        timed_out = worker.is_alive()
        if timed_out:
            # The legacy builder names each RUN step's container ("Running in <id>"):
            # removing it fails the step and ends the build. Podman's builder stops
            # when its client goes away, so the stream is closed as well.
            running = re.findall(r"Running in ([0-9a-f]{12,64})", "".join(state["log"]))
            if running:
                try:
                    self.client.api.remove_container(running[-1], force=True)
                except Exception:  # noqa: BLE001 - the step may have just finished
                    pass
                worker.join(30)
            _close_stream(stream_holder.get("stream"))
            worker.join(5)
        log_text = "".join(state["log"])
        error = state["error"]
        if timed_out:
            error = f"the build timed out after {timeout:g}s"
        if error:
            error = describe_failure(error, log_text)
        return {"log": log_text, "error": error, "image_id": None if error else state["image_id"], "timed_out": timed_out}


def _context_with_dockerfile(context: Path, text: str) -> dict[str, Any]:
    """Build arguments sending ``context`` (``.dockerignore`` honoured) with ``text`` as its Dockerfile.

    The tar is made here because the SDK's own way (a Dockerfile path outside
    the context) sends the Dockerfile's name *and* contents as two
    ``dockerfile`` query values, and Podman takes the second.
    """
    import uuid

    from docker.utils import tar

    exclude = None
    ignore = context / ".dockerignore"
    if ignore.is_file():
        exclude = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    name = f".dockerfile.termigen-{uuid.uuid4().hex[:12]}"
    fileobj = tar(str(context), exclude=exclude, dockerfile=(name, text))
    return {"fileobj": fileobj, "custom_context": True, "dockerfile": name}


def _close_stream(stream: Any) -> None:
    """Cut the connection behind a docker-py streaming generator (best effort).

    ``response.close()`` would block on the lock the reading thread holds, so
    the socket itself is shut down: the reader then sees EOF, and the engine
    sees its client go away (Podman's builder stops the build then).
    """
    import socket

    if stream is None:
        return
    try:
        frame = getattr(stream, "gi_frame", None)
        response = frame.f_locals.get("response") if frame is not None else None
        raw = response.raw._fp.fp.raw  # urllib3 → http.client → SocketIO
        sock = getattr(raw, "_sock", raw)
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 - internals of another library: a miss only means waiting longer
        pass


def describe_failure(error: str, log_text: str) -> str:
    """The failing step, the engine's error and the last lines of output."""
    steps = re.findall(r"^(step \d+/\d+ ?: .*)$", log_text, re.MULTILINE | re.IGNORECASE)  # Docker, Podman
    lines = [line for line in log_text.splitlines() if line.strip()]
    parts = []
    if steps:
        parts.append(f"failed at {steps[-1]}")
    parts.append(error)
    if lines:
        parts.append(f"--- last {min(len(lines), BUILD_ERROR_TAIL)} lines of build output ---")
        parts.extend(lines[-BUILD_ERROR_TAIL:])
    return "\n".join(parts)
