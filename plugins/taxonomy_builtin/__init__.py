"""The paper's task taxonomy as data, and the ``taxonomy`` seed source built on it.

TermiGen (Phase I, Stage 1) starts from a hierarchical taxonomy of terminal
skills (Table 5: 3 tiers, 11 categories) and asks a model for concise,
non-overlapping task seeds per category. The taxonomy is a YAML file
(``taxonomy.yaml`` next to this module) rather than code so that users can
swap in their own file of the same shape without writing a plugin; it is
validated with pydantic so a typo in a user file is reported with the path of
the bad field (``categories[3].tier: ...``) instead of surfacing later as a
strange seed.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, SeedSource
from termigen_core.config import issues_from_validation
from termigen_core.errors import (
    ConfigError,
    ConfigIssue,
    InfrastructureError,
    ParseError,
)
from termigen_core.llm import parse_json, with_schema
from termigen_core.prompts import read_prompt
from termigen_core.status import FailureKind, StepStatus
from termigen_core.store import part_id
from termigen_core.suggest import did_you_mean

if TYPE_CHECKING:
    from termigen_core.context import StageContext

HERE = Path(__file__).resolve().parent
BUILTIN_TAXONOMY = HERE / "taxonomy.yaml"
DEFAULT_PROMPT = HERE / "seed_prompt.txt"
#: Seeds are one-line objectives; anything longer is a task description, not a seed.
MAX_SEED_CHARS = 300
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
#: Item id under which a category whose seeding failed is recorded in the run store.
CATEGORY_ITEM_PREFIX = "category:"
#: How many of a category's earlier seeds a later draw's prompt lists (the prompt stays short).
EARLIER_SEEDS_SHOWN = 40

log = logging.getLogger("termigen")


# --- the data model ------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt field in a user taxonomy must not vanish silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Category(_Strict):
    """One category of terminal work (a row of the paper's Table 5)."""

    id: str = Field(min_length=1, description="slug used in seeds, item ids and `categories:` filters")
    name: str = Field(min_length=1)
    tier: int = Field(ge=1)
    goal: str = Field(min_length=1)
    skills: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    example_seeds: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.fullmatch(value):
            raise ValueError(f"{value!r} is not a slug: use lowercase letters, digits, '_' and '-'")
        return value

    @field_validator("skills", "tools", "example_seeds")
    @classmethod
    def _no_blank_entries(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("entries must be non-empty strings")
        return cleaned


class Taxonomy(_Strict):
    """Tiers and categories; category ids are unique, tiers (if named) are declared."""

    version: int = 1
    name: str = "custom"
    #: Tier number → display name. Optional; when given, every category's tier must be listed.
    tiers: dict[int, str] = Field(default_factory=dict)
    categories: list[Category] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _unique_ids(cls, categories: list[Category]) -> list[Category]:
        first_seen: dict[str, int] = {}
        clashes: list[str] = []
        for index, category in enumerate(categories):
            if category.id in first_seen:
                clashes.append(
                    f"duplicate category id {category.id!r} at categories[{index}].id "
                    f"(first used at categories[{first_seen[category.id]}].id)"
                )
            else:
                first_seen[category.id] = index
        if clashes:
            raise ValueError("; ".join(clashes))
        return categories

    @model_validator(mode="after")
    def _tiers_declared(self) -> Taxonomy:
        if self.tiers:
            for index, category in enumerate(self.categories):
                if category.tier not in self.tiers:
                    raise ValueError(
                        f"categories[{index}].tier: tier {category.tier} is not declared in `tiers` "
                        f"(declared: {', '.join(str(t) for t in sorted(self.tiers))})"
                    )
        return self

    def ids(self) -> list[str]:
        return [c.id for c in self.categories]

    def category(self, category_id: str) -> Category:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)

    def tier_name(self, tier: int) -> str:
        return self.tiers.get(tier, f"Tier {tier}")


# --- loading --------------------------------------------------------------------


def taxonomy_from_data(data: Any, source: str = "<data>") -> Taxonomy:
    """Validate already-parsed data; raise :class:`ConfigError` listing every bad field."""
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(issues_from_validation(exc, Taxonomy), source=f"taxonomy {source}") from None


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError([ConfigIssue("", f"taxonomy file not found: {path}")])
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [ConfigIssue("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")],
                source=str(path),
            ) from None
    if suffix in (".yaml", ".yml"):
        import yaml  # light, but only needed when a file is actually read

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([ConfigIssue("", f"invalid YAML: {exc}")], source=str(path)) from None
    raise ConfigError(
        [ConfigIssue("", f"unsupported taxonomy file type {suffix or '(none)'!r}: use .yaml, .yml or .json")],
        source=str(path),
    )


@functools.lru_cache(maxsize=1)
def _builtin() -> Taxonomy:
    return taxonomy_from_data(_read_file(BUILTIN_TAXONOMY), "builtin")


def load_taxonomy(source: str | Path = "builtin") -> Taxonomy:
    """Load ``"builtin"`` (the paper's Table 5) or a user YAML/JSON file of the same shape."""
    if isinstance(source, str) and source == "builtin":
        return _builtin()
    path = Path(source).expanduser()
    return taxonomy_from_data(_read_file(path), str(path))


# --- the seed source ------------------------------------------------------------


class SeedList(BaseModel):
    """The shape of a seeder's reply (sent as its JSON Schema where the backend can)."""

    seeds: list[str]


def parse_seeds(text: str) -> list[str]:
    """Parse a seeding reply into clean, distinct seed strings.

    Raises :class:`ParseError` (so the LLM facade shows the model the problem
    and asks again) when the shape is wrong, a seed is not a string or is too
    long to be a seed, or nothing usable is left. Blank entries and exact
    duplicates (case-insensitive) are dropped rather than retried: they cost a
    call to fix and lose nothing.
    """
    data = parse_json(text)
    if isinstance(data, list):  # a bare list is an unambiguous answer; accept it
        data = {"seeds": data}
    if not isinstance(data, dict) or not isinstance(data.get("seeds"), list):
        raise ParseError('expected a JSON object of the form {"seeds": ["...", "..."]}')
    seeds: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(data["seeds"]):
        if not isinstance(entry, str):
            raise ParseError(f"seeds[{index}] is {type(entry).__name__}, expected a string")
        seed = " ".join(entry.split())
        if not seed:
            continue
        if len(seed) > MAX_SEED_CHARS:
            raise ParseError(
                f"seeds[{index}] has {len(seed)} characters; a seed is one concise objective "
                f"of at most {MAX_SEED_CHARS} characters"
            )
        if seed.casefold() in seen:
            continue
        seen.add(seed.casefold())
        seeds.append(seed)
    if not seeds:
        raise ParseError("the reply contains no non-empty seeds")
    return seeds


def _bullets(values: list[str]) -> str:
    return "\n".join(f"- {v}" for v in values) if values else "- (none given)"


def render_prompt(template: str, category: Category, taxonomy: Taxonomy, count: int) -> str:
    """Fill ``$placeholders`` (``string.Template``: JSON braces in a prompt need no escaping)."""
    values = {
        "count": str(count),
        "category_id": category.id,
        "category_name": category.name,
        "tier": str(category.tier),
        "tier_name": taxonomy.tier_name(category.tier),
        "goal": category.goal,
        "skills": ", ".join(category.skills) or "(not specified)",
        "tools": ", ".join(category.tools) or "(not specified)",
        "example_seeds": _bullets(category.example_seeds),
    }
    return string.Template(template).substitute(values)


def unknown_ids_message(ids: list[str], valid: list[str]) -> str | None:
    """One message naming every id not in ``valid`` (with did-you-mean hints), or None."""
    unknown = [f"{cid!r}{did_you_mean(cid, valid)}" for cid in ids if cid not in valid]
    if not unknown:
        return None
    return f"unknown category id(s) {', '.join(unknown)}; valid ids: {', '.join(valid)}"


class TaxonomySeedSource(SeedSource):
    """Ask the ``seeder`` model for task seeds, one call per taxonomy category."""

    name = "taxonomy"
    description = "Task seeds generated per category of a taxonomy (the paper's Table 5 by default)."

    class Config(ComponentConfig):
        #: ``builtin`` or a YAML/JSON file (relative to the pipeline config file).
        taxonomy: str = "builtin"
        per_category: int = Field(default=10, ge=1)
        #: Only these category ids (empty: every category).
        categories: list[str] = Field(default_factory=list)
        #: A replacement prompt template (``string.Template`` placeholders, see seed_prompt.txt).
        prompt: Path | None = None

        @field_validator("categories")
        @classmethod
        def _known_builtin_ids(cls, ids: list[str], info: ValidationInfo) -> list[str]:
            # The builtin taxonomy needs no file lookup, so typos surface in `termigen config
            # check`; ids of a user taxonomy file are checked when the seeds are made.
            if info.data.get("taxonomy") == "builtin":
                problem = unknown_ids_message(ids, load_taxonomy("builtin").ids())
                if problem:
                    raise PydanticCustomError("unknown_category", "{detail}", {"detail": problem})
            return ids

    config: Config

    def load(self, ctx: StageContext | None = None) -> Taxonomy:
        """The configured taxonomy; file paths resolve against the config file's folder."""
        source = self.config.taxonomy
        if source == "builtin":
            return load_taxonomy("builtin")
        return load_taxonomy(ctx.resolve_path(source) if ctx is not None else Path(source))

    def selected(self, taxonomy: Taxonomy) -> list[Category]:
        """Categories named in ``categories:`` (all if empty); unknown ids are one error listing all."""
        if not self.config.categories:
            return list(taxonomy.categories)
        problem = unknown_ids_message(self.config.categories, taxonomy.ids())
        if problem:
            where = f"the {self.name!r} seed source (taxonomy {self.config.taxonomy})"
            raise ConfigError([ConfigIssue("categories", problem)], source=where)
        return [taxonomy.category(cid) for cid in dict.fromkeys(self.config.categories)]

    def template(self) -> str:
        return read_prompt(DEFAULT_PROMPT, self.config.prompt)

    def seeds(self, ctx: StageContext) -> Iterator[dict[str, Any]]:
        """One call per category; one category's failure does not stop the others.

        A reply still malformed after the re-asks is recorded as the category's
        ``rejected`` outcome (a quality gate: replaying the stored answers gives the
        same); a model call that failed for good (an :class:`InfrastructureError`) as
        ``failed`` (infrastructure), which the runner retries on resume by running the
        source stage again: the stored answers of the other categories are replayed
        for free, only the failed ones are asked again. Both are recorded under the
        item id ``category:<id>`` so the report and ``termigen status`` name them.
        An error that stops the run (a refused key) and a spent budget propagate at
        once; if every category fails, the stage fails.
        """
        taxonomy = self.load(ctx)
        categories = self.selected(taxonomy)
        template = self.template()
        # render everything first: a bad user template fails before any call is paid for
        try:
            prompts = [render_prompt(template, c, taxonomy, self.config.per_category) for c in categories]
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                [ConfigIssue("prompt", f"template has an unknown or malformed placeholder: {exc}")]
            ) from None
        if ctx.draw:
            earlier = earlier_seeds_by_category(ctx)
            prompts = [with_earlier_seeds(prompt, earlier.get(c.id, [])) for c, prompt in zip(categories, prompts)]
        client = ctx.llm("seeder")
        failures: list[str] = []
        infrastructure = False
        for category, prompt in zip(categories, prompts):
            try:
                reply = client.ask(prompt, with_schema(SeedList, parse_seeds))
            except ParseError as exc:
                failures.append(f"{category.id}: {exc}")
                self._record_failure(ctx, category, StepStatus.REJECTED, exc)
                continue
            except InfrastructureError as exc:  # BudgetExceeded is not one: it stops the run, resumably
                self._record_failure(ctx, category, StepStatus.FAILED, exc)
                if exc.stops_run:
                    raise
                failures.append(f"{category.id}: {exc}")
                infrastructure = True
                continue
            texts = reply.value[: self.config.per_category]
            wanted = self.config.per_category
            if len(texts) < wanted:
                ctx.log("category %s: asked for %d seeds, got %d", category.id, wanted, len(texts))
            for text in texts:
                yield {
                    "text": text,
                    "category": category.id,
                    "category_name": category.name,
                    "tier": category.tier,
                }
        if categories and len(failures) == len(categories):
            summary = f"seeding failed for every category ({len(failures)}): " + "; ".join(failures)
            raise InfrastructureError(summary) if infrastructure else ParseError(summary)

    def _record_failure(self, ctx: StageContext, category: Category, status: StepStatus, exc: Exception) -> None:
        reason = f"seeding category {category.id} ({category.name}): {exc}"
        level = logging.WARNING if status == StepStatus.FAILED else logging.INFO  # as the runner logs its items
        part = part_id(f"{CATEGORY_ITEM_PREFIX}{category.id}", ctx.draw)
        log.log(level, "stage %d %s: %s %s: %s", ctx.stage_index, ctx.stage_name, part, status, reason)
        ctx.store.record_outcome(
            part, ctx.stage_index, ctx.stage_name, status, reason[:2000],
            json.dumps({"category": category.id, "error": type(exc).__name__}),
            failure_kind=FailureKind.INFRASTRUCTURE if status == StepStatus.FAILED else None,
        )


def earlier_seeds_by_category(ctx: StageContext) -> dict[str, list[str]]:
    """The seed texts earlier draws of this run kept, per category (a campaign's later draws)."""
    earlier: dict[str, list[str]] = {}
    for item in ctx.store.source_outputs(ctx.stage_index, before_draw=ctx.draw):
        earlier.setdefault(str(item.data.get("category", "")), []).append(str(item.data.get("text", "")))
    return earlier


def with_earlier_seeds(prompt: str, earlier: list[str]) -> str:
    """A later draw's prompt: the category's prompt, plus the seeds already kept, to be avoided.

    Added after the (possibly user-written) template, so every template gets it.
    """
    if not earlier:
        return prompt
    shown = earlier[-EARLIER_SEEDS_SHOWN:]
    return (
        f"{prompt.rstrip()}\n\nThese seeds were proposed already for this category; write different ones "
        f"(other tools, other failures, other goals), none that repeats these:\n{_bullets(shown)}\n"
    )


@hookimpl
def register_seed_sources() -> list[type[SeedSource]]:
    return [TaxonomySeedSource]
