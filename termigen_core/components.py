"""Base classes for every kind of component a plugin can provide.

A component is a class with a ``name`` (unique within its kind), a one-line
``description`` and a pydantic ``Config`` that rejects unknown keys. The core
instantiates components from config (``use: NAME`` + ``with: {...}``); plugins
only hand over classes through the collection hooks in :mod:`hookspecs`.

The kinds are listed once, in :data:`KINDS`: the plugin manager, config
validation, ``termigen components`` and the JSON schema all iterate it, so a
new kind is one entry here plus one hookspec.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # imported for annotations only: keeps import time low
    from .context import ExportContext, StageContext
    from .errors import ConfigIssue
    from .items import Item
    from .llm import LLMRequest, LLMResponse, ModelCapabilities
    from .plugins import ComponentRegistry
    from .sandbox import BuildResult, Sandbox, SandboxSpec


class ComponentConfig(BaseModel):
    """Options of a component; unknown keys are errors (typos never pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """Common shape of every component class."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def check_config(cls, config: ComponentConfig, registry: ComponentRegistry) -> list[ConfigIssue]:
        """Extra validation needing other components (e.g. a stage naming a seed source).

        Issue paths are relative to this component's ``with:`` block. Called in
        the second validation pass, after ``Config`` accepted the options.
        """
        return []

    @classmethod
    def summary(cls) -> str:
        """First line of the description (or docstring), for listings."""
        text = cls.description or (cls.__doc__ or "")
        return text.strip().splitlines()[0] if text.strip() else ""


class SeedSource(Component):
    """Produces task seeds: short objective statements tagged with a category."""

    kind = "seed_source"

    @abc.abstractmethod
    def seeds(self, ctx: StageContext) -> Iterable[dict[str, Any]]:
        """Yield seed dicts with at least ``text`` and ``category``."""


class LLMBackend(Component):
    """Turns one chat request into one response (a model provider, or a script).

    Backends do only transport: prompt rendering, parsing, retry on malformed
    output, caching, budget and accounting happen in the core's LLM facade so
    that every backend goes through the same paths.
    """

    kind = "llm_backend"

    def validate_environment(self, settings: Any) -> list[str]:
        """Return problems (e.g. a missing API key) found before the run starts."""
        return []

    def capabilities(self, settings: Any) -> ModelCapabilities:
        """What this backend can ask of ``settings.model`` (structured output, tools, caching,
        context window). The default promises nothing: replies are parsed from plain text."""
        from .llm import ModelCapabilities

        return ModelCapabilities()

    def count_tokens(self, model: str, messages: list[dict[str, Any]]) -> int:
        """The prompt's size in tokens; the default estimates 4 characters a token."""
        from .llm import message_text

        return sum(len(message_text(m)) for m in messages) // 4 + 4 * len(messages)

    @abc.abstractmethod
    def complete(self, request: LLMRequest) -> LLMResponse:
        """Perform one completion; raise :class:`TransientLLMError` to ask for a retry.

        Honour ``request.response_schema``/``structured_output``, ``request.tools`` and
        ``request.prompt_caching`` where the provider can, and say what was used in
        ``LLMResponse.structured_mode`` (a backend that ignores them reports ``off``).
        """


class Executor(Component):
    """Builds images and opens sandboxes (containers) on some container engine."""

    kind = "executor"

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`~termigen_core.errors.ExecutorUnavailable` if the engine is not usable."""

    @abc.abstractmethod
    def open(self, spec: SandboxSpec) -> Sandbox:
        """Start a container for ``spec`` and return a sandbox bound to it."""

    @abc.abstractmethod
    def build(self, context_dir: str, tag: str, *, timeout_s: float = 1800) -> BuildResult:
        """Build ``context_dir`` (which holds a Dockerfile) into ``tag``."""

    @abc.abstractmethod
    def prune(self, labels: dict[str, str]) -> int:
        """Remove every container carrying ``labels``; return how many were removed."""


class ErrorMode(Component):
    """One failure mode the trajectory generator can inject (Phase II).

    ``instruction`` tells the step generator how to commit a realistic error of
    this kind; ``critic_checklist`` tells the critic how to judge that the
    injected step really is such an error and will produce informative feedback.
    """

    kind = "error_mode"
    instruction: ClassVar[str] = ""
    critic_checklist: ClassVar[str] = ""
    examples: ClassVar[tuple[str, ...]] = ()
    weight: ClassVar[float] = 1.0


@dataclass(frozen=True)
class Finding:
    """One verifier finding; ``severity`` is ``error`` (blocks) or ``warning``."""

    severity: str
    message: str
    path: str = ""


class Verifier(Component):
    """Checks a task directory (or item) and reports findings."""

    kind = "verifier"

    @abc.abstractmethod
    def verify(self, item: Item, ctx: StageContext) -> list[Finding]:
        """Return findings; an empty list means the item passes."""


class Stage(Component):
    """One step of a pipeline.

    A *source* stage (``source = True``) starts the pipeline and implements
    :meth:`produce`; every other stage implements :meth:`process`, which takes
    one item and returns the item(s) that move on (return several to fan out,
    raise :class:`~termigen_core.errors.Reject` to drop one with a reason).
    """

    kind = "stage"
    source: ClassVar[bool] = False
    #: Item kinds this stage accepts (empty: any). Checked when the config is validated.
    accepts: ClassVar[tuple[str, ...]] = ()
    #: True if the stage opens sandboxes, so the runner checks the executor up front.
    uses_executor: ClassVar[bool] = False
    #: LLM roles the stage calls (``llm.roles`` keys are checked against these).
    roles: ClassVar[tuple[str, ...]] = ()

    def produce(self, ctx: StageContext) -> list[Item]:
        raise NotImplementedError(f"stage {self.name!r} is not a source stage")

    def process(self, item: Item, ctx: StageContext) -> Item | list[Item]:
        raise NotImplementedError(f"stage {self.name!r} does not process items")

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        """Figures for the run report from this stage's finished outputs (e.g. build attempts)."""
        return {}


class Exporter(Component):
    """Writes finished items in some format (benchmark task dirs, SFT datasets...)."""

    kind = "exporter"

    @abc.abstractmethod
    def export(self, items: list[Item], ctx: ExportContext) -> dict[str, Any]:
        """Write ``items``; return a summary (paths written, counts) for the run report."""


@dataclass(frozen=True)
class KindInfo:
    """How a kind of component is collected and described."""

    kind: str
    hook: str
    base: type[Component]
    title: str


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo("seed_source", "register_seed_sources", SeedSource, "seed sources"),
        KindInfo("llm_backend", "register_llm_backends", LLMBackend, "LLM backends"),
        KindInfo("executor", "register_executors", Executor, "executors"),
        KindInfo("error_mode", "register_error_modes", ErrorMode, "error modes"),
        KindInfo("verifier", "register_verifiers", Verifier, "verifiers"),
        KindInfo("stage", "register_stages", Stage, "stages"),
        KindInfo("exporter", "register_exporters", Exporter, "exporters"),
    )
}


def resolve_relative_paths(config: ComponentConfig, base_dir: Path) -> ComponentConfig:
    """Make the config's relative ``Path`` options relative to ``base_dir`` (the config file's folder).

    Only fields typed as ``pathlib.Path`` are touched, so a component opts in by
    its type annotations and no component has to know where its config lives.
    """
    from pathlib import Path

    updates: dict[str, Any] = {}
    for field_name in type(config).model_fields:
        value = getattr(config, field_name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[field_name] = base_dir / value.expanduser()
    return config.model_copy(update=updates) if updates else config


def instantiate(cls: type[Component], options: dict[str, Any] | ComponentConfig, base_dir: Path) -> Component:
    """Validate ``options`` against ``cls.Config`` and build the component."""
    config = options if isinstance(options, ComponentConfig) else cls.Config.model_validate(options)
    return cls(resolve_relative_paths(config, base_dir))
