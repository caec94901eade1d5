"""The ``harbor`` exporter: validated tasks as Harbor / Terminal-Bench 2 task folders.

Per task::

    <id>/task.toml          metadata (true: from the record) and timeouts
    <id>/instruction.md     what the agent is asked to do
    <id>/environment/       the Docker build context exactly as built (FROM lines included)
    <id>/tests/test.sh      runs the pytest files, writes /logs/verifier/reward.txt (1 or 0);
                            an imported Harbor task's own test.sh, unchanged
    <id>/tests/test_*.py    the validated tests
    <id>/solution/solve.sh  the reference solution that made them pass

The environment is not rewritten: it is the build context termigen built and
validated, so its ``FROM`` names a local tag (``termigen/base:bookworm`` ...)
that no registry serves. Run ``termigen images bootstrap`` on the machine that
runs Harbor (or generate with ``images.aliases`` mapping the base image to a
pullable one); task.toml says so in a comment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from termigen_core import hookimpl
from termigen_core.components import Exporter
from termigen_core.records import TaskRecord, materialize, write_binaries
from termigen_core.safepaths import check_tree

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
    toml_dumps,
    with_shebang,
    write_file,
)

#: Where Harbor reads the reward (inside the container).
REWARD_FILE = "/logs/verifier/reward.txt"
#: Harbor's task.toml schema the files are written for (harbor 0.24).
SCHEMA_VERSION = "1.4"
#: Names in tests/ that this exporter writes itself (Harbor runs tests/test.sh).
RESERVED_TESTS = ("test.sh",)


class HarborExporter(TaskFolderExporter):
    """Write validated tasks as Harbor (Terminal-Bench 2) task folders."""

    name = "harbor"
    description = "Validated tasks as Harbor / Terminal-Bench 2 folders (task.toml, environment/, tests/test.sh, solution/)."

    class Config(TaskFolderExporter.Config):
        path: str = "export/harbor"
        #: ``[environment] build_timeout_sec``: the harness rebuilds the image on its machine.
        build_timeout_s: float = 900.0

    config: Config

    def conflicts(self, record: TaskRecord) -> str | None:
        clash = [name for name in RESERVED_TESTS if name in check_tree(record.tests)]  # normalised paths
        return f"tests/{clash[0]} is written by the exporter; the task has its own" if clash else None

    def task_config(self, record: TaskRecord) -> dict[str, Any]:
        """task.toml as data: Harbor's standard metadata keys, then ours under ``termigen``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "metadata": {
                "author_name": self.config.author_name,
                "difficulty": record.difficulty,
                "category": record.category,
                "tags": tags(record),
                "termigen": termigen_metadata(record),
            },
            "verifier": {
                "timeout_sec": float(record.verifier_timeout_s),
                **({"env": dict(record.verifier.env)} if record.verifier.env else {}),
            },
            "agent": {"timeout_sec": float(record.agent_timeout_s)},
            "environment": {"build_timeout_sec": float(self.config.build_timeout_s), "workdir": record.workdir},
        }

    def write_task(self, record: TaskRecord, folder: Path) -> None:
        materialize(record, folder, with_solution=False, read_blob=self.read_blob)  # environment/ and tests/, confined
        dockerfile = exported_dockerfile(record.environment["Dockerfile"])
        if dockerfile != record.environment["Dockerfile"]:  # FROM a catalog image: inlined, so it builds anywhere
            write_file(folder / "environment" / "Dockerfile", dockerfile)
        write_binaries(record, {"solution": folder / "solution"}, self.read_blob)
        header = render(
            "harbor/task-header.toml.j2", title=record.title, generator=generator_name(),
            local_images=local_images(dockerfile),
        )
        write_file(folder / "task.toml", header.rstrip("\n") + "\n\n" + toml_dumps(self.task_config(record)))
        write_file(folder / "instruction.md", record.instruction.rstrip("\n") + "\n")
        runner = own_runner(record, "harbor")
        if runner is None:
            runner = render("harbor/test.sh.j2", reward_file=REWARD_FILE, **runner_values(record))
        write_file(folder / "tests" / "test.sh", runner, executable=True)
        write_file(folder / "solution" / "solve.sh", with_shebang(record.solution), executable=True)


@hookimpl
def register_exporters() -> list[type[Exporter]]:
    return [HarborExporter]
