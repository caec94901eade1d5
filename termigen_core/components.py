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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, PrivateAttr, model_validator
from pydantic_core import core_schema

if TYPE_CHECKING:  # imported for annotations only: keeps import time low
    from concurrent.futures import Future

    from .context import ExportContext, StageContext
    from .engine import EngineRun, StepOutcome, StepRequest
    from .errors import ConfigIssue
    from .items import Item
    from .llm import LLMRequest, LLMResponse, ModelCapabilities
    from .plugins import ComponentRegistry
    from .sandbox import BuildResult, Sandbox, SandboxSpec


class ComponentConfig(BaseModel):
    """Options of a component; unknown keys are errors (typos never pass silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentRef(BaseModel):
    """A reference to a component: ``use: NAME`` plus its options under ``with:``.

    The shorthand ``NAME`` (a bare string) means ``{use: NAME}``. A component's
    ``Config`` declares which kind a reference names with :func:`ref_field` or
    ``Annotated[ComponentRef, Refers(KIND)]``; the config's second pass then
    checks the name and the options (recursively), and a stage gets the
    component, built once per run, with ``ctx.component(ref)``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    use: str = Field(min_length=1, description="the component's name")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="the component's options")
    _kind: str = PrivateAttr(default="")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"use": data} if isinstance(data, str) else data

    @property
    def kind(self) -> str:
        """The kind the declaring field names (empty for an undeclared reference, e.g. a stage list entry)."""
        return self._kind

    def __eq__(self, other: object) -> bool:
        # the kind tag says where the reference was declared, not what it names
        if isinstance(other, ComponentRef):
            return (self.use, self.with_) == (other.use, other.with_)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(ref_key(self))

    def of_kind(self, kind: str) -> ComponentRef:
        """This reference, tagged with ``kind``."""
        if self._kind == kind:
            return self
        ref = self.model_copy()
        ref._kind = kind
        return ref

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        json_schema = handler(schema)
        return {"anyOf": [{"type": "string", "description": "shorthand for {use: NAME}"}, json_schema]}


@dataclass(frozen=True)
class Refers:
    """``Annotated`` marker: the field holds a :class:`ComponentRef` (or a list of them) to a component of ``kind``."""

    kind: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        kind = self.kind

        def tag(value: Any) -> Any:
            if isinstance(value, ComponentRef):
                return value.of_kind(kind)
            if isinstance(value, list):
                return [tag(v) for v in value]
            return value

        return core_schema.no_info_after_validator_function(tag, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema["x-termigen-kind"] = self.kind
        return json_schema


def ref_field(kind: str, default: Any = ..., *, description: str = "", **kwargs: Any) -> Any:
    """A ``Config`` field naming a component of ``kind``: ``source: ComponentRef = ref_field("seed_source", default="taxonomy")``.

    Works for ``ComponentRef``, ``ComponentRef | None`` and ``list[ComponentRef]``
    fields; a default is written as the user would (``"lint"``, ``["lint"]``,
    ``{"use": "file", "with": {...}}``) and validated like user input.
    """
    info = Field(default, description=description or f"a {kind} component: NAME or {{use: NAME, with: {{...}}}}",
                 validate_default=default is not ..., **kwargs)
    info.metadata.append(Refers(kind))
    return info


def field_ref_kind(info: Any) -> str | None:
    """The kind a ``Config`` field (a pydantic ``FieldInfo``) refers to, or ``None`` if it holds no reference."""
    from typing import get_args

    for marker in info.metadata:
        if isinstance(marker, Refers):
            return marker.kind
    pending = list(get_args(info.annotation))
    while pending:
        arg = pending.pop()
        if isinstance(arg, Refers):
            return arg.kind
        pending += list(get_args(arg)) + list(getattr(arg, "__metadata__", ()))
    return None


def iter_refs(config: BaseModel) -> list[tuple[str, ComponentRef]]:
    """Every kind-tagged reference in ``config``'s fields, with its path relative to the config (``source``, ``verifiers[1]``)."""
    found: list[tuple[str, ComponentRef]] = []
    for field_name, info in type(config).model_fields.items():
        value = getattr(config, field_name)
        key = info.alias or field_name
        if isinstance(value, ComponentRef) and value.kind:
            found.append((key, value))
        elif isinstance(value, (list, tuple)):
            found += [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, ComponentRef) and v.kind]
    return found


def ref_key(ref: ComponentRef, kind: str | None = None) -> tuple[str, str, str]:
    """The identity of a referenced component instance: (kind, name, options)."""
    import json

    def plain(value: Any) -> Any:
        secret = getattr(value, "get_secret_value", None)
        return secret() if callable(secret) else str(value)

    return (kind or ref.kind, ref.use, json.dumps(ref.with_, sort_keys=True, default=plain))


class Component:
    """Common shape of every component class."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    #: True on the one component of its kind used when the config names none (e.g. the executor).
    default: ClassVar[bool] = False

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
    #: The base image generated environments use when ``images.base`` is not set.
    default_base_image: ClassVar[str] = ""
    #: Prebuilt images ``images.catalog`` may name, or None: an object with ``names()``,
    #: ``describe(names, base) -> {tag: description}``, ``missing(executor, tags)`` and
    #: ``missing_hint(tags)`` (the docker executors offer ``executors/catalog.py``'s).
    image_catalog: ClassVar[Any] = None

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
    def prune(self, labels: dict[str, str], *, keep: Callable[[dict[str, str]], bool] | None = None) -> int:
        """Remove every termigen container carrying ``labels``; return how many were removed.

        ``keep`` (given a container's labels) spares the containers it returns True for:
        ``termigen sandbox prune`` spares those of runs that are still going on.
        """


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

    Its contract is :attr:`accepts` and :attr:`produces` (item kinds). Empty
    ``accepts`` means any kind; empty ``produces`` means the outputs have the
    kind(s) of the input (a source stage with empty ``produces`` declares
    nothing). The config check refuses a pipeline where a stage cannot take what
    the stage before it produces (:mod:`termigen_core.contracts`); at run time an
    output whose kind is not in a declared ``produces`` fails that step.
    """

    kind = "stage"
    source: ClassVar[bool] = False
    #: A source stage that can be asked again for items it has not produced yet
    #: (``ctx.draw`` > 0): what a campaign (``run.target``) needs of the first stage.
    draws_again: ClassVar[bool] = False
    #: Item kinds this stage accepts (empty: any). Checked when the config is validated.
    accepts: ClassVar[tuple[str, ...]] = ()
    #: Item kinds this stage returns (empty: the input's kind). Checked when the config
    #: is validated and, for each step, at run time.
    produces: ClassVar[tuple[str, ...]] = ()
    #: True if the stage opens sandboxes, so the runner checks the executor up front.
    uses_executor: ClassVar[bool] = False
    #: True if the stage runs items in the task's built image (``TaskRecord.require_image``):
    #: a task's image is kept until the last such stage is done with it, then removed unless
    #: ``run.keep_images`` (so long runs do not fill the disk with images nobody needs again).
    uses_task_image: ClassVar[bool] = False
    #: LLM roles the stage calls (``llm.roles`` keys are checked against these).
    roles: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def roles_for(cls, config: ComponentConfig) -> tuple[str, ...]:
        """The roles this stage will call with ``config`` (default: all of ``roles``).

        A stage whose options switch its model off (``build`` with one attempt
        repairs nothing) returns fewer, so a pipeline that asks no role needs
        no ``llm`` section and no key.
        """
        return cls.roles

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


class Engine(Component):
    """Runs a run's per-item steps somewhere other than the driver's thread pool.

    The driver calls :meth:`start` once before any step (connect, and refuse a
    cluster that cannot run the pipeline: raise a :class:`~termigen_core.errors.TermigenError`
    saying what to do), :meth:`submit` per step, :meth:`watch` every
    :attr:`watch_interval_s` while steps are in flight, and :meth:`close` at the end.
    A step's future gives its :class:`StepOutcome`; a step the engine lost (its node
    died, after the engine's own retries) is an outcome ``pending``, never an exception.
    """

    kind = "engine"
    #: How often :meth:`watch` is called while steps are in flight (None: never).
    watch_interval_s: ClassVar[float | None] = None

    def start(self, run: EngineRun) -> None:
        """Connect and check the cluster before any step runs."""

    def submit(self, step: StepRequest) -> Future[StepOutcome]:
        raise NotImplementedError

    def watch(self) -> None:
        """Notice trouble no step reports (a cluster left without a container engine)."""

    def close(self, *, cancel: bool = False) -> None:
        """Disconnect; with ``cancel`` (Ctrl-C) abandon the steps in flight."""


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
        KindInfo("engine", "register_engines", Engine, "engines"),
    )
}


def default_component(registry: ComponentRegistry, kind: str) -> tuple[str | None, str]:
    """The name of the one ``kind`` component declaring ``default = True``, or ``None`` and why not."""
    names = [n for n in registry.names(kind) if getattr(registry.get(kind, n), "default", False)]
    title = KINDS[kind].title
    if len(names) == 1:
        return names[0], ""
    installed = ", ".join(registry.names(kind)) or "none"
    if not names:
        return None, f"no installed {title[:-1]} declares itself the default; name one: {{use: NAME}} (installed: {installed})"
    return None, f"several {title} declare themselves the default ({', '.join(names)}); name one: {{use: NAME}}"


def resolve_relative_paths(config: ComponentConfig, base_dir: Path) -> ComponentConfig:
    """Make the config's relative ``Path`` options relative to ``base_dir`` (the config file's folder).

    Only fields typed as ``pathlib.Path`` (or lists of them) are touched, so a component
    opts in by its type annotations and no component has to know where its config lives.
    """
    from pathlib import Path

    def resolved(value: Path) -> Path:
        value = value.expanduser()
        return value if value.is_absolute() else base_dir / value

    updates: dict[str, Any] = {}
    for field_name in type(config).model_fields:
        value = getattr(config, field_name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[field_name] = resolved(value)
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            if any(not v.is_absolute() for v in value):
                updates[field_name] = [resolved(v) for v in value]
    return config.model_copy(update=updates) if updates else config


def instantiate(cls: type[Component], options: dict[str, Any] | ComponentConfig, base_dir: Path) -> Component:
    """Validate ``options`` against ``cls.Config`` and build the component."""
    config = options if isinstance(options, ComponentConfig) else cls.Config.model_validate(options)
    return cls(resolve_relative_paths(config, base_dir))
