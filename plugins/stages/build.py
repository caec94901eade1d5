"""The ``build`` stage: a real Docker build with a repair loop (paper §3.2, stage 3).

Generated Dockerfiles often fail (a package renamed, a version that does not
exist, a COPY of a file nobody wrote). The task's environment is built through
the executor; on failure the executor's concise error goes back to the env
agent, which answers the files it replaces (the Dockerfile or any other build
context file), and the build runs again, up to ``max_attempts`` builds. Each
attempt's error is kept in ``record.build`` so the exported metadata says how
hard the environment was to get right; a task that never builds is rejected
with its last error.

Repairs are held to the same rules as the first version (confined paths,
caps, no tests or solution, FROM the configured base, no privileged or host
access). The executor caches builds by context hash, so a resumed run does
not rebuild what already built.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, Stage
from termigen_core.errors import InfrastructureError, ParseError, Reject
from termigen_core.failures import network_failure_in
from termigen_core.items import Item
from termigen_core.llm import json_model
from termigen_core.records import BuildInfo, TaskRecord, area_files, mark_executable, record_limits, write_binaries
from termigen_core.safepaths import Limits, UnsafePath, check_tree, write_tree
from termigen_plugins.executors.build import TASK_REPOSITORY
from termigen_plugins.executors.lifecycle import LifecycleSettings, disk_full_in, wait_for_disk

from .synthesize import DOCKERFILE, check_dockerfile, current_base, file_listing, load_template, reserved_reason, spec_text

if TYPE_CHECKING:
    from termigen_core.context import StageContext

#: How much of a build error is shown to the model and kept per attempt.
ERROR_CHARS = 4000


def clip(error: str, limit: int = ERROR_CHARS) -> str:
    """Keep the start (the failing step) and the end (the log tail) of a long build error."""
    if len(error) <= limit:
        return error
    head = limit // 4
    return error[:head] + "\n[... cut ...]\n" + error[-(limit - head) :]


def headline(error: str, limit: int = 500) -> str:
    """The first lines of a build error, up to the log tail, on one line (for a rejection reason)."""
    head = error.split("\n--- ", 1)[0]
    text = " / ".join(line.strip() for line in head.splitlines() if line.strip())
    return text[:limit] + ("..." if len(text) > limit else "")


def context_hash(environment: dict[str, str], binaries: dict[str, str] | None = None) -> str:
    """Digest of the build context (paths and contents), for the image tag.

    ``binaries`` ({path: sha256}, an imported task's binary files) count by
    digest, so replacing a data file makes a new tag too.
    """
    digest = hashlib.sha256()
    for path in sorted(environment):
        digest.update(path.encode() + b"\0" + environment[path].encode("utf-8", "surrogatepass") + b"\0")
    for path in sorted(binaries or {}):
        digest.update(b"binary\0" + path.encode() + b"\0" + (binaries or {})[path].encode() + b"\0")
    return digest.hexdigest()


def image_tag(item_id: str, environment: dict[str, str], binaries: dict[str, str] | None = None) -> str:
    """``termigen-task/<slug>:<hash12>``: a valid, lower-case Docker reference per task version."""
    slug = re.sub(r"[^a-z0-9]+", "-", item_id.lower()).strip("-")[:100].strip("-") or "task"
    return f"{TASK_REPOSITORY}/{slug}:{context_hash(environment, binaries)[:12]}"


class RepairReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    files: dict[str, str] = Field(min_length=1)


class BuildConfig(ComponentConfig):
    max_attempts: int = Field(default=4, ge=1, le=20, description="builds per task, the first one included")
    build_timeout_s: float = Field(default=900, gt=0, description="time limit of one build")
    max_files: int = Field(default=Limits.max_files, ge=1, le=1024, description="files in the build context, Dockerfile included")
    max_file_bytes: int = Field(default=Limits.max_file_bytes, ge=256)
    max_total_bytes: int = Field(default=Limits.max_total_bytes, ge=1024)
    context_chars: int = Field(default=6000, ge=0, description="characters of context files shown to the env agent")
    repair_prompt: Path | None = None

    def limits(self) -> Limits:
        return Limits(max_files=self.max_files, max_file_bytes=self.max_file_bytes, max_total_bytes=self.max_total_bytes)


class BuildStage(Stage):
    name = "build"
    description = "Builds each task's image for real; build errors go back to the env agent, up to max_attempts."
    Config = BuildConfig
    accepts = ("task",)
    produces = ("task",)
    roles = ("env_agent",)
    uses_executor = True

    config: BuildConfig

    @classmethod
    def roles_for(cls, config: ComponentConfig) -> tuple[str, ...]:
        """One attempt repairs nothing, so the env agent is never asked (an audit needs no model)."""
        return () if getattr(config, "max_attempts", 2) == 1 else cls.roles

    def process(self, item: Item, ctx: "StageContext") -> Item:
        record = item.task()
        unsupported = (record.spec.get("imported") or {}).get("unsupported")
        if unsupported:  # imported to be counted and reported, never built as something it is not
            raise Reject(f"unsupported for building: {unsupported}", {"unsupported": unsupported})
        binaries = area_files(record, "environment", record.binary_files)
        limits = self.config.limits().covering(record_limits(record))
        environment = dict(record.environment)
        if "Dockerfile" in environment:
            # imported tasks name images this machine may not have: the alias policy applies to every build
            environment["Dockerfile"] = ctx.images.rewrite_dockerfile(environment["Dockerfile"])
        errors: list[str] = []
        template = load_template(self.config.repair_prompt, "build_repair.txt")
        for attempt in range(1, self.config.max_attempts + 1):
            tag = image_tag(item.id, environment, binaries)
            context = ctx.workdir() / "environment"
            if context.exists():
                shutil.rmtree(context)  # files a repair dropped, or a crashed run's leftovers
            write_tree(context, {p: c for p, c in environment.items() if f"environment/{p}" not in record.binary_files}, limits)
            # binary files byte for byte, before the executor hashes the context for its cache key
            write_binaries(record, {"environment": context}, ctx.store.read_artifact)
            mark_executable(record, {"environment": context})
            # below the run's free-disk floor a build waits (a full disk fails every build, and
            # a half-written image can corrupt the engine's storage): see executors/lifecycle.py
            wait_for_disk(ctx.executor, LifecycleSettings.of(ctx.services.run_options), ctx.run_dir, say=ctx.log,
                          cancelled=lambda: ctx.cancelled)
            result = ctx.executor.build(str(context), tag, timeout_s=self.config.build_timeout_s)
            ctx.store.put_artifact(
                result.log.encode("utf-8", "replace"), item_id=item.id, stage_index=ctx.stage_index,
                name=f"build-{attempt}.log",
            )
            if result.ok:
                build = BuildInfo(
                    image=tag, attempts=attempt, errors=errors, cached=result.cached,
                    context_hash=context_hash(environment, binaries),
                )
                updated = record.model_copy(update={"environment": environment, "build": build})
                return item.with_task(updated, build_attempts=attempt)
            error = clip((result.error or "the build failed without an error message").strip())
            errors.append(error)
            full = disk_full_in(result.error or "")
            if full is not None:
                # no repair can fix the machine's disk, and every other build fails the same way
                raise InfrastructureError(
                    f"the build ran out of disk space ({full}); free space on the container engine's disk "
                    "(`termigen images prune --run RUN_DIR` removes a finished run's task images), then re-run "
                    "the same command: the step is retried",
                    stops_run=True,
                )
            ctx.log("build attempt %d of %d failed: %s", attempt, self.config.max_attempts, error.splitlines()[-1] if error else "")
            if attempt == self.config.max_attempts:
                break
            try:
                environment = self._repair(ctx, template, item, record, environment, error, attempt)
            except ParseError as exc:
                raise Reject(
                    f"build failed and the env agent gave no usable repair ({exc}); last build error: {headline(error)}",
                    {"attempts": attempt, "errors": errors},
                ) from exc
        offline = network_failure_in(errors[-1])
        if offline is not None:
            # the Dockerfile downloads from a host this machine cannot reach: an infrastructure
            # failure (retried on resume, e.g. with network access or an image alias), not a bad task
            raise InfrastructureError(
                f"build failed after {len(errors)} attempt(s): the build could not reach the network ({offline})"
            )
        raise Reject(
            f"build failed after {len(errors)} attempt(s): {headline(errors[-1])}",
            {"attempts": len(errors), "errors": errors},
        )

    def _repair(
        self,
        ctx: "StageContext",
        template: Any,
        item: Item,
        record: TaskRecord,
        environment: dict[str, str],
        error: str,
        attempt: int,
    ) -> dict[str, str]:
        """Ask the env agent for replaced files; return the new environment (ParseError if it never gives one)."""
        others = {p: c for p, c in environment.items() if p != DOCKERFILE}
        prompt = template.safe_substitute(
            title=record.title,
            spec=spec_text(item.data),
            base_image=current_base(environment.get(DOCKERFILE, ""), ctx.images),
            workdir=record.workdir,
            dockerfile=environment.get(DOCKERFILE, ""),
            files=file_listing(others, item.data.get("file_purposes"), self.config.context_chars),
            error=error,
            attempt=str(attempt),
            max_attempts=str(self.config.max_attempts),
        )

        def parse(text: str) -> dict[str, str]:
            reply: RepairReply = json_model(RepairReply)(text)
            try:
                changed = check_tree(reply.files, self.config.limits())
            except UnsafePath as exc:
                raise ParseError(str(exc)) from exc
            problems = [why for path in changed if path != DOCKERFILE and (why := reserved_reason(path))]
            if problems:
                raise ParseError("; ".join(problems))
            merged = {**environment, **changed}
            try:
                merged = check_tree(merged, self.config.limits())
            except UnsafePath as exc:
                raise ParseError(str(exc)) from exc
            if merged == environment:
                raise ParseError("the files you returned are identical to the current ones; change what causes the error")
            if DOCKERFILE not in merged:
                raise ParseError("the build context has no Dockerfile")
            merged[DOCKERFILE] = check_dockerfile(
                merged[DOCKERFILE], ctx.images, record.workdir, {p: c for p, c in merged.items() if p != DOCKERFILE}
            )
            return merged

        return ctx.llm("env_agent").ask(prompt, parse).value

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        builds = [i.task().build for i in outputs if i.has_task()]
        if not builds:
            return {}
        return {
            "built": len(builds),
            "attempts_total": sum(b.attempts for b in builds),
            "first_try": sum(1 for b in builds if b.attempts == 1),
            "repaired": sum(1 for b in builds if b.attempts > 1),
            "cached": sum(1 for b in builds if b.cached),
        }


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [BuildStage]
