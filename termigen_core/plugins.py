"""Building the plugin manager and the component registry.

Nothing here runs at import time: :func:`build_plugin_host` is called by the
CLI (or a test) and returns a :class:`PluginHost`. Built-in plugins are the
modules in :data:`BUILTIN_PLUGINS`; third-party plugins come from the
``termigen`` entry-point group, loaded one at a time so a broken one is
reported by name and distribution while everything else keeps working.
Plugins named on the command line (``--plugin module:attr`` or a ``.py``
file) are loaded for one invocation; config files can never name code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import PROJECT_NAME, __version__, hookspecs
from .components import KINDS, Component
from .errors import ComponentNotFound, PluginError
from .suggest import did_you_mean

ENTRY_POINT_GROUP = "termigen"
ENV_PLUGINS = "TERMIGEN_PLUGINS"
ENV_DISABLE = "TERMIGEN_DISABLE_PLUGINS"

#: Built-in plugin modules, registered under the name after ``termigen_plugins.``.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "termigen_plugins.backends.scripted",
    "termigen_plugins.backends.litellm_backend",
    "termigen_plugins.executors.docker_executor",
    "termigen_plugins.executors.images",
    "termigen_plugins.executors.lifecycle",
    "termigen_plugins.taxonomy_builtin",
    "termigen_plugins.seed_sources.file_seeds",
    "termigen_plugins.error_modes.analysis",
    "termigen_plugins.error_modes.command",
    "termigen_plugins.error_modes.hallucination",
    "termigen_plugins.error_modes.requirement_violation",
    "termigen_plugins.error_modes.verification_failure",
    "termigen_plugins.stages.seeds",
    "termigen_plugins.stages.propose",
    "termigen_plugins.stages.synthesize",
    "termigen_plugins.stages.build",
    "termigen_plugins.stages.tests_stage",
    "termigen_plugins.stages.validate",
    "termigen_plugins.stages.verify",
    "termigen_plugins.stages.trajectories",
    "termigen_plugins.seed_sources.task_import",
    "termigen_plugins.verifiers.lint",
    "termigen_plugins.exporters.jsonl",
    "termigen_plugins.exporters.harbor",
    "termigen_plugins.exporters.tb1",
    "termigen_plugins.exporters.sft",
    "termigen_plugins.exporters.atif",
    "termigen_plugins.verifiers.leaks",
    "termigen_plugins.verifiers.decontaminate",
    "termigen_plugins.eval",
    "termigen_plugins.audit",
    "termigen_plugins.viewer",
    "termigen_plugins.engines",
)
BUILTIN_PREFIX = "termigen_plugins."


@dataclass
class PluginRecord:
    """What ``termigen plugins`` shows for one registered plugin."""

    name: str
    source: str  # builtin | entrypoint | cli
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    distribution: str | None
    error: str
    detail: str = ""

    def describe(self) -> str:
        dist = f" (distribution {self.distribution})" if self.distribution else ""
        return f"plugin {self.name!r}{dist} failed: {self.error}"


@dataclass(frozen=True)
class ComponentEntry:
    """A component class and the plugin that registered it."""

    cls: type[Component]
    plugin: str


def _split_list(value: str | None) -> list[str]:
    """Comma-separated (not path-separated: ``module:attr`` contains a colon)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _load_cli_plugin(spec: str) -> tuple[str, Any]:
    """Load ``module:attr``, ``module`` or ``path/to/file.py`` given on the command line."""
    if spec.endswith(".py") or os.sep in spec:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"--plugin {spec}: no such file")
        mod_name = f"termigen_cli_plugin_{path.stem}_{abs(hash(str(path))) & 0xFFFF:x}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginError(f"--plugin {spec}: cannot load this file as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - reported to the user with the cause
            sys.modules.pop(mod_name, None)
            raise PluginError(f"--plugin {spec}: importing it raised {type(exc).__name__}: {exc}") from exc
        return path.stem, module
    module_name, _, attr = spec.partition(":")
    try:
        module: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"--plugin {spec}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    if attr:
        try:
            for part in attr.split("."):
                module = getattr(module, part)
        except AttributeError as exc:
            raise PluginError(f"--plugin {spec}: {module_name!r} has no attribute {attr!r}") from exc
    return spec, module


class PluginHost:
    """The plugin manager plus what it learned while loading plugins."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.failures: list[PluginFailure] = []
        self._registry: ComponentRegistry | None = None

    # -- registration -------------------------------------------------------

    def add(self, plugin: Any, name: str, *, source: str, distribution: str | None, version: str | None) -> bool:
        """Register ``plugin`` under ``name``; record a failure instead of raising."""
        if self.pm.is_blocked(name):
            return False
        if self.pm.has_plugin(name):
            self.failures.append(
                PluginFailure(name, distribution, "a plugin with this name is already registered")
            )
            return False
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - pluggy validation errors, duplicate objects
            self.failures.append(PluginFailure(name, distribution, f"{type(exc).__name__}: {exc}"))
            return False
        hooks = sorted(impl_caller.name for impl_caller in (self.pm.get_hookcallers(plugin) or []))
        unknown = [
            hook
            for hook in hooks
            if not self.pm.hook.__dict__[hook].has_spec()
        ]
        if unknown:
            self.pm.unregister(name=name)
            self.failures.append(
                PluginFailure(name, distribution, f"implements unknown hook(s): {', '.join(unknown)}")
            )
            return False
        self.records[name] = PluginRecord(name, source, distribution, version, hooks)
        self._registry = None
        return True

    def load_builtins(self, modules: Iterable[str] = BUILTIN_PLUGINS) -> None:
        for module_name in modules:
            name = module_name.removeprefix(BUILTIN_PREFIX)
            if self.pm.is_blocked(name):
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - a broken built-in must not kill the CLI
                self.failures.append(
                    PluginFailure(name, PROJECT_NAME, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                )
                continue
            self.add(module, name, source="builtin", distribution=PROJECT_NAME, version=__version__)

    def load_entrypoints(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if self.pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported by name and distribution
                self.failures.append(
                    PluginFailure(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}", traceback.format_exc())
                )
                continue
            self.add(plugin, ep.name, source="entrypoint", distribution=dist, version=version)

    def load_cli_plugins(self, specs: Iterable[str]) -> None:
        for spec in specs:
            name, plugin = _load_cli_plugin(spec)
            if not self.add(plugin, name, source="cli", distribution=None, version=None):
                failure = self.failures[-1] if self.failures else None
                if failure is not None and failure.name == name:
                    raise PluginError(f"--plugin {spec}: {failure.error}")

    # -- components ---------------------------------------------------------

    @property
    def registry(self) -> "ComponentRegistry":
        if self._registry is None:
            self._registry = ComponentRegistry.collect(self)
        return self._registry


class ComponentRegistry:
    """Component classes by kind and name, collected from every registered plugin."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, ComponentEntry]] = {kind: {} for kind in KINDS}

    @classmethod
    def collect(cls, host: PluginHost) -> "ComponentRegistry":
        registry = cls()
        conflicts: list[str] = []
        for kind, info in KINDS.items():
            caller = getattr(host.pm.hook, info.hook)
            for impl in reversed(caller.get_hookimpls()):
                plugin_name = impl.plugin_name
                try:
                    classes = impl.function() or []
                except Exception as exc:  # noqa: BLE001 - blame the plugin, keep the rest
                    record = host.records.get(plugin_name)
                    host.failures.append(
                        PluginFailure(
                            plugin_name,
                            record.distribution if record else None,
                            f"{info.hook}() raised {type(exc).__name__}: {exc}",
                            traceback.format_exc(),
                        )
                    )
                    continue
                for component in classes:
                    problem = registry._check_class(component, info.base, kind)
                    if problem:
                        conflicts.append(f"plugin {plugin_name!r}: {problem}")
                        continue
                    existing = registry.by_kind[kind].get(component.name)
                    if existing is not None:
                        conflicts.append(
                            f"two {info.title} are named {component.name!r}: "
                            f"one from plugin {existing.plugin!r} ({existing.cls.__module__}.{existing.cls.__qualname__}), "
                            f"one from plugin {plugin_name!r} ({component.__module__}.{component.__qualname__}); "
                            f"disable one with --disable-plugin"
                        )
                        continue
                    registry.by_kind[kind][component.name] = ComponentEntry(component, plugin_name)
                    record = host.records.get(plugin_name)
                    if record is not None:
                        record.provides.setdefault(kind, []).append(component.name)
        if conflicts:
            raise PluginError("component registration failed:\n  " + "\n  ".join(conflicts))
        return registry

    @staticmethod
    def _check_class(component: Any, base: type[Component], kind: str) -> str | None:
        if not isinstance(component, type) or not issubclass(component, base):
            return f"registered {component!r} as a {kind}, but it is not a subclass of {base.__name__}"
        if not component.name:
            return f"{component.__qualname__} has no `name`"
        return None

    def names(self, kind: str) -> list[str]:
        return sorted(self.by_kind[kind])

    def entry(self, kind: str, name: str) -> ComponentEntry:
        entries = self.by_kind[kind]
        if name not in entries:
            title = KINDS[kind].title
            known = ", ".join(sorted(entries)) or "none"
            raise ComponentNotFound(
                f"no {KINDS[kind].title[:-1] if title.endswith('s') else title} named {name!r}"
                f"{did_you_mean(name, entries)}; installed: {known}"
            )
        return entries[name]

    def get(self, kind: str, name: str) -> type[Component]:
        return self.entry(kind, name).cls


def build_plugin_host(
    *,
    cli_plugins: Iterable[str] = (),
    disabled: Iterable[str] = (),
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    entrypoints: bool = True,
    environ: dict[str, str] | None = None,
) -> PluginHost:
    """Create a plugin host: built-ins, then entry points, then ``--plugin`` ones.

    ``TERMIGEN_PLUGINS`` and ``TERMIGEN_DISABLE_PLUGINS`` (comma-separated lists) add to ``cli_plugins`` and ``disabled``.
    """
    env = os.environ if environ is None else environ
    host = PluginHost()
    for name in [*disabled, *_split_list(env.get(ENV_DISABLE))]:
        host.pm.set_blocked(name)
    host.load_builtins(builtins)
    if entrypoints:
        host.load_entrypoints()
    host.load_cli_plugins([*_split_list(env.get(ENV_PLUGINS)), *cli_plugins])
    return host
