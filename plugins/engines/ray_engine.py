"""The ``ray`` engine: a run's per-item steps as Ray tasks on a cluster.

``run.engine: ray`` with ``run.ray.address: HOST:PORT`` (or ``RAY_ADDRESS``).
The driver (``termigen run``) connects to the cluster, runs the source stage
itself, and sends every other step as a Ray task:

- steps of stages that open sandboxes ask for one unit of a custom resource
  (``container_slots`` by default), so they land only on nodes started with it
  (``ray start ... --resources='{"container_slots": N}'``, N sandboxes at once on
  that node); model-only steps go anywhere. Later container steps of an item
  prefer the node where its earlier ones ran (its task image was built there);
- the driver stays the only writer of ``run.db``: a step takes the stored
  answers of its own scope along (so a redone step replays them), reads
  artifacts through a small actor on the driver's node, and brings back what it
  would have written (:mod:`termigen_core.step_store`);
- a step whose worker or node dies is retried by Ray (``max_retries``); if it is
  still lost, it goes back to pending and the run stops, resumable. If container
  steps wait with no node offering ``container_slots`` for ``node_wait_s``, they
  go back to pending and the run stops with exit code 4.

Ray is imported only here, when the engine starts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from termigen_core.components import ComponentConfig, Engine
from termigen_core.engine import EngineRun, StepOutcome, StepRequest
from termigen_core.errors import ConfigError, ConfigIssue, ExecutorUnavailable, InfrastructureError
from termigen_core.status import StepStatus

from .ray_worker import WorkerSetup, run_step

if TYPE_CHECKING:
    from termigen_core.items import Item

log = logging.getLogger("termigen")

#: What to install when Ray is missing.
RAY_EXTRA = "pip install 'termigen[ray]'  (or: pip install 'ray[default]>=2.40')"


class RayUnavailable(InfrastructureError):
    """The Ray cluster cannot be reached, or lost the steps it ran: going on cannot help."""

    stops_run = True


class RayEngineConfig(ComponentConfig):
    address: str | None = Field(default=None, description="the cluster's address HOST:PORT (default: $RAY_ADDRESS)")
    connect_timeout_s: float = Field(default=20.0, gt=0, le=600, description="give up connecting after this long")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs a step reserves on its node (steps mostly wait on models and containers)")
    container_resource: str = Field(default="container_slots", min_length=1, description="the custom resource of nodes with a container engine")
    max_retries: int = Field(default=3, ge=0, le=100, description="Ray's retries of a step whose worker or node died")
    node_wait_s: float = Field(default=60.0, gt=0, description="how long container steps may wait with no node offering the resource")


class ArtifactServer:
    """Reads the run's artifacts on the driver's node (an actor pinned there), for steps elsewhere."""

    def __init__(self, artifact_dir: str) -> None:
        self.artifact_dir = Path(artifact_dir)

    def read(self, digest: str) -> bytes:
        # the layout of RunStore.artifact_path
        return (self.artifact_dir / digest[:2] / digest).read_bytes()


class RayEngine(Engine):
    """Runs the steps as Ray tasks; container steps only on nodes with ``container_slots``."""

    name = "ray"
    description = "run the per-item steps on a Ray cluster (container steps on nodes with a container_slots resource)"
    Config = RayEngineConfig
    watch_interval_s = 2.0

    def __init__(self, config: RayEngineConfig | None = None) -> None:
        super().__init__(config)
        self.config: RayEngineConfig
        self._ray: Any = None
        self._run: EngineRun | None = None
        self._setup_ref: Any = None
        self._task: Any = None
        self._reader: Any = None
        self._lock = threading.Lock()
        #: ObjectRef → (step, the future the driver waits on)
        self._out: dict[Any, tuple[StepRequest, Future[StepOutcome]]] = {}
        #: item id → node id where its latest container step ran (its task image is there)
        self._node_of: dict[str, str] = {}
        self._starved_since: float | None = None
        self._cancel_reason: dict[Any, InfrastructureError] = {}

    # -- start -----------------------------------------------------------------

    def start(self, run: EngineRun) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError([ConfigIssue("run.engine", f"the ray engine needs Ray, which is not installed: {RAY_EXTRA}")]) from None
        self._ray = ray
        self._run = run
        address = self.config.address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise ConfigError([ConfigIssue(
                "run.ray.address",
                "not set (nor RAY_ADDRESS): start a cluster with `ray start --head --port=6379` and pass its HOST:PORT",
            )])
        self._connect(ray, address)
        stages = run.stages
        container_stages = [stage.name for stage in stages[1:] if stage.uses_executor]
        resource = self.config.container_resource
        if container_stages and ray.cluster_resources().get(resource, 0) < 1:
            raise ExecutorUnavailable(
                f"no node of the Ray cluster at {address} offers the {resource!r} resource, and stage(s) "
                f"{', '.join(container_stages)} run containers: start a node that has a container engine with "
                f"`ray start --address={address} --resources='{{\"{resource}\": 2}}'` (2 sandboxes at once), then re-run",
                stops_run=True,
            )
        services = run.services
        self._register_file_plugins(ray, services.registry)
        setup = WorkerSetup(
            token=uuid.uuid4().hex, run_id=services.run_id, run_dir=str(services.run_dir.resolve()),
            config_dir=str(services.config_dir), cfg=run.cfg, stages=stages, registry=services.registry,
        )
        self._setup_ref = ray.put(setup)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self._reader = (
            ray.remote(ArtifactServer)
            .options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False))
            .remote(str(services.store.artifact_dir.resolve()))
        )
        self._task = ray.remote(_remote_step)
        log.info("ray engine: connected to %s (%s)", address, _describe(ray.cluster_resources(), resource))

    def _connect(self, ray: Any, address: str) -> None:
        """``ray.init`` bounded in time: a TCP probe first (a dead address fails at once), then
        the init itself in a thread that is given up after ``connect_timeout_s``."""
        timeout = self.config.connect_timeout_s
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError([ConfigIssue("run.ray.address", f"{address!r} is not HOST:PORT")])
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as exc:
            raise RayUnavailable(
                f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start it (`ray start --head "
                f"--port={port}`) or fix run.ray.address"
            ) from None
        failure: list[BaseException] = []

        def init() -> None:
            try:
                ray.init(address=address, namespace="termigen", log_to_driver=False, logging_level=logging.ERROR)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)

        thread = threading.Thread(target=init, name="termigen-ray-connect", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise RayUnavailable(f"the Ray cluster at {address} did not answer within {timeout:g}s (run.ray.connect_timeout_s)")
        if failure:
            raise RayUnavailable(f"cannot connect to the Ray cluster at {address}: {failure[0]}") from None

    @staticmethod
    def _register_file_plugins(ray: Any, registry: Any) -> None:
        """Components of ``--plugin FILE.py`` plugins exist in no installed module: ship them by value."""
        import sys

        for kind in registry.by_kind.values():
            for entry in kind.values():
                module = sys.modules.get(entry.cls.__module__)
                if module is not None and entry.cls.__module__.startswith("termigen_cli_plugin_"):
                    ray.cloudpickle.register_pickle_by_value(module)

    # -- steps -----------------------------------------------------------------

    def submit(self, step: StepRequest) -> Future[StepOutcome]:
        options: dict[str, Any] = {"num_cpus": self.config.num_cpus, "max_retries": self.config.max_retries, "retry_exceptions": False}
        if step.uses_containers:
            options["resources"] = {self.config.container_resource: 1}
            node = self._node_of.get(step.item.id)
            if node:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
        out: Future[StepOutcome] = Future()
        ref = self._task.options(**options).remote(self._setup_ref, step, self._reader)
        with self._lock:
            self._out[ref] = (step, out)
        ref.future().add_done_callback(lambda done: self._finished(ref, done))
        return out

    def _finished(self, ref: Any, done: Future[Any]) -> None:
        with self._lock:
            step, out = self._out.pop(ref, (None, None))
            cancelled_for = self._cancel_reason.pop(ref, None)
        if out is None or step is None:
            return
        exceptions = self._ray.exceptions
        try:
            outcome: StepOutcome = done.result()
        except exceptions.TaskCancelledError:
            outcome = StepOutcome.pending("cancelled", stop_error=cancelled_for)
        except (exceptions.RayTaskError, exceptions.RuntimeEnvSetupError) as exc:
            # the step machinery itself failed on the worker (not the stage: execute_step never raises)
            outcome = StepOutcome(StepStatus.FAILED, reason=f"the step could not run on the Ray worker: {exc}"[:2000],
                                  failure_kind="infrastructure")
        except Exception as exc:  # noqa: BLE001 - worker or node lost after Ray's retries, object lost, ...
            outcome = StepOutcome.pending(
                f"lost with its Ray worker or node: {type(exc).__name__}",
                stop_error=RayUnavailable(
                    f"a Ray worker or node running {step.stage_name} for {step.item.id} was lost "
                    f"({type(exc).__name__}) and {self.config.max_retries} retries did not help; the step is pending: "
                    "re-run the same command to resume"
                ),
            )
        self._remember_node(step, outcome)
        out.set_result(outcome)

    def _remember_node(self, step: StepRequest, outcome: StepOutcome) -> None:
        """An item's outputs keep to the node where its container steps ran (the task image is there)."""
        node = outcome.where if step.uses_containers else self._node_of.get(step.item.id, "")
        if node:
            outputs: list[Item] = outcome.outputs
            with self._lock:
                for item in outputs:
                    self._node_of[item.id] = node

    def watch(self) -> None:
        """Container steps waiting while no node offers the resource: after ``node_wait_s``, put
        them back as pending and stop the run (a resume continues once such a node is back)."""
        with self._lock:
            waiting = [ref for ref, (step, _) in self._out.items() if step.uses_containers and ref not in self._cancel_reason]
        if not waiting:
            self._starved_since = None
            return
        resource = self.config.container_resource
        try:
            available = self._ray.cluster_resources().get(resource, 0)
        except Exception:  # noqa: BLE001 - asked again at the next watch
            return
        if available >= 1:
            self._starved_since = None
            return
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
            log.warning("ray engine: no node offers %r any more; %d container step(s) wait", resource, len(waiting))
            return
        if now - self._starved_since < self.config.node_wait_s:
            return
        error = ExecutorUnavailable(
            f"no node of the Ray cluster has offered {resource!r} for {self.config.node_wait_s:g}s (run.ray.node_wait_s): "
            f"{len(waiting)} container step(s) are pending; start a node with a container engine "
            f"(`ray start --address=... --resources='{{\"{resource}\": 2}}'`) and re-run the same command",
            stops_run=True,
        )
        for ref in waiting:
            with self._lock:
                self._cancel_reason[ref] = error
            self._ray.cancel(ref, force=True)

    def close(self, *, cancel: bool = False) -> None:
        ray = self._ray
        if ray is None:
            return
        if cancel:
            with self._lock:
                refs = list(self._out)
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        if ray.is_initialized():
            ray.shutdown()


def _remote_step(setup: WorkerSetup, step: StepRequest, reader: Any) -> StepOutcome:
    """The Ray task: one step on whichever node Ray chose (setup is resolved from the object store)."""
    import ray

    where = ray.get_runtime_context().get_node_id()
    return run_step(setup, step, lambda digest: ray.get(reader.read.remote(digest)), where)


def _describe(resources: dict[str, float], container_resource: str) -> str:
    return f"{resources.get('CPU', 0):g} CPUs, {resources.get(container_resource, 0):g} {container_resource}"
