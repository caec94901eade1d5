"""The ``tb1`` exporter: validated tasks as terminal-bench 1 task folders.

Per task::

    <id>/task.yaml            instruction, metadata (true: from the record), timeouts, parser
    <id>/Dockerfile           the Dockerfile as built, plus one layer installing tmux
    <id>/<environment files>  the rest of the build context, at the folder's root
    <id>/.dockerignore        keeps the harness files below out of the build context
    <id>/docker-compose.yaml  service ``client`` built from this folder, tb's variables
    <id>/run-tests.sh         runs the pytest files (tb copies it and tests/ to /tests);
                              an imported TB1 task's own run-tests.sh, unchanged
    <id>/tests/               the validated tests
    <id>/solution.sh          the reference solution

terminal-bench drives the agent's shell through tmux inside the container, so
the one change to the validated environment is a final layer that installs
tmux (and asciinema when ``record_asciinema`` is on) if the image lacks it.
Environment files sit at the folder's root as tb expects, so a task whose
environment uses one of tb's own names (``tests/``, ``task.yaml`` ...) cannot
be laid out and is skipped with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from termigen_core import hookimpl
from termigen_core.components import Exporter
from termigen_core.dockerfile import final_stage
from termigen_core.records import TaskRecord, mark_executable, record_limits, write_binaries
from termigen_core.safepaths import Limits, check_tree, write_tree

from .taskfiles import (
    TaskFolderExporter,
    exported_dockerfile,
    generator_name,
    local_images,
    own_runner,
    render,
    runner_values,
    tags,
    termigen_metadata,
    with_shebang,
    write_file,
)

#: Names at a task folder's root that terminal-bench gives a meaning to.
RESERVED_ROOT = ("task.yaml", "docker-compose.yaml", "run-tests.sh", "solution.sh", "solution.yaml", "tests")
#: What stays out of the image's build context (everything tb adds around the environment).
HARNESS_FILES = ("task.yaml", "docker-compose.yaml", "run-tests.sh", "solution.sh", "tests")
TB1_DIFFICULTIES = ("easy", "medium", "hard")
ROOT_USERS = ("root", "0", "root:root", "0:0")


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so instructions stay readable in task.yaml."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def final_user(dockerfile: str) -> str | None:
    """The non-root ``USER`` the final stage ends with, or None (root)."""
    users = [ins.args.split()[0] for ins in final_stage(dockerfile) if ins.keyword == "USER" and ins.args]
    return users[-1] if users and users[-1].lower() not in ROOT_USERS else None


class Tb1Exporter(TaskFolderExporter):
    """Write validated tasks as terminal-bench 1 task folders."""

    name = "tb1"
    description = "Validated tasks as terminal-bench 1 folders (task.yaml, Dockerfile, docker-compose.yaml, run-tests.sh, tests/, solution.sh)."

    class Config(TaskFolderExporter.Config):
        path: str = "export/tb1"
        author_email: str = "unknown"
        #: Install asciinema too and let tb record the agent's terminal (a larger image).
        record_asciinema: bool = False

    config: Config

    def conflicts(self, record: TaskRecord) -> str | None:
        for path in check_tree(record.environment):  # normalised paths
            top = path.split("/")[0]
            if top in RESERVED_ROOT:
                return f"environment file {path!r} uses a name terminal-bench reserves ({top})"
        if "run-tests.sh" in record.tests:
            return "tests/run-tests.sh would clash with the runner terminal-bench copies into /tests"
        return None

    def task_yaml(self, record: TaskRecord) -> dict[str, Any]:
        difficulty = record.difficulty.lower()
        return {
            "instruction": record.instruction.rstrip("\n") + "\n",
            "author_name": self.config.author_name,
            "author_email": self.config.author_email,
            "difficulty": difficulty if difficulty in TB1_DIFFICULTIES else "unknown",
            "category": record.category,
            "tags": tags(record),
            "parser_name": "pytest",
            "max_agent_timeout_sec": float(record.agent_timeout_s),
            "max_test_timeout_sec": float(record.verifier_timeout_s),
            "run_tests_in_same_shell": record.verifier.kind == "tb1" and record.verifier.same_shell,
            "disable_asciinema": not self.config.record_asciinema,
            # tb ignores keys it does not know; this keeps how the task was made with it
            "termigen": termigen_metadata(record),
        }

    def dockerfile(self, record: TaskRecord) -> str:
        original = exported_dockerfile(record.environment["Dockerfile"])
        packages = ["tmux", "asciinema"] if self.config.record_asciinema else ["tmux"]
        layer = render("tb1/harness-layer.Dockerfile.j2", packages=packages, user=final_user(original))
        return original.rstrip("\n") + "\n" + layer

    def write_task(self, record: TaskRecord, folder: Path) -> None:
        limits = record_limits(record)
        environment = check_tree(record.environment, limits)  # normalised paths, so .dockerignore is found
        environment["Dockerfile"] = self.dockerfile(record)
        ignore = render("tb1/dockerignore.j2", names=HARNESS_FILES)
        own_ignore = environment.get(".dockerignore", "")
        environment[".dockerignore"] = (own_ignore.rstrip("\n") + "\n\n" if own_ignore.strip() else "") + ignore
        write_tree(folder, environment, Limits(max_files=limits.max_files + 1, max_file_bytes=limits.max_file_bytes,
                                               max_total_bytes=limits.max_total_bytes))  # + our .dockerignore
        if record.tests:
            write_tree(folder / "tests", record.tests, limits)
        # binary files byte for byte; a TB1 folder is the build context, so environment/ files go at its root
        write_binaries(record, {"environment": folder, "tests": folder / "tests", "solution": folder / "solution"}, self.read_blob)
        mark_executable(record, {"environment": folder, "tests": folder / "tests"})
        header = render(
            "tb1/task-header.yaml.j2", title=record.title, generator=generator_name(),
            local_images=local_images(environment["Dockerfile"]),
        )
        body = yaml.dump(self.task_yaml(record), Dumper=_LiteralDumper, sort_keys=False, allow_unicode=True, width=4096)
        write_file(folder / "task.yaml", header.rstrip("\n") + "\n\n" + body)
        write_file(folder / "docker-compose.yaml", render("tb1/docker-compose.yaml.j2"))
        runner = own_runner(record, "tb1")
        if runner is None:
            runner = render("tb1/run-tests.sh.j2", **runner_values(record))
        write_file(folder / "run-tests.sh", runner, executable=True)
        write_file(folder / "solution.sh", with_shebang(record.solution), executable=True)


@hookimpl
def register_exporters() -> list[type[Exporter]]:
    return [Tb1Exporter]
