"""What the benchmark-folder exporters (``harbor``, ``tb1``) share.

Both formats are "one folder per validated task"; they differ only in file
names and metadata syntax. So selection (validated tasks only), confinement
(every model-written path is checked before anything is written), atomic
per-task writes (a crash or a re-export never leaves half a task folder), the
true metadata summary and the templates live here, and each format module
only says which files go where.

Files that are the same for every task (test runners, compose file, harness
layer) are rendered from this package's own templates in ``templates/``;
nothing is copied from the harnesses' repositories.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import shlex
import shutil
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable

from termigen_core.components import ComponentConfig, Exporter
from termigen_core.dockerfile import from_images as dockerfile_froms
from termigen_core.errors import TermigenError
from termigen_core.records import PYTEST_COMMAND, TESTS_DIR, TaskRecord, record_limits
from termigen_core.safepaths import UnsafePath, check_tree

if TYPE_CHECKING:
    import jinja2

    from termigen_core.context import ExportContext
    from termigen_core.items import Item

TEMPLATES = Path(__file__).parent / "templates"
#: Prefix of staging folders in an export root; stale ones (a killed export) are removed.
STAGING_PREFIX = ".termigen-staging-"
#: Image names that only ``termigen images bootstrap`` makes (no registry serves them).
LOCAL_IMAGE_PREFIXES = ("termigen/",)


class TaskConflict(Exception):
    """A task whose files cannot be laid out in a format (e.g. a reserved name): skipped, not fatal."""


# --- selection -------------------------------------------------------------------------


def select_tasks(items: list["Item"], include_unvalidated: bool) -> tuple[list[TaskRecord], int]:
    """Task records to export and how many unvalidated ones were left out.

    Only validated tasks are benchmark material: an unvalidated one has tests
    that were never seen to fail before and pass after its solution. Items of
    later stages carry their task too (a trajectory's ``data["task"]``), so a
    pipeline ending in trajectories still exports its tasks, each once.
    """
    records: list[TaskRecord] = []
    seen: set[str] = set()
    skipped = 0
    for item in items:
        if not item.has_task():
            continue
        record = item.task()
        if record.id in seen:
            continue
        seen.add(record.id)
        if not record.validation.passed and not include_unvalidated:
            skipped += 1
            continue
        records.append(record)
    return records, skipped


def folder_names(records: list[TaskRecord]) -> list[str]:
    """One folder name per record, usable as a task id by both harnesses.

    Harnesses derive Docker image and compose project names from the folder,
    which must be lowercase ``[a-z0-9_-]``; ids that slug to the same name get
    a short hash of the id so no task overwrites another.
    """
    slugs = [re.sub(r"[^a-z0-9_-]+", "-", record.id.lower()).strip("-_") or "task" for record in records]
    counts: dict[str, int] = {}
    for slug in slugs:
        counts[slug] = counts.get(slug, 0) + 1
    return [
        f"{slug}-{hashlib.sha1(record.id.encode()).hexdigest()[:8]}" if counts[slug] > 1 else slug
        for slug, record in zip(slugs, records)
    ]


def check_record(record: TaskRecord) -> None:
    """Raise :class:`UnsafePath` if any model-written path or file of ``record`` is unsafe.

    Run on every selected record before anything is written, so a hostile
    record writes nothing at all.
    """
    try:
        check_tree(record.environment, record_limits(record))
        check_tree(record.tests, record_limits(record))
    except UnsafePath as exc:
        raise UnsafePath(f"task {record.id!r}: {exc}") from None
    if "Dockerfile" not in record.environment:
        raise UnsafePath(f"task {record.id!r}: the environment has no Dockerfile")


# --- metadata ---------------------------------------------------------------------------


def generator_name() -> str:
    from importlib import metadata

    try:
        return f"termigen {metadata.version('termigen')}"
    except metadata.PackageNotFoundError:
        return "termigen"


def from_images(dockerfile: str) -> list[str]:
    """Images named on ``FROM`` lines, build-stage names excluded, in order."""
    return list(dict.fromkeys(found.image for found in dockerfile_froms(dockerfile) if not found.stage_ref))


def local_images(dockerfile: str) -> list[str]:
    return [image for image in from_images(dockerfile) if image.startswith(LOCAL_IMAGE_PREFIXES)]


def exported_dockerfile(dockerfile: str) -> str:
    """The Dockerfile as exported: ``FROM`` a catalog image becomes the base image plus the catalog
    image's own recipe, so the task builds where only ``termigen images bootstrap`` was run
    (a harness on another machine has the base, never the catalog). Others are unchanged."""
    from termigen_plugins.executors.catalog import inline_catalog

    return inline_catalog(dockerfile)


def validation_summary(record: TaskRecord) -> dict[str, Any]:
    """Counts of the fail-before / pass-after runs, and every run, as validation recorded them."""
    checks = record.validation.checks
    before = [c for c in checks if c.phase == "before"]
    after = [c for c in checks if c.phase == "after"]
    return {
        "passed": record.validation.passed,
        "rounds": record.validation.rounds,
        "before_runs": len(before),
        "before_failed": sum(not c.passed for c in before),
        "after_runs": len(after),
        "after_passed": sum(c.passed for c in after),
        "reason": record.validation.reason,
        "checks": [
            {"phase": c.phase, "passed": c.passed, "exit_code": c.exit_code, "timed_out": c.timed_out,
             "duration_s": round(c.duration_s, 2)}
            for c in checks
        ],
    }


def termigen_metadata(record: TaskRecord) -> dict[str, Any]:
    """Everything the pipeline recorded about how this task was made (never guessed here)."""
    verdicts = [review.verdict for review in record.test_reviews]
    data: dict[str, Any] = {
        "generator": generator_name(),
        "task_id": record.id,
        "title": record.title,
        "category": record.category,
        "category_name": record.category_name,
        "tier": record.tier,
        "seed": record.seed,
        "difficulty": record.difficulty,
        "base_images": from_images(record.environment.get("Dockerfile", "")),
        "models": dict(sorted(record.models.items())),
        "build": {
            "attempts": record.build.attempts,
            "failed_attempts": len(record.build.errors),
            "cached": record.build.cached,
        },
        "test_review": {"rounds": len(record.test_reviews), "final_verdict": verdicts[-1] if verdicts else ""},
        "validation": validation_summary(record),
        "lint": {
            "errors": sum(1 for f in record.lint if f.get("severity") == "error"),
            "warnings": sum(1 for f in record.lint if f.get("severity") == "warning"),
        },
    }
    return drop_none(data)


def tags(record: TaskRecord) -> list[str]:
    """Filterable tags: the category, the tier and the tools the spec names."""
    out = ["termigen", record.category]
    if record.tier is not None:
        out.append(f"tier-{record.tier}")
    tools = record.spec.get("tools") if isinstance(record.spec, dict) else None
    if isinstance(tools, list):
        out += [str(t).strip() for t in tools if isinstance(t, (str, int)) and str(t).strip()][:10]
    return list(dict.fromkeys(t for t in out if t))


def drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


# --- file contents ----------------------------------------------------------------------


def with_shebang(script: str) -> str:
    """Harbor executes scripts directly (no ``bash`` in front), so they need a shebang."""
    text = script if script.endswith("\n") else script + "\n"
    return text if text.startswith("#!") else "#!/bin/bash\n" + text


def pytest_command() -> str:
    """The pytest part of the verification command (the template does its ``cd``, to the task's workdir)."""
    return PYTEST_COMMAND


@lru_cache(maxsize=1)
def _jinja() -> "jinja2.Environment":
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    env.filters["dirname"] = lambda value: str(PurePosixPath(str(value)).parent)
    env.filters["oneline"] = lambda value: " ".join(str(value).split()).replace('"', "'")
    return env


def render(name: str, **values: Any) -> str:
    """Render one of this package's templates (undefined names are errors, not blanks)."""
    return _jinja().get_template(name).render(**values)


def own_runner(record: TaskRecord, kind: str) -> str | None:
    """The task's own runner script when it came from a ``kind`` harness (an imported task), else None.

    Writing it back unchanged keeps an import → export round trip judging the
    task as its authors' harness does; a generated runner would change that.
    """
    spec = record.verifier
    return spec.script if spec.kind == kind and spec.script is not None else None


def runner_values(record: TaskRecord) -> dict[str, Any]:
    """What the test-runner templates need."""
    return {"workdir": record.workdir, "tests_dir": TESTS_DIR, "pytest_command": pytest_command()}


# --- TOML (the stdlib reads it but cannot write it) -------------------------------------


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # lone surrogate: TOML strings are Unicode scalar values
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        return repr(value) if abs(value) != float("inf") else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def toml_dumps(data: dict[str, Any], _prefix: str = "") -> str:
    """A small TOML writer: scalars, arrays, tables and arrays of tables (None values dropped)."""
    data = drop_none(data)
    lines: list[str] = []
    for key, value in data.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    chunks = ["\n".join(lines)] if lines else []
    for key, value in data.items():
        name = f"{_prefix}{_toml_key(key)}"
        if isinstance(value, dict):
            body = toml_dumps(value, name + ".")
            chunks.append(f"[{name}]\n{body}".rstrip("\n"))
        elif _is_table_array(value):
            for entry in value:
                chunks.append(f"[[{name}]]\n{toml_dumps(entry, name + '.')}".rstrip("\n"))
    return "\n\n".join(chunk for chunk in chunks if chunk) + "\n"


# --- writing ----------------------------------------------------------------------------


def check_target(path: Path, *, folder: bool) -> None:
    """Refuse an export path that cannot hold what is written there, before anything is written.

    Otherwise the user sees a bare ``FileExistsError`` or an ``IsADirectoryError``
    naming a temporary file; this names the configured path and what is in the way.
    """
    if folder and path.exists() and not path.is_dir():
        raise TermigenError(f"cannot write to {path}: it is a file, and the task folders need a folder there")
    if not folder and path.is_dir():
        raise TermigenError(f"cannot write to {path}: it is a directory, and this exporter writes a file there")
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise TermigenError(f"cannot write to {path}: {existing} is a file, not a folder")


def write_file(path: Path, text: str, *, executable: bool = False) -> None:
    """Write one harness file (names chosen here, never by a model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    path.chmod(0o755 if executable else 0o644)


def remove_stale_staging(root: Path) -> None:
    """Remove staging folders an interrupted export left (harnesses list every entry of the root)."""
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def publish(staging: Path, final: Path) -> None:
    """Move a finished task folder into place, replacing an earlier export of it.

    The old folder is moved aside first and deleted last, so at every moment
    the path holds either the old task or the new one, whole (bar the instant
    between the two renames).
    """
    old = None
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        old = final.with_name(f"{STAGING_PREFIX}old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class TaskFolderExporter(Exporter):
    """Base of the folder-per-task exporters: selection, checks, atomic writes, summary."""

    class Config(ComponentConfig):
        #: Output folder (one sub-folder per task); relative paths are inside the run directory.
        path: str = "export/tasks"
        #: Also export tasks whose validation did not pass (their metadata says so).
        include_unvalidated: bool = False
        #: The author named in every task's metadata.
        author_name: str = "termigen"

    config: Config
    #: Reads an imported task's binary file by sha256 (the run's artifact store), set by :meth:`export`.
    read_blob: Callable[[str], bytes] | None = None

    @abc.abstractmethod
    def write_task(self, record: TaskRecord, folder: Path) -> None:
        """Write ``record`` into the empty folder ``folder``; raise :class:`TaskConflict` to skip it."""

    def conflicts(self, record: TaskRecord) -> str | None:
        """Why ``record`` cannot be laid out in this format (checked before writing), or None."""
        return None

    def export(self, items: list["Item"], ctx: "ExportContext") -> dict[str, Any]:
        records, skipped_unvalidated = select_tasks(items, self.config.include_unvalidated)
        self.read_blob = ctx.store.read_artifact if ctx.store is not None else None
        for record in records:  # all of them first: a hostile record writes nothing at all
            check_record(record)
        root = ctx.output_path(self.config.path)
        check_target(root, folder=True)
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)
        written: list[str] = []
        skipped_conflicts: dict[str, str] = {}
        for record, name in zip(records, folder_names(records)):
            reason = self.conflicts(record)
            if reason:
                skipped_conflicts[record.id] = reason
                ctx.log("%s: skipped task %s: %s", self.name, record.id, reason)
                continue
            staging = root / f"{STAGING_PREFIX}{name}-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                self.write_task(record, staging)
                publish(staging, root / name)
            except TaskConflict as exc:
                skipped_conflicts[record.id] = str(exc)
                ctx.log("%s: skipped task %s: %s", self.name, record.id, exc)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if record.id not in skipped_conflicts:
                written.append(name)
        ctx.log("%s: wrote %d task folder(s) to %s", self.name, len(written), root)
        summary: dict[str, Any] = {"path": str(root), "count": len(written), "skipped_unvalidated": skipped_unvalidated}
        if skipped_conflicts:
            summary["skipped_conflicts"] = skipped_conflicts
        return summary
