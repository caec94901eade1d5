"""Pipeline config files: loading, overrides, secrets and two-pass validation.

Pass one checks the file's *shape* (sections, types, unknown keys) without any
plugin; pass two looks up every ``use:`` in the component registry and
validates its ``with:`` against that component's ``Config``. Both passes
collect every problem before failing, each located by its path
(``stages[2].with.max_rounds: Input should be a valid integer``), so a user
fixes a config in one edit rather than one error per run.

A config is data only: it names components, never Python import paths (code
loading is a command-line decision, ``--plugin``). Secrets are written as
``{$env: NAME}``; they are resolved from the environment into ``SecretStr``
values and the run directory only ever stores the reference.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .components import KINDS, ComponentConfig, ComponentRef, default_component, iter_refs, resolve_relative_paths
from .errors import ComponentNotFound, ConfigError, ConfigIssue
from .llm import COMMON_SETTINGS, RoleSettings, effective_roles
from .suggest import did_you_mean

if TYPE_CHECKING:
    from .plugins import ComponentRegistry

ENV_REF = "$env"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetSection(_Section):
    """A campaign's goal (``run.target``): keep drawing seeds until it is met.

    Counted at the last stage whose outputs are of the goal's kind (``task`` for
    ``verified_tasks``, ``trajectory`` for ``trajectories``); the budget and
    ``max_draws`` are the hard stops.
    """

    verified_tasks: int | None = Field(
        default=None, ge=1, description="tasks that passed the last stage that hands on tasks (e.g. verify)",
    )
    trajectories: int | None = Field(
        default=None, ge=1, description="trajectories that finished the last stage that hands on trajectories",
    )
    resolved_trajectories: int | None = Field(
        default=None, ge=1, description="of those, trajectories whose task's tests all passed (resolved)",
    )
    max_draws: int = Field(
        default=50, ge=1,
        description="draws of the source stage at most (the first included): a stop for models whose spend is unknown",
    )

    @model_validator(mode="after")
    def _some_goal(self) -> TargetSection:
        if all(getattr(self, name) is None for name in TARGET_KINDS):
            raise ValueError(f"name a goal: {', '.join(f'{name}: N' for name in TARGET_KINDS)} (one or more)")
        return self

    def goals(self) -> dict[str, int]:
        """Goal name → count wanted, for the goals that are set."""
        return {name: wanted for name in TARGET_KINDS if (wanted := getattr(self, name)) is not None}


#: ``run.target`` goal → the item kind it counts.
TARGET_KINDS = {"verified_tasks": "task", "trajectories": "trajectory", "resolved_trajectories": "trajectory"}


class RunSection(_Section):
    """Where results go and how much runs at once."""

    out: str = "runs/default"
    seed: int = 0
    concurrency: int = Field(default=4, ge=1, le=512, description="items processed at once")
    llm_concurrency: int = Field(default=8, ge=1, le=512, description="LLM calls in flight at once")
    container_concurrency: int = Field(default=2, ge=1, le=256, description="sandboxes open at once")
    budget_usd: float | None = Field(default=None, ge=0, description="stop cleanly once this much is spent")
    user_llm_cache: bool = Field(default=False, description="share LLM answers across runs (user cache dir)")
    engine: str = Field(
        default="local",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="where the per-item steps run: local (this process's threads) or an installed engine (ray); "
        "its options are run.<engine>",
    )
    ray: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the ray engine (address, connect_timeout_s, num_cpus, max_retries, node_wait_s); "
        "checked against the engine's own options when the run starts",
    )
    max_failed_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "`termigen run` exits 5 when more than this share of the items that reached an outcome failed "
            "(failed items / items done, rejected or failed at some stage, or produced by the source stage; "
            "rejected items never count as failed), or when no item finished the last stage"
        ),
    )
    keep_images: bool = Field(
        default=False,
        description="keep each task's built image after its last stage that runs in it (default: removed then; "
        "exports never need it, they hold the build context)",
    )
    min_free_disk_gb: float = Field(
        default=5.0, ge=0,
        description="builds wait while the container engine's disk has less free space than this (0: never wait)",
    )
    disk_wait_s: float = Field(
        default=600.0, gt=0,
        description="how long a build waits for free disk before its step fails as an infrastructure error (retried on resume)",
    )
    target: TargetSection | None = Field(
        default=None,
        description="a campaign: draw more seeds until this many verified tasks and/or trajectories exist "
        "(the budget and max_draws stop it first; the run then says how far it got)",
    )


class LLMSection(_Section):
    """Models per role, and each backend's options in one place.

    Backend options (a script file, an ``api_base``, prices) live under
    ``backends.<name>``, so switching a role's backend (``-s
    llm.default.backend=litellm``) leaves nothing dangling. A role may still set
    options of its own backend inline (a critic on another server); inline options
    of a backend the role does not use are dropped with a note.
    """

    default: RoleSettings = Field(default_factory=RoleSettings)
    roles: dict[str, RoleSettings] = Field(default_factory=dict)
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict, description="options of each backend, by backend name")

    def effective_roles(self) -> dict[str, RoleSettings]:
        """Each role's settings as a run uses them (the role's keys over ``llm.default``), by config path:
        ``llm.default`` and ``llm.roles.NAME``."""
        return effective_roles(self.default, self.roles)


class ImagesSection(_Section):
    """The images generated environments start FROM.

    ``catalog`` opts into prebuilt domain images (``termigen images bootstrap --catalog``) that the
    environment agent may start FROM instead of ``base``. It is off by default, so a pipeline that
    does not ask for it sends the same prompts as before (stored and scripted answers still match).
    Which names exist is the executor's to say (its ``image_catalog``), so names are checked in the
    second pass (:meth:`catalog_issues`); this pass checks the shape.
    """

    #: default: the executor's ``default_base_image`` (filled in by the second pass)
    base: str | None = Field(default=None, description="base image of generated environments (default: the executor's)")
    aliases: dict[str, str] = Field(default_factory=dict)
    catalog: Literal["all"] | list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        description="catalog images the environment agent may start FROM besides images.base: all, or a list of names "
        "(`termigen images list` shows them; default: none)",
    )

    def catalog_names(self, executor_cls: type) -> list[str]:
        """The configured catalog names, ``all`` expanded with the executor's catalog (none if unset)."""
        offered = getattr(executor_cls, "image_catalog", None)
        if self.catalog is None:
            return []
        available = offered.names() if offered is not None else []
        return list(available) if self.catalog == "all" else list(dict.fromkeys(self.catalog))

    def catalog_issues(self, executor_cls: type, executor_name: str) -> list[ConfigIssue]:
        """Names the executor's catalog does not have, each at its path (``images.catalog[1]``)."""
        if self.catalog is None:
            return []
        offered = getattr(executor_cls, "image_catalog", None)
        if offered is None:
            return [ConfigIssue("images.catalog", f"executor {executor_name!r} has no image catalog: remove images.catalog")]
        known = offered.names()
        if self.catalog == "all":
            return []
        return [
            ConfigIssue(f"images.catalog[{index}]", f"unknown catalog image {name!r}{did_you_mean(name, known)} "
                        f"(the catalog has {', '.join(known)})")
            for index, name in enumerate(self.catalog) if name not in known
        ]


#: what each ``dataset.train_on`` value trains on (documented in docs/config-reference.md)
TRAIN_ON = ("all", "no_injected_errors")


class SplitSection(_Section):
    """A train/validation split by task: one task's trajectories never straddle it (they share a
    setting and often most commands, so splitting by trajectory would leak validation into training)."""

    validation: float = Field(default=0.0, ge=0.0, lt=1.0, description="share of tasks held out for validation (0: no split)")
    by: Literal["task"] = Field(default="task", description="the unit that is kept whole: task")
    seed: int = Field(default=0, description="which tasks go to validation (stable across runs and resumes)")


class DatasetSection(_Section):
    """What the run's exported training data means, set once for every SFT exporter.

    A per-exporter choice let the files of one run disagree (only one of them masked the
    injected errors); each exporter now realises this one choice in its trainer's mechanism.
    """

    train_on: Literal["all", "no_injected_errors"] | None = Field(
        default=None,
        description="assistant turns in the loss: all, or all but the injected-error actions (default: all)",
    )
    split: SplitSection = Field(default_factory=SplitSection)
    license: str = Field(default="other", description="license named in the dataset card (export/sft/README.md)")
    card: bool = Field(default=True, description="write a Hugging Face dataset card next to the SFT exports")


def effective_train_on(train_on: str | None, zero_weight_errors: bool | None, where: str = "") -> str:
    """The run-level ``dataset.train_on`` with an exporter's legacy ``zero_weight_errors`` folded in.

    ``zero_weight_errors: true`` alone means ``no_injected_errors``; contradicting an explicit
    ``dataset.train_on`` is an error (raised as ``ValueError`` naming ``where``), never a silent pick.
    """
    if zero_weight_errors is None:
        return train_on or "all"
    legacy = "no_injected_errors" if zero_weight_errors else "all"
    if train_on is not None and train_on != legacy:
        raise ValueError(
            f"{where}zero_weight_errors: {str(zero_weight_errors).lower()} contradicts dataset.train_on: {train_on}; "
            "remove zero_weight_errors (dataset.train_on applies to every SFT exporter)"
        )
    return legacy


def fold_legacy_masking(config: "PipelineConfig") -> tuple["PipelineConfig", list[ConfigIssue]]:
    """Fold the exporters' ``zero_weight_errors`` into ``dataset.train_on`` (one choice per run).

    Exporters that disagree with each other, or with an explicit ``dataset.train_on``, are issues.
    """
    issues: list[ConfigIssue] = []
    train_on = config.dataset.train_on
    chosen: dict[str, str] = {}
    for index, ref in enumerate(config.exports):
        legacy = (ref.with_ or {}).get("zero_weight_errors")
        if legacy is None:
            continue
        where = f"exports[{index}].with.zero_weight_errors"
        try:
            chosen[where] = effective_train_on(train_on, bool(legacy))
        except ValueError as exc:
            issues.append(ConfigIssue(where, str(exc)))
    if len(set(chosen.values())) > 1:
        issues.append(ConfigIssue(
            "dataset.train_on",
            f"the exporters' zero_weight_errors disagree ({', '.join(f'{k}={v}' for k, v in chosen.items())}); "
            "set dataset.train_on once instead",
        ))
    elif chosen and train_on is None and not issues:
        dataset = config.dataset.model_copy(update={"train_on": next(iter(chosen.values()))})
        config = config.model_copy(update={"dataset": dataset})
    return config, issues


def parse_image_aliases(values: Iterable[str]) -> dict[str, str]:
    """``images.aliases`` from ``PATTERN=IMAGE`` strings (the ``--alias`` option of commands that
    build a pipeline in code); raises ``ValueError`` naming the malformed value."""
    aliases: dict[str, str] = {}
    for value in values:
        pattern, sep, image = value.partition("=")
        if not sep or not pattern.strip() or not image.strip():
            raise ValueError(f"{value!r}: expected PATTERN=IMAGE (e.g. ghcr.io/laude-institute/*=termigen/python:bookworm)")
        aliases[pattern.strip()] = image.strip()
    return aliases


class PipelineConfig(_Section):
    """The whole file, after pass one."""

    version: Literal[1] = 1
    run: RunSection = Field(default_factory=RunSection)
    llm: LLMSection = Field(default_factory=LLMSection)
    #: default: the installed executor declaring ``default = True`` (filled in by the second pass)
    executor: ComponentRef | None = None
    images: ImagesSection = Field(default_factory=ImagesSection)
    stages: list[ComponentRef] = Field(min_length=1)
    exports: list[ComponentRef] = Field(default_factory=list)
    dataset: DatasetSection = Field(default_factory=DatasetSection)


class ResolvedPipeline:
    """A config after pass two: component classes and validated option objects."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        source: Path | None,
        raw: dict[str, Any],
        stages: list[tuple[type, ComponentConfig]],
        exports: list[tuple[type, ComponentConfig]],
        executor: tuple[type, ComponentConfig],
        notes: list[str] | None = None,
    ) -> None:
        self.config = config
        #: Things the user should know that are not errors (e.g. options dropped by a backend switch).
        self.notes = notes or []
        self.source = source
        self.raw = raw
        self.stages = stages
        self.exports = exports
        self.executor = executor

    @property
    def config_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    @property
    def roles_used(self) -> set[str]:
        """The LLM roles this pipeline's stages will call; empty: the run needs no model."""
        return {role for cls, options in self.stages for role in stage_roles(cls, options)}

    def redacted(self) -> dict[str, Any]:
        """The config as written (secrets still as ``{$env: NAME}`` references)."""
        return copy.deepcopy(self.raw)

    def fingerprint(self) -> str:
        """What a run directory is bound to: stages, models and seed, not budgets or concurrency.

        Changing those would make resumed results a mix of two pipelines, so a
        run directory created under another fingerprint is refused.
        """
        raw = self.raw
        identity = {
            "stages": raw.get("stages"),
            "llm": raw.get("llm", {}),
            "seed": raw.get("run", {}).get("seed", 0),
            "images": raw.get("images", {}),
        }
        blob = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- loading ------------------------------------------------------------------


class RefusedYAML(yaml.MarkedYAMLError):
    """Well-formed YAML that termigen refuses (duplicate key, alias); its message is final."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping.

    Plain YAML keeps the last value silently, so a second ``stages:`` block
    would quietly replace the first; a user file should say so instead.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys are rare and unhashable ones fail in SafeLoader anyway
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                lines = f"twice on line {line}" if first_line[key] == line else f"lines {first_line[key]} and {line}"
                raise RefusedYAML(f"duplicate key {key!r} ({lines})", key_node.start_mark)
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


class PipelineLoader(UniqueKeyLoader):
    """The loader of config files: unique keys, and no aliases at all.

    A config is data, and aliases are what make a 1 KB "billion laughs" file
    expand to gigabytes; refusing them when they are met (not after
    expansion) keeps ``config check`` instant on such a file.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise RefusedYAML(
                f"YAML aliases (*{event.anchor}, line {event.start_mark.line + 1}) are not allowed in pipeline files: "
                "a config is data, write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _looks_like_toml(text: str) -> bool:
    """True when ``text`` parses as a non-empty TOML table: the likely cause of a .yaml file that fails."""
    try:
        return bool(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return False


def _toml_hint(path: Path, text: str) -> str:
    """A suffix for YAML errors when the file holds TOML: the suffix, not the content, picks the reader."""
    if not _looks_like_toml(text):
        return ""
    return f"; it looks like TOML, and only files ending in .toml are read as TOML: rename it to {path.with_suffix('.toml').name}"


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or TOML file into a mapping (no object construction, no aliases, no duplicate keys)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", f"config file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.load(text, Loader=PipelineLoader)  # noqa: S506 - a SafeLoader subclass
    except RefusedYAML as exc:
        raise ConfigError([ConfigIssue("", str(exc.problem))], source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"not valid YAML{where}: {problem}{_toml_hint(path, text)}")], source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"not valid TOML: {exc}")], source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        hint = _toml_hint(path, text)  # TOML read as YAML is one long string
        what = f"not a YAML mapping (the text reads as one {kind})" if hint else f"the top level must be a mapping, not {kind}"
        raise ConfigError([ConfigIssue("", what + hint)], source=str(path))
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and ENV_REF not in value:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_INDEX = re.compile(r"\[(\d+)\]")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``-s a.b[2].c=value`` (value parsed as YAML: numbers, booleans, lists)."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError([ConfigIssue("", f"override {assignment!r} is not KEY=VALUE")])
    parts = [p for p in _INDEX.sub(r".\1", key.strip()).split(".") if p]
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError([ConfigIssue(where, f"override {assignment!r}: no list entry {part} here")])
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError([ConfigIssue(where, f"override {assignment!r}: cannot descend into a {type(node).__name__}")])


def resolve_secrets(data: Any, environ: dict[str, str], path: str = "") -> tuple[Any, list[ConfigIssue]]:
    """Replace ``{$env: NAME}`` with ``SecretStr(os.environ[NAME])``; collect missing ones."""
    issues: list[ConfigIssue] = []
    if isinstance(data, dict):
        if ENV_REF in data:
            name = data[ENV_REF]
            if set(data) != {ENV_REF} or not isinstance(name, str) or not name:
                return data, [ConfigIssue(path, "an environment reference is written {$env: NAME} and nothing else")]
            if name not in environ:
                # an empty stand-in keeps later checks from reporting the same spot twice
                return SecretStr(""), [ConfigIssue(path, f"environment variable {name} is not set")]
            return SecretStr(environ[name]), []
        out = {}
        for key, value in data.items():
            out[key], found = resolve_secrets(value, environ, _join(path, str(key)))
            issues += found
        return out, issues
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            resolved, found = resolve_secrets(value, environ, f"{path}[{index}]")
            items.append(resolved)
            issues += found
        return items, issues
    return data, issues


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- pass one: shape ----------------------------------------------------------


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = _join(out, "with" if part == "with_" else str(part))
    return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names (by alias) of the model found by walking ``loc`` down from ``model``."""
    current: Any = model
    for part in loc:
        current = _without_none(current)
        if get_origin(current) in (list, dict):
            current = get_args(current)[-1]  # ``part`` is the index or key
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = next((f for name, f in current.model_fields.items() if part in (name, f.alias)), None)
            if field is None:
                return []
            current = field.annotation
        else:
            return []
    current = _without_none(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _without_none(annotation: Any) -> Any:
    """``X | None`` → ``X`` (other unions are left alone); ``Annotated[X, ...]`` → ``X``."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def issues_from_validation(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[ConfigIssue]:
    """Turn pydantic errors into located issues, adding did-you-mean hints to unknown keys."""
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _join(prefix, _loc_to_path(loc)) if loc else prefix
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key" + did_you_mean(str(loc[-1]), _fields_at(model, loc[:-1]))
        elif err["type"] == "string_type" and isinstance(err.get("input"), SecretStr):
            message = "this option does not take a secret ({$env: NAME})"
        issues.append(ConfigIssue(path, message))
    return issues


def parse_shape(data: dict[str, Any]) -> tuple[PipelineConfig | None, list[ConfigIssue]]:
    try:
        return PipelineConfig.model_validate(data), []
    except ValidationError as exc:
        return None, issues_from_validation(exc, PipelineConfig)


# --- pass two: components -----------------------------------------------------


#: References nested deeper than this are refused (a config is a tree; this only bounds a plugin's mistake).
MAX_REF_DEPTH = 16


def _check_component(
    registry: ComponentRegistry, kind: str, ref: ComponentRef, path: str, base_dir: Path, depth: int = 0
) -> tuple[tuple[type, ComponentConfig] | None, list[ConfigIssue]]:
    """Look ``ref`` up as a ``kind``, validate its ``with:``, then every component it refers to, recursively.

    Issue paths are full (``stages[0].with.source.with.path``).
    """
    if kind not in KINDS:
        return None, [ConfigIssue(path, f"refers to {kind!r}, which is no kind of component ({', '.join(KINDS)})")]
    try:
        cls = registry.get(kind, ref.use)
    except ComponentNotFound as exc:
        return None, [ConfigIssue(_join(path, "use"), str(exc))]
    try:
        options = cls.Config.model_validate(ref.with_)
    except ValidationError as exc:
        return None, issues_from_validation(exc, cls.Config, _join(path, "with"))
    options = resolve_relative_paths(options, base_dir)
    issues: list[ConfigIssue] = []
    for sub_path, sub_ref in iter_refs(options):
        where = _join(_join(path, "with"), sub_path)
        if depth >= MAX_REF_DEPTH:
            issues.append(ConfigIssue(where, f"component references nest deeper than {MAX_REF_DEPTH} levels"))
            continue
        issues += _check_component(registry, sub_ref.kind, sub_ref, where, base_dir, depth + 1)[1]
    issues += [ConfigIssue(_join(_join(path, "with"), i.path), i.message) for i in cls.check_config(options, registry)]
    return (cls, options), issues


def _check_llm(
    registry: ComponentRegistry, llm: LLMSection, roles_used: set[str]
) -> tuple[LLMSection, list[ConfigIssue], list[str]]:
    """Check every role's backend and options; return the section with foreign inline options dropped."""
    issues: list[ConfigIssue] = []
    notes: list[str] = []
    for name in llm.roles:
        if roles_used and name not in roles_used:
            issues.append(
                ConfigIssue(
                    f"llm.roles.{name}",
                    f"no configured stage uses the role {name!r}{did_you_mean(name, roles_used)}; "
                    f"roles in use: {', '.join(sorted(roles_used))}",
                )
            )
    installed = registry.names("llm_backend")
    for backend, options in llm.backends.items():
        if backend not in installed:
            issues.append(ConfigIssue(f"llm.backends.{backend}", f"no LLM backend named {backend!r}{did_you_mean(backend, installed)}; installed: {', '.join(installed)}"))
            continue
        fields = registry.get("llm_backend", backend).Config.model_fields
        issues += [
            ConfigIssue(f"llm.backends.{backend}.{key}", f"unknown key for backend {backend!r}{did_you_mean(key, list(fields))}")
            for key in options if key not in fields
        ]

    default, found, dropped = _drop_foreign_options(registry, "llm.default", llm.default)
    issues += found
    notes += dropped
    roles: dict[str, RoleSettings] = {}
    for name, override in llm.roles.items():
        roles[name], found, dropped = _drop_foreign_options(registry, f"llm.roles.{name}", override, default)
        issues += found
        notes += dropped
    cleaned = llm.model_copy(update={"default": default, "roles": roles})

    if not roles_used:
        return cleaned, issues, notes  # no stage asks a model: the backend's required options are not needed
    for path, settings in cleaned.effective_roles().items():
        if settings.backend not in installed:
            continue  # reported by _drop_foreign_options
        cls = registry.get("llm_backend", settings.backend)
        shared = llm.backends.get(settings.backend, {})
        try:
            cls.Config.model_validate({**shared, **settings.backend_options()})
        except ValidationError as exc:
            for issue in issues_from_validation(exc, cls.Config, path):
                key = issue.path.rsplit(".", 1)[-1]
                if issue.message.startswith("unknown key"):
                    continue  # reported above, with the right path
                if key in shared and key not in settings.backend_options():
                    issue = ConfigIssue(f"llm.backends.{settings.backend}.{key}", issue.message)
                elif issue.message == "Field required":
                    issue = ConfigIssue(issue.path, f"required by backend {settings.backend!r}: set it under llm.backends.{settings.backend}.{key} (or on the role)")
                if issue not in issues:
                    issues.append(issue)
    return cleaned, issues, notes


def stage_roles(cls: type, options: ComponentConfig) -> tuple[str, ...]:
    """The roles a stage class calls with these options (``Stage.roles_for``; ``roles`` for other classes)."""
    roles_for = getattr(cls, "roles_for", None)
    return tuple(roles_for(options)) if roles_for is not None else tuple(getattr(cls, "roles", ()))


def _drop_foreign_options(
    registry: ComponentRegistry, path: str, settings: RoleSettings, default: RoleSettings | None = None
) -> tuple[RoleSettings, list[ConfigIssue], list[str]]:
    """Inline options of another installed backend are dropped with a note; unknown ones are errors."""
    backend = settings.backend if default is None or "backend" in settings.model_fields_set else default.backend
    try:
        fields = registry.get("llm_backend", backend).Config.model_fields
    except ComponentNotFound as exc:
        return settings, [ConfigIssue(f"{path}.backend", str(exc))], []
    others = {
        key: name for name in registry.names("llm_backend") if name != backend
        for key in registry.get("llm_backend", name).Config.model_fields
    }
    keep: dict[str, Any] = {}
    issues: list[ConfigIssue] = []
    notes: list[str] = []
    for key, value in settings.backend_options().items():
        if key in fields:
            keep[key] = value
        elif key in others:
            notes.append(f"{path}.{key}: ignored: it is an option of backend {others[key]!r} and this role uses {backend!r} (put backend options under llm.backends.<name>)")
        else:
            hint = did_you_mean(key, [*COMMON_SETTINGS, *fields])
            issues.append(ConfigIssue(f"{path}.{key}", f"unknown key for backend {backend!r}{hint}"))
    if len(keep) == len(settings.backend_options()):
        return settings, issues, notes
    common = settings.model_dump(include=settings.model_fields_set & set(COMMON_SETTINGS))
    return RoleSettings.model_validate({**common, **keep}), issues, notes


def _default_ref(
    registry: ComponentRegistry, kind: str, ref: ComponentRef | None, path: str
) -> tuple[ComponentRef | None, list[ConfigIssue]]:
    """``ref``, or the installed ``kind`` component that declares itself the default."""
    if ref is not None:
        return ref, []
    name, why = default_component(registry, kind)
    if name is None:
        return None, [ConfigIssue(path, f"not set, and {why}")]
    return ComponentRef(use=name), []


def resolve_pipeline(
    data: dict[str, Any],
    registry: ComponentRegistry,
    *,
    source: Path | None = None,
    environ: dict[str, str] | None = None,
) -> ResolvedPipeline:
    """Run both passes over a loaded (merged, overridden) mapping; raise with every issue."""
    env = dict(os.environ if environ is None else environ)
    src = str(source) if source else None
    resolved_data, issues = resolve_secrets(data, env)
    config, shape_issues = parse_shape(resolved_data)
    issues += shape_issues
    if config is None:
        raise ConfigError(issues, source=src)
    base_dir = source.parent if source is not None else Path.cwd()

    stages: list[tuple[type, ComponentConfig]] = []
    roles_used: set[str] = set()
    for index, ref in enumerate(config.stages):
        found, problems = _check_component(registry, "stage", ref, f"stages[{index}]", base_dir)
        issues += problems
        if found is None:
            continue
        cls = found[0]
        roles_used.update(stage_roles(cls, found[1]))
        is_source = bool(getattr(cls, "source", False))
        if index == 0 and not is_source:
            issues.append(ConfigIssue("stages[0].use", f"stage {ref.use!r} cannot start a pipeline: it needs items from an earlier stage"))
        if index > 0 and is_source:
            issues.append(ConfigIssue(f"stages[{index}].use", f"stage {ref.use!r} starts a pipeline and can only be the first stage"))
        stages.append(found)
    from .contracts import stage_chain_issues

    issues += stage_chain_issues(config.stages, registry)  # each stage accepts what the one before produces
    from .campaign import counting_stages

    issues += counting_stages(config, registry)[1]  # run.target counts something this pipeline makes
    exports = []
    for index, ref in enumerate(config.exports):
        found, problems = _check_component(registry, "exporter", ref, f"exports[{index}]", base_dir)
        issues += problems
        if found is not None:
            exports.append(found)
    executor_ref, problems = _default_ref(registry, "executor", config.executor, "executor")
    issues += problems
    executor = None
    if executor_ref is not None:
        executor, problems = _check_component(registry, "executor", executor_ref, "executor", base_dir)
        issues += problems
    images = config.images
    if executor is not None and images.base is None:
        base = getattr(executor[0], "default_base_image", "")
        if base:
            images = images.model_copy(update={"base": base})
        else:
            issues.append(ConfigIssue("images.base", f"executor {executor_ref.use!r} names no default base image: set images.base"))  # type: ignore[union-attr]
    if executor is not None:
        issues += images.catalog_issues(executor[0], executor_ref.use)  # type: ignore[union-attr]
    llm, llm_issues, notes = _check_llm(registry, config.llm, roles_used)
    issues += llm_issues
    config, dataset_issues = fold_legacy_masking(config)
    issues += dataset_issues
    if issues:
        raise ConfigError(issues, source=src)
    assert executor is not None
    # the defaults the components chose are written in: the runner reads a complete config
    config = config.model_copy(update={"llm": llm, "executor": executor_ref, "images": images})
    return ResolvedPipeline(config, source=source, raw=data, stages=stages, exports=exports, executor=executor, notes=notes)


def load_pipeline(
    path: str | Path,
    registry: ComponentRegistry,
    *,
    overrides: list[str] = (),  # type: ignore[assignment]
    user_defaults: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> ResolvedPipeline:
    """Read ``path``, merge it over the user's defaults, apply ``-s`` overrides, validate."""
    source = Path(path).expanduser().resolve()
    data = read_config_file(source)
    if user_defaults:
        data = deep_merge(user_defaults, data)
    for assignment in overrides:
        apply_override(data, assignment)
    return resolve_pipeline(data, registry, source=source, environ=environ)


def load_user_defaults(path: Path) -> dict[str, Any]:
    """The user config (``termigen info`` shows where): only ``llm``, ``executor``, ``images``, ``run``."""
    if not path.exists():
        return {}
    data = read_config_file(path)
    allowed = {"llm", "executor", "images", "run"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            [ConfigIssue(k, "unknown section in the user config" + did_you_mean(k, allowed)) for k in unknown],
            source=str(path),
        )
    return data


def json_schema(registry: ComponentRegistry) -> dict[str, Any]:
    """JSON Schema of pipeline files for the installed components (editors use it)."""
    schema = PipelineConfig.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})

    def one_of(kind: str) -> list[dict[str, Any]]:
        variants = []
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            ref_name = f"{kind}.{name}"
            defs[ref_name] = cls.Config.model_json_schema()
            variants.append(
                {
                    "type": "object",
                    "description": cls.summary(),
                    "properties": {"use": {"const": name}, "with": {"$ref": f"#/$defs/{ref_name}"}},
                    "required": ["use"],
                    "additionalProperties": False,
                }
            )
        return variants

    schema["properties"]["stages"] = {"type": "array", "minItems": 1, "items": {"anyOf": one_of("stage")}}
    schema["properties"]["exports"] = {"type": "array", "items": {"anyOf": one_of("exporter")}}
    schema["properties"]["executor"] = {"anyOf": one_of("executor")}
    schema["title"] = "termigen pipeline"
    return schema


__all__ = [
    "KINDS",
    "PipelineConfig",
    "ResolvedPipeline",
    "json_schema",
    "load_pipeline",
    "resolve_pipeline",
]
