"""Task images over a run's life, and the disk they take.

Every task image is 100-500 MB, and a run builds one per task: kept forever,
they fill the engine's disk long before a run of thousands of tasks ends. So
an :class:`ImageJanitor`, registered for a run next to the progress reporter,
follows the steps through the lifecycle hooks and removes a task's image once
nothing in the run needs it again: when the task is ``done`` at the last stage
that runs in its image (``Stage.uses_task_image``) or ``rejected`` anywhere
(final). A ``failed`` step keeps it, since a resume retries that step in it.
``run.keep_images`` keeps them all. Exports never need an image: they hold
the build context, which rebuilds it.

Images are shared: the build cache re-tags one image for identical contexts,
and two runs of one pipeline (or a test next to another) make the same task
tags. So a run *holds* each image it uses with a tag of its own
(:func:`~.build.hold_tag`), drops its hold when done, and removes the task tag
only if no other run holds it. The holds also let ``termigen images prune
--run`` find a run's images later.

The disk guard (:func:`wait_for_disk`) runs before every build: below
``run.min_free_disk_gb`` free on the engine's storage, the build waits (and
says so) for up to ``run.disk_wait_s``, then its step fails as an
infrastructure error that stops the run; resuming retries it. A disk that
fills *during* a build is recognised in the build's error (:func:`disk_full_in`).
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from termigen_core import hookimpl
from termigen_core.errors import Cancelled, InfrastructureError
from termigen_core.status import StepStatus

from .build import TASK_REPOSITORY, held_task_tag, hold_tag, is_task_image, lookup_image_id, run_token, short_error, tag_image

if TYPE_CHECKING:
    from termigen_core.config import ResolvedPipeline, RunSection
    from termigen_core.items import Item
    from termigen_core.plugins import PluginHost
    from termigen_core.store import RunStore

log = logging.getLogger("termigen.images")

GB = 1e9
#: ``docker images`` filter matching every task image name.
TASK_GLOB = f"{TASK_REPOSITORY}/*"
#: What an engine or a build step prints when the disk is full.
_DISK_FULL = re.compile(r"no space left on device|disk quota exceeded|not enough space on the disk", re.IGNORECASE)


# --- settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleSettings:
    """The ``run`` options about images and disk (defaults: ``RunSection``'s)."""

    keep_images: bool = False
    min_free_disk_gb: float = 5.0
    disk_wait_s: float = 600.0

    @classmethod
    def of(cls, run: RunSection | None) -> LifecycleSettings:
        """The settings of a run's ``run`` section (``None``: the defaults)."""
        if run is None:
            from termigen_core.config import RunSection

            run = RunSection()
        return cls(run.keep_images, run.min_free_disk_gb, run.disk_wait_s)


# --- disk ----------------------------------------------------------------------------


def disk_full_in(text: str) -> str | None:
    """The line of a build's error or log saying the disk is full, or ``None``."""
    for line in reversed(text.splitlines()):
        if _DISK_FULL.search(line):
            return line.strip()[:300]
    return None


def free_disk(executor: Any, fallback: Path) -> tuple[float, str]:
    """Free bytes where the engine keeps images (``docker info``'s DockerRootDir) and that path.

    A remote engine's path is not on this machine: then the filesystem of
    ``fallback`` (the run directory) is measured instead.
    """
    path = None
    probe = getattr(executor, "storage_path", None)
    if probe is not None:
        try:
            path = probe()
        except Exception as exc:  # noqa: BLE001 - the guard must not fail a build on a probe
            log.debug("could not ask the engine where it stores images: %s", short_error(exc))
    where = Path(path) if path and Path(path).is_dir() else fallback
    return float(shutil.disk_usage(where).free), str(where)


def wait_for_disk(
    executor: Any,
    settings: LifecycleSettings,
    fallback: Path,
    *,
    say: Callable[..., None],
    cancelled: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the engine's disk has ``settings.min_free_disk_gb`` free; wait (saying so) until then.

    Raises :class:`InfrastructureError` (``stops_run``: every other build would
    wait as long) after ``settings.disk_wait_s``, and :class:`Cancelled` if the
    run stops meanwhile; either way the step is redone on resume.
    """
    floor = settings.min_free_disk_gb
    if floor <= 0:
        return
    free, where = free_disk(executor, fallback)
    if free >= floor * GB:
        return
    interval = min(30.0, max(0.5, settings.disk_wait_s / 10))
    deadline = time.monotonic() + settings.disk_wait_s
    while free < floor * GB:
        if cancelled():
            raise Cancelled("the run is stopping: the build that waited for disk space is left for the resume")
        if time.monotonic() >= deadline:
            raise InfrastructureError(
                f"not enough free disk for a build: {free / GB:.1f} GB free on {where} (the container engine's "
                f"storage), below run.min_free_disk_gb = {floor:g} GB, for {settings.disk_wait_s:g}s. Free some "
                "space (`termigen images prune --run RUN_DIR` removes a finished run's task images) or lower "
                "run.min_free_disk_gb, then re-run the same command: the step is retried.",
                stops_run=True,
            )
        say("waiting for disk: %.1f GB free, floor %g GB (%s)", free / GB, floor, where)
        sleep(interval)
        free, where = free_disk(executor, fallback)


# --- removing a task image -------------------------------------------------------------


@dataclass
class Removal:
    """What removing one task tag did."""

    tag: str
    untagged: bool = False  #: the task tag is gone
    deleted: bool = False  #: the image went with it (no other name pointed at it)
    kept: str = ""  #: why the tag stayed (held by another run, in use); empty if it went
    image_id: str = ""  #: the image the tag named


def _remove_name(client: Any, ref: str) -> list[dict[str, Any]] | None:
    """``docker rmi REF`` (never forced); ``None`` if there was no such name."""
    import docker.errors

    try:
        return list(client.api.remove_image(ref) or [])
    except docker.errors.NotFound:  # ImageNotFound included
        return None


def hold_image(client: Any, task_tag: str, run_id: str) -> bool:
    """Add run ``run_id``'s hold on the image of ``task_tag``; False if there is no such image."""
    try:
        tag_image(client, task_tag, hold_tag(task_tag, run_id))
        return True
    except Exception as exc:  # noqa: BLE001 - a removed image needs no hold
        log.debug("no hold on %s: %s", task_tag, short_error(exc))
        return False


def release_image(client: Any, task_tag: str, run_id: str) -> Removal:
    """Drop run ``run_id``'s hold on ``task_tag`` and remove the task tag unless another run holds it.

    Never forced: an image a container still uses stays (``kept`` says so).
    The image itself goes with its last name (the engine deletes it then).
    """
    import docker.errors

    outcome = Removal(task_tag)
    try:
        said = _remove_name(client, hold_tag(task_tag, run_id))
        outcome.deleted = any("Deleted" in entry for entry in said or [])  # the hold was its last name
    except docker.errors.APIError as exc:
        outcome.kept = f"in use: {short_error(exc, 200)}"
        return outcome
    try:
        image = client.images.get(task_tag)
    except docker.errors.NotFound:
        return outcome
    outcome.image_id, names = image.id, image.tags
    others = [n for n in names if (held := held_task_tag(n)) is not None and held[0] == task_tag]
    if others:
        outcome.kept = f"held by another run ({others[0]})"
        return outcome
    try:
        said = _remove_name(client, task_tag)
    except docker.errors.APIError as exc:
        outcome.kept = f"in use: {short_error(exc, 200)}"
        return outcome
    outcome.untagged = said is not None
    outcome.deleted = any("Deleted" in entry for entry in said or [])
    return outcome


def exclusive_sizes(client: Any, image_ids: Iterable[str]) -> dict[str, int]:
    """Image id → bytes that image takes and no other named image shares: its size minus that of
    its base (the largest other named image whose layers it starts with). What removing it frees."""
    wanted = set(image_ids)
    if not wanted:
        return {}
    images = client.images.list()  # inspected: sizes and layer lists
    bases = [(tuple(i.attrs.get("RootFS", {}).get("Layers") or ()), int(i.attrs.get("Size") or 0))
             for i in images if i.id not in wanted and i.tags]
    sizes: dict[str, int] = {}
    for image in images:
        if image.id not in wanted:
            continue
        layers = tuple(image.attrs.get("RootFS", {}).get("Layers") or ())
        size = int(image.attrs.get("Size") or 0)
        shared = max((s for ls, s in bases if ls and len(ls) <= len(layers) and layers[: len(ls)] == ls), default=0)
        sizes[image.id] = max(0, size - shared)
    return sizes


def human_bytes(count: float) -> str:
    """``123 B``, ``4.5 kB``, ``67.8 MB``, ``1.2 GB`` (decimal units, as the engines print them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"


@dataclass
class PruneReport:
    """What ``termigen images prune --run`` did."""

    removed: list[Removal] = field(default_factory=list)
    kept: list[Removal] = field(default_factory=list)
    freed_bytes: int = 0


def prune_run_images(client: Any, run_id: str, recorded: Iterable[str] = ()) -> PruneReport:
    """Remove run ``run_id``'s task images: its holds, and each task tag no other run holds
    (``recorded``: task tags its run store names, for runs that made no holds)."""
    found = run_task_tags(client, run_id, recorded)
    sizes = exclusive_sizes(client, set(found.values()))
    report = PruneReport()
    for tag, image_id in sorted(found.items()):
        outcome = release_image(client, tag, run_id)
        if outcome.kept:
            report.kept.append(outcome)
            continue
        report.removed.append(outcome)
        if outcome.deleted:
            report.freed_bytes += sizes.pop(image_id, 0)  # pop: two tags of one image free it once
    return report


def run_task_tags(client: Any, run_id: str, recorded: Iterable[str] = ()) -> dict[str, str]:
    """Task tag → image id, for the task images run ``run_id`` holds, plus ``recorded`` task tags
    (from its run store) that still exist."""
    token = run_token(run_id)
    found: dict[str, str] = {}
    for image in client.images.list(name=TASK_GLOB):
        for name in image.tags:
            held = held_task_tag(name)
            if held is not None and held[1] == token:
                found[held[0]] = image.id
    for tag in recorded:
        if tag not in found and is_task_image(tag) and held_task_tag(tag) is None:
            image_id = lookup_image_id(client, tag)
            if image_id:
                found[tag] = image_id
    return found


def recorded_task_tags(store: RunStore) -> set[str]:
    """Every task image tag a run's store records (the outputs of its finished steps)."""
    tags: set[str] = set()
    for row in store.stage_rows(StepStatus.DONE):
        for item in store.outputs_of(row):
            tag = _image_of(item)
            if tag:
                tags.add(tag)
    return tags


def _image_of(item: Item) -> str | None:
    """The task image an item carries, if it is one a run built."""
    task = item.data.get("task") if isinstance(item.data, dict) else None
    build = task.get("build") if isinstance(task, dict) else None
    image = build.get("image") if isinstance(build, dict) else None
    return image if isinstance(image, str) and is_task_image(image) else None


# --- the janitor -------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Per task tag: how many items carrying it have yet to finish with it."""

    waiting: Counter[str] = field(default_factory=Counter)
    owned: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)


class ImageJanitor:
    """Removes each task image after its last consumer stage (see the module docstring).

    Bookkeeping happens in the hook (quick: one read of the step's outputs, one
    tag call per new image); removals go to a worker thread, so no step waits
    for an image to be deleted.
    ``termigen_run_end`` waits for the worker, so what a run leaves is settled
    when it returns.
    """

    def __init__(self, *, last_consumer: int | None, settings: LifecycleSettings,
                 client_factory: Callable[[], Any] | None) -> None:
        self.last_consumer = last_consumer
        self.settings = settings
        self._client_factory = client_factory
        self._client: Any = None
        self._tally = _Tally()
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._store: RunStore | None = None
        self.run_id = ""
        self.removed: list[Removal] = []
        self.kept: list[Removal] = []

    @property
    def active(self) -> bool:
        return self.last_consumer is not None and self._client_factory is not None

    # -- hooks ------------------------------------------------------------------

    @hookimpl
    def termigen_run_start(self, run_id: str, run_dir: str, config: dict[str, Any]) -> None:
        from termigen_core.store import RunStore
        from termigen_core.userdirs import user_dirs

        from .build import BuildIndex

        self.run_id = run_id
        if not self.active:
            return
        try:
            BuildIndex(user_dirs().build_index).record_run(run_id, Path(run_dir))
        except Exception as exc:  # noqa: BLE001 - only `images prune --run ID` needs it
            log.debug("could not record run %s in the build index: %s", run_id, exc)
        self._store = RunStore(run_dir)

    @hookimpl
    def termigen_item_event(self, run_id: str, stage_index: int, stage_name: str, item: Item,
                            status: str, reason: str | None) -> None:
        if not self.active or self._store is None or run_id != self.run_id:
            return
        last = self.last_consumer
        assert last is not None
        if stage_index > last or status == StepStatus.FAILED:
            return  # past every consumer; or kept for the retry a resume makes
        produced: list[str] = []
        if status in (StepStatus.DONE, StepStatus.SKIPPED) and stage_index < last:
            row = self._store.stage_run(item.id, stage_index)
            produced = [t for o in (self._store.outputs_of(row) if row else []) if (t := _image_of(o))]
        finished = _image_of(item) if status in (StepStatus.DONE, StepStatus.SKIPPED, StepStatus.REJECTED) else None
        holds: list[str] = []
        release = None
        with self._lock:
            tally = self._tally
            for tag in produced:
                tally.waiting[tag] += 1
                if tag not in tally.owned:
                    tally.owned.add(tag)
                    holds.append(tag)
            if finished and finished in tally.owned:
                tally.waiting[finished] -= 1
                if tally.waiting[finished] <= 0 and not self.settings.keep_images and finished not in tally.released:
                    tally.released.add(finished)
                    release = finished
        for tag in holds:  # at once (one tag call), not queued: until it is there, another run could remove the image
            try:
                hold_image(self._engine(), tag, self.run_id)
            except Exception as exc:  # noqa: BLE001 - no engine: the worker will say so
                log.debug("no hold on %s: %s", tag, short_error(exc))
        if release is not None:
            self._submit(release)

    @hookimpl
    def termigen_run_end(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        if run_id != self.run_id:
            return
        self.close()
        if self.removed or self.kept:
            deleted = sum(1 for r in self.removed if r.deleted)
            log.info("task images: removed %d after their last stage (%d deleted from the engine, the rest "
                     "still named by another tag); %d kept", len(self.removed), deleted, len(self.kept))

    # -- engine work --------------------------------------------------------------

    def _engine(self) -> Any:
        with self._client_lock:
            if self._client is None:
                assert self._client_factory is not None
                self._client = self._client_factory()
            return self._client

    def _submit(self, tag: str) -> None:
        with self._client_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="termigen-image-janitor", daemon=True)
                self._worker.start()
        self._jobs.put(tag)

    def _work(self) -> None:
        while (tag := self._jobs.get()) is not None:
            try:
                outcome = release_image(self._engine(), tag, self.run_id)
            except Exception as exc:  # noqa: BLE001 - never a run failure: the image stays
                outcome = Removal(tag, kept=short_error(exc, 200))
            if outcome.kept:  # another run's hold is business as usual; an image in use is worth a look
                level = logging.INFO if outcome.kept.startswith("held by") else logging.WARNING
                log.log(level, "kept task image %s: %s", tag, outcome.kept)
                self.kept.append(outcome)
            elif outcome.untagged:
                self.removed.append(outcome)
            self._jobs.task_done()
        self._jobs.task_done()

    def drain(self) -> None:
        """Wait until every removal asked for so far is done."""
        self._jobs.join()

    def close(self, timeout: float = 600.0) -> None:
        """Finish the queued engine work, close the store, forget the run's settings."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout)
            self._worker = None
        if self._store is not None:
            self._store.close()
            self._store = None
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


@hookimpl
def termigen_run_listeners(pipeline: ResolvedPipeline) -> list[object]:
    """Every run gets its own janitor (registered by the runner for that run only)."""
    return [make_image_janitor(pipeline)]


def make_image_janitor(pipeline: ResolvedPipeline, host: PluginHost | None = None) -> ImageJanitor:
    """The janitor for one run of ``pipeline``: register it with ``host.pm`` for the run, like the
    progress reporter. Inactive when no stage runs in task images or the executor has no image API."""
    from termigen_core.components import instantiate

    consumers = [i for i, (cls, _) in enumerate(pipeline.stages) if getattr(cls, "uses_task_image", False)]
    cls, options = pipeline.executor

    def engine_client() -> Any:
        return instantiate(cls, options, pipeline.config_dir).client  # type: ignore[attr-defined]

    return ImageJanitor(
        last_consumer=max(consumers) if consumers else None,
        settings=LifecycleSettings.of(pipeline.config.run),
        client_factory=engine_client if hasattr(cls, "remove_image") else None,
    )
