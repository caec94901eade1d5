"""The ``docker`` executor (and, through :mod:`.podman_executor`, ``podman``).

Both talk to an engine's Docker-compatible API with the docker SDK; the SDK is
imported inside methods only, so loading this plugin (every ``termigen``
invocation does) costs nothing. The pieces live in small modules:

* :mod:`.shell`: the persistent bash session behind ``Sandbox.run``;
* :mod:`.sandbox`: the container as a ``Sandbox`` (files, removal);
* :mod:`.build`: image builds with a content-hash cache;
* :mod:`.output`: exec-stream frames, end markers, capped output.

Why the containers look the way they do: they idle in ``sleep infinity`` under
``init=True`` (without an init, PID 1 ignores SIGTERM and every removal waits
10 s, and orphans are never reaped); capabilities are dropped to a short list
apt, useradd and servers need; ``no-new-privileges``; swap is not allowed
(``memswap == memory``) so a memory hog is stopped by the OOM killer rather
than thrashing; every container carries ``io.termigen.*`` labels so
``termigen sandbox prune`` can find what a crashed run left behind.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click
from pydantic import Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, ComponentRef, Executor, default_component
from termigen_core.errors import ExecutorUnavailable, TermigenError
from termigen_core.sandbox import FILE_AREAS, LABEL_MANAGED, LABEL_RUN, LABEL_RUN_DIR, BuildResult, SandboxSpec

from .build import BuildIndex, ImageBuilder, missing_image_hint, short_error
from .catalog import BUILTIN_CATALOG
from .output import DEFAULT_OUTPUT_LIMIT
from .sandbox import DockerSandbox

if TYPE_CHECKING:
    import docker

log = logging.getLogger("termigen.executors.docker")

#: Capabilities kept after ``cap_drop=ALL``: enough for apt/dpkg (drops to the
#: ``_apt`` user, chowns files), useradd/chown, signalling processes and
#: servers on ports < 1024, which generated tasks routinely need.
CAP_ADD = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"]

#: Seconds ``check()`` waits for the engine; it must fail fast on a dead socket.
CHECK_TIMEOUT_S = 5


class DockerExecutor(Executor):
    """Docker Engine through the docker SDK (``DOCKER_HOST`` honoured, so a remote engine works)."""

    name = "docker"
    description = "Containers and image builds on a Docker-API engine (Docker; Podman has its own executor)."
    default = True
    default_base_image = "termigen/python:bookworm"  # python3 + pytest: task tests run with the image's own python
    #: the prebuilt images ``images.catalog`` may name (``termigen images bootstrap --catalog``)
    image_catalog = BUILTIN_CATALOG

    class Config(ComponentConfig):
        base_url: str | None = Field(
            default=None,
            description="Engine address, e.g. tcp://host:2375; default: DOCKER_HOST or the local socket.",
        )
        memory_mb: int = Field(default=2048, ge=64, description="Memory limit per sandbox (no swap on top).")
        cpus: float = Field(default=1.0, gt=0, description="CPU limit per sandbox.")
        pids_limit: int = Field(default=512, ge=16, description="Process limit per sandbox.")
        network: Literal["bridge", "none"] = Field(default="bridge", description="Sandbox network.")
        build_timeout_s: float = Field(default=1800, gt=0, description="Default time limit of one image build.")
        output_limit_bytes: int = Field(
            default=DEFAULT_OUTPUT_LIMIT, ge=1024,
            description="Output kept per command (first and last half; a note says how much was cut).",
        )

    config: DockerExecutor.Config

    def __init__(self, config: ComponentConfig | None = None) -> None:
        super().__init__(config)
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._storage_path: str | None = None

    # -- engine connection -------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address a client will use, for messages (the SDK hides it behind ``http+docker://``)."""
        return self.config.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def _make_client(self, timeout: int) -> docker.DockerClient:
        import docker

        if self.config.base_url:
            return docker.DockerClient(base_url=self.config.base_url, timeout=timeout, max_pool_size=64)
        return docker.from_env(timeout=timeout, max_pool_size=64)

    def _start_advice(self) -> str:
        return ("Start Docker with `sudo dockerd &` or `scripts/setup-engine.sh`, "
                "or point DOCKER_HOST (or the executor's `base_url`) at a running engine.")

    def _unavailable(self, exc: BaseException) -> ExecutorUnavailable:
        address = self.address
        reason = short_error(exc)
        if address.startswith("unix://") and not Path(address[len("unix://") :]).exists():
            reason = f"the socket {address[len('unix://'):]} does not exist (no engine is running)"
        return ExecutorUnavailable(f"cannot reach the container engine at {address}: {reason}. {self._start_advice()}")

    @property
    def client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._make_client(timeout=120)
                except Exception as exc:  # noqa: BLE001 - any connection failure means "unavailable"
                    raise self._unavailable(exc) from exc
            return self._client

    def check(self) -> None:
        try:
            probe = self._make_client(timeout=CHECK_TIMEOUT_S)
            try:
                probe.ping()
            finally:
                probe.close()
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable(exc) from exc

    # -- sandboxes ---------------------------------------------------------------------

    def _limits(self, spec: SandboxSpec) -> tuple[int, float, int, str]:
        """The sandbox's limits: the spec's where it sets one, else this executor's configured ones.

        This is the one place the configured limits are applied (a spec's
        ``None`` means "the executor's"). Network ``none`` from either side wins.
        """
        cfg = self.config
        network = "none" if "none" in (spec.network, cfg.network) else "bridge"
        return (
            cfg.memory_mb if spec.memory_mb is None else spec.memory_mb,
            cfg.cpus if spec.cpus is None else spec.cpus,
            cfg.pids_limit if spec.pids_limit is None else spec.pids_limit,
            network,
        )

    def open(self, spec: SandboxSpec) -> DockerSandbox:
        """Create and start a container that idles until commands are exec'd into it.

        The engine creates ``spec.workdir`` when it is missing (Docker and
        Podman both do for ``--workdir``), which saves an exec per sandbox. A
        failure -- or a Ctrl-C -- between create and return removes the container.
        """
        import docker.errors

        memory_mb, cpus, pids_limit, network = self._limits(spec)
        labels = {LABEL_MANAGED: "1", **spec.labels}
        try:
            container = self.client.containers.create(
                spec.image,
                command=["sleep", "infinity"],
                init=True,
                detach=True,
                labels=labels,
                mem_limit=f"{memory_mb}m",
                memswap_limit=f"{memory_mb}m",
                nano_cpus=int(cpus * 1e9),
                pids_limit=pids_limit,
                network_mode=network,
                cap_drop=["ALL"],
                cap_add=CAP_ADD,
                security_opt=["no-new-privileges"],
                privileged=False,
                working_dir=spec.workdir,
                environment=dict(spec.env),
            )
        except docker.errors.ImageNotFound as exc:
            raise TermigenError(
                f"image {spec.image!r} is not available on the {self.name} engine: {missing_image_hint(spec.image)}"
            ) from exc
        except docker.errors.APIError as exc:
            if "no such image" in str(exc).lower() or "image not known" in str(exc).lower():
                raise TermigenError(
                    f"image {spec.image!r} is not available on the {self.name} engine: "
                    f"{missing_image_hint(spec.image)}") from exc
            raise TermigenError(f"cannot create a sandbox from {spec.image!r}: {short_error(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - requests' connection errors and the like
            raise self._unavailable(exc) from exc
        try:
            container.start()
            return DockerSandbox(
                self.client.api, container.id, spec.workdir,
                output_limit=spec.output_limit or self.config.output_limit_bytes,
                merge_stderr=spec.merge_stderr,
                areas=FILE_AREAS,
                cancel=spec.cancel,
            )
        except BaseException as exc:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - the start failure is the one to report
                pass
            if isinstance(exc, Exception):
                raise TermigenError(f"cannot start a sandbox from {spec.image!r}: {short_error(exc)}") from exc
            raise

    def prune(self, labels: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None) -> int:
        """Remove containers carrying all ``labels`` (always restricted to termigen-managed ones).

        Uses the plain listing (no inspect per container, which would race
        with containers other processes remove meanwhile).
        """
        import docker.errors

        wanted = {LABEL_MANAGED: "1", **labels}
        filters = {"label": [f"{k}={v}" for k, v in wanted.items()]}
        api = self.client.api
        try:
            containers = api.containers(all=True, filters=filters)
        except docker.errors.APIError as exc:
            raise TermigenError(f"cannot list containers: {short_error(exc)}") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable(exc) from exc
        removed = 0
        for container in containers:
            found = container.get("Labels") or {}
            if any(found.get(k) != v for k, v in wanted.items()):
                continue  # an engine that ignored part of the filter must not cost a stranger's container
            if keep is not None and keep(found):
                continue
            try:
                api.remove_container(container["Id"], force=True)
                removed += 1
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "already in progress" not in str(exc):
                    raise TermigenError(f"cannot remove container {container['Id'][:12]}: {short_error(exc)}") from exc
        return removed

    # -- builds ------------------------------------------------------------------------

    def builder(self) -> ImageBuilder:
        return ImageBuilder(self.client, f"{self.name}@{self.address}")

    def remove_image(self, tag: str) -> bool:
        """Remove the name ``tag`` (the image goes with its last name); False if there was none.

        Never forced: an image a container still uses, or one another name
        points at (the build cache's), stays.
        """
        import docker.errors

        try:
            self.client.api.remove_image(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def storage_path(self) -> str | None:
        """Where the engine keeps images (``docker info``'s DockerRootDir; Podman reports its graph
        root there too): the disk the build guard watches. Asked once per executor."""
        if self._storage_path is None:
            info = self.client.info()
            self._storage_path = str(info.get("DockerRootDir") or (info.get("store") or {}).get("graphRoot") or "")
        return self._storage_path or None

    def build(self, context_dir: str, tag: str, *, timeout_s: float | None = None) -> BuildResult:
        """Build ``context_dir`` into ``tag``, or reuse the image built from an identical context.

        Never raises for a failing build: the result's ``error`` holds the
        failing step and the end of the log, which is what a model needs to
        fix its Dockerfile.
        """
        from termigen_core.userdirs import user_dirs

        timeout = float(timeout_s if timeout_s is not None else self.config.build_timeout_s)
        return self.builder().build(Path(context_dir), tag, timeout, BuildIndex(user_dirs().build_index))


# --- plugin hooks ------------------------------------------------------------------------


@hookimpl
def register_executors() -> list[type[Executor]]:
    from .podman_executor import PodmanExecutor

    return [DockerExecutor, PodmanExecutor]


def _executor_from_cli(ctx: click.Context, name: str | None) -> Executor:
    """Instantiate the named executor with the options the user config gives it (if any)."""
    from termigen_core.config import load_user_defaults
    from termigen_core.userdirs import user_dirs

    obj = ctx.find_root().obj or {}
    host = obj.get("host") if isinstance(obj, dict) else None
    if host is None:
        from termigen_core.plugins import build_plugin_host

        host = build_plugin_host()
    configured = load_user_defaults(user_dirs().user_config).get("executor")
    ref = ComponentRef.model_validate(configured) if configured else None
    if name is None:
        name = ref.use if ref is not None else default_component(host.registry, "executor")[0]
        if name is None:
            raise click.UsageError("no default executor: name one with --executor")
    cls = host.registry.get("executor", name)
    options = ref.with_ if ref is not None and ref.use == name else {}
    return cls(cls.Config.model_validate(options))  # type: ignore[return-value]


@hookimpl
def register_commands(cli: click.Group) -> None:
    @click.group("sandbox")
    def sandbox_group() -> None:
        """Manage the containers termigen starts."""

    @sandbox_group.command("prune")
    @click.option("--run", "run_id", metavar="RUN_ID", help="Only containers of this run.")
    @click.option("--executor", "executor_name", default=None,
                  help="Executor to prune on (default: the user config's, else the default executor).")
    @click.pass_context
    def prune_cmd(ctx: click.Context, run_id: str | None, executor_name: str | None) -> None:
        """Remove containers left behind by crashed or interrupted runs (found by their labels).

        Containers of a run that is still going on (its run directory's lock is held)
        are left alone, with or without --run. Without --run, a container that does not
        say which run directory it belongs to (opened outside a run, or by an older
        termigen) is left too: nothing proves its owner is gone; --run ID removes it.
        """
        from termigen_core.runlock import is_locked

        executor = _executor_from_cli(ctx, executor_name)
        executor.check()
        live: set[str] = set()
        unknown: set[str] = set()

        def spared(labels: dict[str, str]) -> bool:
            run_dir = labels.get(LABEL_RUN_DIR)
            if run_dir and is_locked(Path(run_dir)):
                live.add(labels.get(LABEL_RUN, run_dir))
                return True
            if not run_dir and not run_id:
                unknown.add(labels.get(LABEL_RUN, "?"))
                return True
            return False

        count = executor.prune({LABEL_RUN: run_id} if run_id else {}, keep=spared)
        scope = f" of run {run_id}" if run_id else ""
        click.echo(f"removed {count} container(s){scope}")
        if live:
            click.echo(f"kept the containers of {len(live)} run(s) still in progress: {', '.join(sorted(live))}")
        if unknown:
            click.echo(f"kept the containers of {len(unknown)} run(s) that name no run directory "
                       f"(remove them with --run ID): {', '.join(sorted(unknown)[:10])}")

    cli.add_command(sandbox_group)
