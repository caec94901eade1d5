"""What a component sees of the run while it works.

A :class:`StageContext` is made per (item, stage): it hands out role-bound
LLM clients scoped to that pair (so resumed work replays stored answers),
sandboxes opened by the configured executor (limited in number, labelled
with the run and item, every command recorded), a seeded random generator,
the run store for artifacts, and a scratch directory. Components never build
any of these themselves, which is what keeps them swappable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .sandbox import LABEL_ITEM, LABEL_MANAGED, LABEL_RUN, LABEL_RUN_DIR, CommandResult, Sandbox, SandboxSpec

if TYPE_CHECKING:
    from .components import Component, ComponentRef, Executor
    from .config import DatasetSection
    from .llm import CallScope, LLMClient, LLMRouter
    from .plugins import ComponentRegistry
    from .store import RunStore

log = logging.getLogger("termigen")


@dataclass(frozen=True)
class ImagePolicy:
    """Which base images generated environments may use, and FROM-line aliases (glob → local tag).

    ``catalog`` holds the prebuilt images a run opted into (``images.catalog``), each with the
    description the environment agent reads; empty unless configured.
    """

    #: the configured ``images.base`` (the config's second pass fills in the executor's default)
    base: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    #: catalog image tag → what it has installed (as the environment agent reads it)
    catalog: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, images: Any, executor_cls: type) -> ImagePolicy:
        """The policy of a resolved ``images`` section; catalog names are described by the executor's
        ``image_catalog`` (the core knows no catalog of its own)."""
        offered = getattr(executor_cls, "image_catalog", None)
        names = images.catalog_names(executor_cls)
        catalog = offered.describe(names, images.base or "") if offered is not None and names else {}
        return cls(images.base or "", dict(images.aliases), catalog)

    def bases(self) -> list[str]:
        """Every image a generated Dockerfile may start FROM: the base, then the catalog images."""
        return [self.base, *self.catalog]

    def is_base(self, image: str) -> bool:
        """Whether ``image`` (already resolved through the aliases) is one of :meth:`bases`."""
        return image in {self.resolve(candidate) for candidate in self.bases()}

    def missing_catalog(self, executor: Any) -> str | None:
        """Why the run cannot start (catalog images the executor's engine lacks, and how to build them), or None."""
        offered = getattr(executor, "image_catalog", None)
        if offered is None or not self.catalog:
            return None
        missing = offered.missing(executor, list(self.catalog))
        return offered.missing_hint(missing) if missing else None

    def resolve(self, image: str) -> str:
        """Rewrite ``image`` through the first matching alias pattern."""
        import fnmatch

        for pattern, target in self.aliases.items():
            if fnmatch.fnmatchcase(image, pattern):
                return target
        return image

    def rewrite_dockerfile(self, text: str) -> str:
        """Apply the aliases to every ``FROM`` image (keeps ``--platform``, ``AS name`` and the layout)."""
        from .dockerfile import rewrite_from

        return rewrite_from(text, self.resolve)


@dataclass
class RunServices:
    """Per-run objects shared by every context (built once by the runner)."""

    run_id: str
    run_dir: Path
    config_dir: Path
    seed: int
    store: "RunStore"
    registry: "ComponentRegistry"
    router: "LLMRouter"
    executor_factory: Any  # () -> Executor, opened lazily: runs without containers never touch an engine
    sandbox_defaults: SandboxSpec
    images: ImagePolicy
    container_slots: threading.BoundedSemaphore
    cancelled: threading.Event
    #: (item id, stage name, "open"/"close", image) around every sandbox: the runner makes it the
    #: ``termigen_sandbox_event`` hook
    on_sandbox: Callable[[str, str, str, str], None] | None = None
    #: The config's ``run`` section (a ``RunSection``): run-wide options a stage honours wherever
    #: its step runs, a Ray worker included (the free-disk floor before a build, say). None: defaults.
    run_options: Any = None
    _executor: "Executor | None" = None
    _executor_lock: threading.Lock = field(default_factory=threading.Lock)
    _components: dict[tuple[str, str, str], "Component"] = field(default_factory=dict)
    _components_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def executor(self) -> "Executor":
        with self._executor_lock:
            if self._executor is None:
                self._executor = self.executor_factory()
            return self._executor

    def component(self, ref: "ComponentRef | str", kind: str | None = None) -> "Component":
        """The component ``ref`` names, built once per run and shared by every item.

        ``kind`` defaults to the kind the declaring config field names
        (``ref_field``/``Refers``). Relative ``Path`` options resolve against the
        config file's directory. Instances are shared across threads: a component
        used this way keeps no per-item state.
        """
        from .components import ComponentRef, instantiate, ref_key

        if isinstance(ref, str):
            ref = ComponentRef(use=ref)
        key = ref_key(ref, kind)
        if not key[0]:
            raise ValueError(f"component reference {ref.use!r} names no kind: pass kind=")
        with self._components_lock:
            found = self._components.get(key)
            if found is None:
                found = instantiate(self.registry.get(key[0], ref.use), ref.with_, self.config_dir)
                self._components[key] = found
            return found


class RecordingSandbox(Sandbox):
    """Wraps an executor's sandbox: records every command in the run store."""

    def __init__(self, inner: Sandbox, ctx: "StageContext") -> None:
        self.inner = inner
        self.id = inner.id
        self._ctx = ctx

    def run(self, command: str, *, timeout_s: float = 60.0) -> CommandResult:
        result = self.inner.run(command, timeout_s=timeout_s)
        self._ctx.services.store.record_command(
            scope=self._ctx.scope_key, stage=self._ctx.stage_name, sandbox=self.id, result=result
        )
        return result

    def put(self, local_path: str, container_path: str) -> None:
        self.inner.put(local_path, container_path)

    def get(self, container_path: str, local_path: str) -> None:
        self.inner.get(container_path, local_path)

    def close(self) -> None:
        self.inner.close()


@dataclass
class StageContext:
    """Everything a stage (or a seed source it uses) may touch for one item."""

    services: RunServices
    stage_index: int
    stage_name: str
    item_id: str
    scope: "CallScope"
    #: A source stage's draw: 0 the first time; a campaign (``run.target``) asks it again with
    #: 1, 2... and expects items it has not produced before (``store.source_outputs`` has them).
    draw: int = 0

    @property
    def run_id(self) -> str:
        return self.services.run_id

    @property
    def run_dir(self) -> Path:
        return self.services.run_dir

    @property
    def store(self) -> "RunStore":
        return self.services.store

    @property
    def registry(self) -> "ComponentRegistry":
        return self.services.registry

    @property
    def images(self) -> ImagePolicy:
        return self.services.images

    @property
    def scope_key(self) -> str:
        return self.scope.key

    @property
    def cancelled(self) -> bool:
        return self.services.cancelled.is_set()

    @property
    def rng(self) -> random.Random:
        """A generator seeded by (run seed, item, stage): same choices on every resume."""
        material = f"{self.services.seed}:{self.item_id}:{self.stage_index}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))

    def component(self, ref: "ComponentRef | str", kind: str | None = None) -> "Component":
        """The component ``ref`` names (a ``ref_field`` of this stage's config), built once per run."""
        return self.services.component(ref, kind)

    def components(self, refs: "list[ComponentRef] | list[str]", kind: str | None = None) -> "list[Component]":
        """:meth:`component` for each reference, in order."""
        return [self.services.component(ref, kind) for ref in refs]

    def llm(self, role: str) -> "LLMClient":
        """A client for ``role`` (settings from ``llm.roles.<role>`` over ``llm.default``)."""
        return self.services.router.client(role, self.scope)

    def resolve_path(self, path: str | Path) -> Path:
        """Paths in configs are relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.services.config_dir / p

    def workdir(self) -> Path:
        """A scratch directory for this (item, stage), kept for inspection."""
        safe = hashlib.sha256(self.item_id.encode()).hexdigest()[:10]
        path = self.run_dir / "work" / f"{self.stage_index:02d}-{self.stage_name}" / f"{_slug(self.item_id)}-{safe}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def executor(self) -> "Executor":
        return self.services.executor

    @contextlib.contextmanager
    def sandbox(self, image: str, **overrides: Any) -> Iterator[Sandbox]:
        """Open a container on ``image`` (through the alias policy), close it afterwards.

        At most ``run.container_concurrency`` sandboxes are open at once across the run.
        """
        labels = {
            LABEL_MANAGED: "1",
            LABEL_RUN: self.run_id,
            LABEL_ITEM: self.item_id[:200],
            LABEL_RUN_DIR: str(self.services.run_dir.resolve()),
        }
        spec = replace(
            self.services.sandbox_defaults,
            image=self.images.resolve(image),
            labels={**self.services.sandbox_defaults.labels, **labels},
            **overrides,
        )
        notify = self.services.on_sandbox
        with self.services.container_slots:
            box = self.executor.open(spec)
            if notify is not None:
                notify(self.item_id, self.stage_name, "open", spec.image)
            try:
                yield RecordingSandbox(box, self)
            finally:
                box.close()
                if notify is not None:
                    notify(self.item_id, self.stage_name, "close", spec.image)

    def log(self, message: str, *args: Any) -> None:
        log.info("[%s %s] " + message, self.stage_name, self.item_id, *args)


@dataclass
class ExportContext:
    """What an exporter sees: the run, its store, and where relative paths go."""

    run_id: str
    run_dir: Path
    store: "RunStore"
    registry: "ComponentRegistry"
    #: the run's ``dataset`` section (what the training data means); None: the defaults
    dataset: "DatasetSection | None" = None

    def dataset_settings(self) -> "DatasetSection":
        """The run's ``dataset`` section, or its defaults for a context built without one."""
        from .config import DatasetSection

        return self.dataset if self.dataset is not None else DatasetSection()

    def output_path(self, path: str | Path) -> Path:
        """Relative export paths are inside the run directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.run_dir / p

    def log(self, message: str, *args: Any) -> None:
        log.info(message, *args)


def _slug(text: str, limit: int = 40) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return out[:limit] or "item"
