"""The ``synthesize`` stage: a task spec becomes a task's files and Dockerfile (paper §3.2, stage 2).

Three roles, as in the paper: the *planner* turns the spec into a file-system
blueprint (each file with its purpose) plus the instruction the agent reads;
the *constructor* writes each file separately (one call per file keeps every
reply small enough to be complete, and a truncated reply costs one file, not
the task); the *env agent* writes the Dockerfile on the configured base image (or on the
catalog image that already has most of what the task needs, when the run opted into the catalog).

Everything a model writes is checked before it is accepted, and a failed
check is a :class:`~termigen_core.errors.ParseError`, so the model is shown
why and answers again (bounded by the role's ``max_parse_retries``): paths
must stay inside the task directory, the plan must not contain the Dockerfile,
tests or a solution (they are other roles' work and must never be in the
image), a file's reply must be one complete fenced block, and the Dockerfile
must start FROM the configured base (or a configured catalog image), set WORKDIR and pass the lint rules that
are errors (``--privileged``, host mounts, the Docker socket, copying tests
or solutions). A role that never gets it right rejects the item with the
reason: a quality gate, final, and kept in the store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from string import Template
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from termigen_core import hookimpl, prompts
from termigen_core.components import ComponentConfig, Stage
from termigen_core.dockerfile import from_images, parse
from termigen_core.errors import ParseError, Reject
from termigen_core.items import Item
from termigen_core.llm import json_model, with_schema
from termigen_core.records import TaskRecord
from termigen_core.safepaths import Limits, UnsafePath, check_tree, clean_relative
from termigen_plugins.verifiers.lint import ERROR, dockerfile_findings, is_verification_path

if TYPE_CHECKING:
    from termigen_core.context import ImagePolicy, StageContext

PROMPTS = Path(__file__).parent / "prompts"
DOCKERFILE = "Dockerfile"
#: The env agent's rule about ``FROM`` (``${base_image_rule}`` in env_agent.txt) without a catalog:
#: the exact words of the prompt before there was one.
ONLY_BASE_RULE = (
    "the first instruction is `FROM ${base_image}` (the only base image available: Debian\n"
    "  bookworm with python3, pip and pytest);"
)
#: ... and with catalog images (``images.catalog``), listed under it as ``${images}``.
CATALOG_RULE = (
    "the first instruction is `FROM` one of these images (no other image is available; each is\n"
    "  Debian bookworm with python3, pip and pytest, plus what is listed):\n"
    "${images}\n"
    "  start FROM the one that already has most of what the task needs, and do not install again\n"
    "  what it has (only the task's own files and the packages it lacks);"
)


def base_image_rule(images: "ImagePolicy") -> str:
    """The env agent's ``FROM`` rule: the base alone, or the base and the catalog images with what each has."""
    if not images.catalog:
        return Template(ONLY_BASE_RULE).safe_substitute(base_image=images.base)
    listing = [f"  - `{images.base}`: nothing more"]
    listing += [f"  - `{tag}`: {description}" for tag, description in images.catalog.items()]
    return Template(CATALOG_RULE).safe_substitute(images="\n".join(listing))


def load_template(override: Path | None, default: str) -> Template:
    """A stage prompt: the user's file if configured, else the built-in one in ``prompts/``."""
    return prompts.load_template(PROMPTS / default, override)


# --- replies ------------------------------------------------------------------------

_OPEN_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n`]*$", re.MULTILINE)


def fenced_content(text: str, what: str) -> str:
    """The body of the reply's fenced block, or a :class:`ParseError` saying what is wrong.

    Stricter than :func:`termigen_core.llm.extract_block` on purpose: a reply with
    no block or an unclosed one (a model cut off by its token limit) must be
    retried, never written as a half file. The block ends at the *last* closing
    fence of the same kind, so a Markdown file with its own ``` fences survives.
    """
    if not text.strip():
        raise ParseError(f"{what}: the reply is empty; give the complete content in one fenced code block")
    opening = _OPEN_FENCE.search(text)
    if opening is None:
        raise ParseError(f"{what}: no fenced code block found; put the complete content in one ``` block")
    fence = opening.group("fence")
    closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
    ends = list(closing.finditer(text, opening.end()))
    if not ends:
        raise ParseError(
            f"{what}: the code block is never closed, so the reply looks truncated; "
            "give the complete content, and keep it shorter if it was cut off"
        )
    body = text[opening.end() + 1 : ends[-1].start()]
    if not body.strip():
        raise ParseError(f"{what}: the code block is empty")
    return body if body.endswith("\n") else body + "\n"


def check_dockerfile(text: str, images: "ImagePolicy", workdir: str, environment: dict[str, str]) -> str:
    """Return the Dockerfile with aliases applied, or raise :class:`ParseError` listing every problem."""
    rewritten = images.rewrite_dockerfile(text)
    instructions = parse(rewritten)
    problems: list[str] = []
    first = next((ins for ins in instructions if ins.keyword != "ARG"), None)
    froms = from_images(instructions)
    if images.catalog:  # the run opted into catalog images: any of them, or the base
        allowed = " or ".join(images.bases())
        if first is None or first.keyword != "FROM":
            problems.append(f"the Dockerfile must start with `FROM` one of {allowed}")
        for found in froms:
            if not found.stage_ref and not images.is_base(found.image):
                problems.append(f"line {found.instruction.line}: FROM {found.image}: only {allowed} "
                                "or an earlier build stage may be used")
    else:  # the messages models were always shown (stored and scripted answers replay against them)
        base = images.resolve(images.base)
        if first is None or first.keyword != "FROM":
            problems.append(f"the Dockerfile must start with `FROM {images.base}`")
        for index, found in enumerate(froms):
            line, image = found.instruction.line, found.image
            if index == 0 and image != base:
                problems.append(f"line {line}: the base image must be {images.base} (found {image}); no other image is available")
            elif index > 0 and image != base and not found.stage_ref:
                problems.append(f"line {line}: FROM {image}: only {images.base} or an earlier build stage may be used")
    workdirs = [ins.args.strip().strip("\"'") for ins in instructions if ins.keyword == "WORKDIR"]
    if workdir not in [w.rstrip("/") or "/" for w in workdirs]:
        problems.append(f"the Dockerfile must set `WORKDIR {workdir}` (where the agent works)")
    problems += [f.message for f in dockerfile_findings(rewritten, environment=environment) if f.severity == ERROR]
    if problems:
        raise ParseError("the Dockerfile is not acceptable: " + "; ".join(problems))
    return rewritten


def current_base(dockerfile: str, images: "ImagePolicy") -> str:
    """The image a repair must keep starting FROM: the configured catalog image the Dockerfile
    starts FROM, else the base (so a repair never silently drops the catalog image's packages)."""
    first = next((found.image for found in from_images(parse(dockerfile)) if not found.stage_ref), "")
    return first if first in images.catalog else images.base


def reserved_reason(path: str) -> str | None:
    """Why a model may not write ``path`` into the environment (Dockerfile aside)."""
    why = is_verification_path(path)
    if why:
        return f"{path}: {why}; do not include it"
    return None


def file_listing(files: dict[str, str], purposes: dict[str, str] | None = None, budget: int = 6000) -> str:
    """Files for a prompt: path, purpose, and as much content as ``budget`` characters allow."""
    lines: list[str] = []
    left = budget
    for path, content in files.items():
        purpose = (purposes or {}).get(path)
        lines.append(f"--- {path} ({len(content)} bytes)" + (f": {purpose}" if purpose else ""))
        if left > 0 and content:
            shown = content[:left]
            lines.append(shown.rstrip("\n"))
            if len(shown) < len(content):
                lines.append(f"[... {len(content) - len(shown)} more characters]")
            left -= len(shown)
    return "\n".join(lines) if lines else "(none)"


def spec_text(item_data: dict[str, Any]) -> str:
    return json.dumps(item_data.get("spec") or {}, indent=2, ensure_ascii=False)


# --- the planner's answer -----------------------------------------------------------


class PlannedFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    path: str = Field(min_length=1, max_length=400)
    purpose: str = Field(min_length=3, max_length=4000)


class Blueprint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    files: list[PlannedFile] = Field(min_length=1)
    instruction: str = Field(min_length=20, max_length=20000)
    workdir: str = "/app"


def blueprint_parser(max_files: int) -> Callable[[str], Blueprint]:
    """Parse and check a plan: confined, unique paths; no Dockerfile/tests/solution; a sane workdir."""
    base = json_model(Blueprint)

    def parse(text: str) -> Blueprint:
        plan: Blueprint = base(text)
        if len(plan.files) > max_files:
            raise ParseError(f"the plan has {len(plan.files)} files; plan at most {max_files}")
        problems: list[str] = []
        cleaned: list[PlannedFile] = []
        for index, planned in enumerate(plan.files):
            try:
                path = clean_relative(planned.path)
            except UnsafePath as exc:
                problems.append(f"files[{index}].path {exc}")
                continue
            if PurePosixPath(path).name.lower() == "dockerfile" or path.lower() == ".dockerignore":
                problems.append(f"files[{index}].path {path}: the Dockerfile is written later by the environment agent; leave it out")
                continue
            why = reserved_reason(path)
            if why:
                problems.append(f"files[{index}].path {why}")
                continue
            if any(f.path == path for f in cleaned):
                problems.append(f"files[{index}].path {path}: given twice")
                continue
            cleaned.append(PlannedFile(path=path, purpose=planned.purpose))
        if not problems:
            try:
                check_tree({f.path: "" for f in cleaned}, Limits(max_files=max_files))
            except UnsafePath as exc:
                problems.append(str(exc))
        workdir = plan.workdir.strip().rstrip("/") or "/"
        if not workdir.startswith("/") or ".." in workdir.split("/") or workdir == "/":
            problems.append(f"workdir {plan.workdir!r} must be an absolute directory such as /app")
        if problems:
            raise ParseError("; ".join(problems))
        return Blueprint(files=cleaned, instruction=plan.instruction.strip(), workdir=workdir)

    return with_schema(Blueprint, parse)


# --- the stage ----------------------------------------------------------------------


class SynthesizeConfig(ComponentConfig):
    max_files: int = Field(default=12, ge=1, le=64, description="files a plan may have (the Dockerfile not counted)")
    max_file_bytes: int = Field(default=128 * 1024, ge=256, description="size cap of one generated file")
    max_total_bytes: int = Field(default=1024 * 1024, ge=1024, description="size cap of the whole environment")
    context_chars: int = Field(default=6000, ge=0, description="characters of earlier files shown to the constructor/env agent")
    planner_prompt: Path | None = None
    constructor_prompt: Path | None = None
    env_agent_prompt: Path | None = None

    def limits(self) -> Limits:
        return Limits(max_files=self.max_files + 1, max_file_bytes=self.max_file_bytes, max_total_bytes=self.max_total_bytes)


class SynthesizeStage(Stage):
    name = "synthesize"
    description = "Spec → file blueprint → each file → Dockerfile (planner, constructor, env agent; paper §3.2 stage 2)."
    Config = SynthesizeConfig
    accepts = ("spec",)
    produces = ("task",)
    roles = ("planner", "constructor", "env_agent")

    config: SynthesizeConfig

    def process(self, item: Item, ctx: "StageContext") -> Item:
        spec = item.data.get("spec") or {}
        common = {
            "title": spec.get("title", ""),
            "category": item.data.get("category_name") or item.data.get("category", ""),
            "difficulty": spec.get("difficulty", "medium"),
            "spec": spec_text(item.data),
            "seed": item.data.get("seed") or item.data.get("text", ""),
            "base_image": ctx.images.base,
            "max_files": str(self.config.max_files),
        }
        plan = self._plan(ctx, common)
        common = {**common, "instruction": plan.instruction, "workdir": plan.workdir}
        purposes = {f.path: f.purpose for f in plan.files}
        files = self._construct(ctx, common, plan, purposes)
        dockerfile = self._dockerfile(ctx, common, files, purposes, plan.workdir)
        environment = {DOCKERFILE: dockerfile, **files}
        try:
            environment = check_tree(environment, self.config.limits())
        except UnsafePath as exc:  # per-file caps are enforced per reply; this is the total
            raise Reject(f"environment too large: {exc}", {"files": sorted(environment)}) from exc
        record = TaskRecord(
            id=item.id,
            title=spec.get("title") or item.data.get("text", item.id)[:160],
            instruction=plan.instruction,
            category=item.data.get("category", "uncategorized"),
            category_name=item.data.get("category_name", ""),
            tier=item.data.get("tier"),
            seed=item.data.get("seed") or item.data.get("text", ""),
            difficulty=spec.get("difficulty", "medium"),
            spec=spec,
            workdir=plan.workdir,
            environment=environment,
            models={role: ctx.llm(role).model for role in self.roles},
        )
        return item.with_task(record, kind="task", extra_data={"file_purposes": purposes}, environment_files=len(environment))

    def _ask(self, ctx: "StageContext", role: str, prompt: str, parse: Callable[[str], Any], what: str) -> Any:
        """One role call; a reply that stays malformed rejects the item with the last error."""
        try:
            return ctx.llm(role).ask(prompt, parse).value
        except ParseError as exc:
            raise Reject(f"{role} could not produce {what}: {exc}", {"role": role}) from exc

    def _plan(self, ctx: "StageContext", common: dict[str, str]) -> Blueprint:
        template = load_template(self.config.planner_prompt, "planner.txt")
        prompt = template.safe_substitute(common, workdir="/app")
        return self._ask(ctx, "planner", prompt, blueprint_parser(self.config.max_files), "a usable file plan")

    def _construct(
        self, ctx: "StageContext", common: dict[str, str], plan: Blueprint, purposes: dict[str, str]
    ) -> dict[str, str]:
        template = load_template(self.config.constructor_prompt, "constructor.txt")
        plan_text = "\n".join(f"- {f.path}: {f.purpose}" for f in plan.files)
        files: dict[str, str] = {}
        for planned in plan.files:
            prompt = template.safe_substitute(
                common, path=planned.path, purpose=planned.purpose, plan=plan_text,
                written=file_listing(files, budget=self.config.context_chars),
            )
            files[planned.path] = self._ask(
                ctx, "constructor", prompt, self._file_parser(planned.path), f"the file {planned.path}"
            )
        return files

    def _file_parser(self, path: str) -> Callable[[str], str]:
        limit = self.config.max_file_bytes

        def parse(text: str) -> str:
            content = fenced_content(text, f"`{path}`")
            size = len(content.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise ParseError(f"`{path}`: {size} bytes is more than the limit of {limit}; make it smaller")
            return content

        return parse

    def _dockerfile(
        self, ctx: "StageContext", common: dict[str, str], files: dict[str, str], purposes: dict[str, str], workdir: str
    ) -> str:
        template = load_template(self.config.env_agent_prompt, "env_agent.txt")
        prompt = template.safe_substitute(
            common, files=file_listing(files, purposes, self.config.context_chars), base_image_rule=base_image_rule(ctx.images)
        )

        def parse(text: str) -> str:
            return check_dockerfile(fenced_content(text, "Dockerfile"), ctx.images, workdir, files)

        return self._ask(ctx, "env_agent", prompt, parse, "an acceptable Dockerfile")

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        sizes = [len(i.task().environment) for i in outputs if i.has_task()]
        return {"tasks": len(sizes), "files_total": sum(sizes)} if sizes else {}


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [SynthesizeStage]
