"""The ``lint`` verifier: what Harbor's task-quality rubric would flag, found statically.

A task can build and validate and still be a bad benchmark item: its tests or
reference solution baked into the image (the agent can read the answer), a
container that needs ``--privileged`` or the host's Docker socket, a base image
other harnesses cannot reproduce, unpinned dependencies (the task changes
under the agent's feet when PyPI moves), ``curl | sh`` installers, or tests
that only check that a file exists (any ``touch`` passes them). Each rule is a
small function over the task record so the list is easy to read and extend.

The Dockerfile rules are also used by the ``synthesize`` and ``build`` stages
to refuse a Dockerfile before it is ever built (:func:`dockerfile_findings`).
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Iterable

from termigen_core import hookimpl, pysource
from termigen_core.components import Finding, Verifier
from termigen_core.dockerfile import Instruction, copy_sources, from_images, parse
from termigen_core.records import TaskRecord

if TYPE_CHECKING:
    from termigen_core.context import ImagePolicy, StageContext
    from termigen_core.items import Item

ERROR = "error"
WARNING = "warning"
DOCKERFILE = "environment/Dockerfile"

#: Top-level folders / file names that hold verification material, never environment.
TEST_DIRS = ("tests",)
SOLUTION_DIRS = ("solution",)
SOLUTION_FILES = ("solve.sh", "solution.sh")


def is_verification_path(path: str) -> str | None:
    """Why ``path`` (relative, in the build context or an image) is tests/solution material, else None."""
    parts = [p for p in PurePosixPath(path.strip().lstrip("./")).parts if p not in ("", ".", "/")]
    if not parts:
        return None
    if parts[0] in TEST_DIRS:
        return "tests belong to the verifier and are copied in only when the task is checked"
    if parts[0] in SOLUTION_DIRS or parts[-1] in SOLUTION_FILES:
        return "the reference solution must never be in the image the agent works in"
    return None


_HOST_MOUNT = re.compile(r"(?:^|\s)(?:-v|--volume)[ =]+/[^\s:]*:")
_CURL_SH = re.compile(r"\b(?:curl|wget)\b[^|;&]*\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b")


def dockerfile_findings(
    text: str,
    *,
    images: "ImagePolicy | None" = None,
    environment: Iterable[str] = (),
) -> list[Finding]:
    """Every finding about one Dockerfile (errors block a task; warnings are reported)."""
    instructions = parse(text)
    findings: list[Finding] = []

    def add(severity: str, ins: Instruction | None, message: str) -> None:
        where = f"line {ins.line}: " if ins is not None else ""
        findings.append(Finding(severity, where + message, DOCKERFILE))

    baked = sorted(p for p in environment if is_verification_path(p))
    for ins in instructions:
        body = " ".join((ins.keyword, ins.args, *ins.heredocs))  # a heredoc is part of its instruction
        if "--privileged" in body:
            add(ERROR, ins, "uses --privileged; a task must run in an unprivileged container")
        if "--security=insecure" in body:
            add(ERROR, ins, "uses RUN --security=insecure (privileged build step)")
        if "docker.sock" in body:
            add(ERROR, ins, "refers to the Docker socket; a task must not reach the host's engine")
        if _HOST_MOUNT.search(body) or re.search(r"--mount=[^\s]*type=bind[^\s]*source=/", body):
            add(ERROR, ins, "mounts a host path; a task must be self-contained")
        if re.search(r"--(?:cap-add|device)\b", body):
            add(ERROR, ins, "adds capabilities or devices; a task must run in a default container")
        if re.search(r"--(?:network|net)[= ]host\b", body):
            add(WARNING, ins, "uses the host network")
        if ins.keyword in ("COPY", "ADD"):
            for source in copy_sources(ins):
                why = is_verification_path(source)
                if why:
                    add(ERROR, ins, f"copies {source} into the image: {why}")
                elif source.strip("./") in ("", "*") and baked:
                    add(ERROR, ins, f"copies the whole build context, which holds {', '.join(baked)}")
        if ins.keyword == "RUN":
            scripts = [ins.args, *"".join(ins.heredocs).splitlines()]
            if any(_CURL_SH.search(script) for script in scripts):
                add(WARNING, ins, "pipes a downloaded script into a shell (curl | sh); install pinned packages instead")
            for package in [p for script in scripts for p in unpinned_pip_packages(script)]:
                add(WARNING, ins, f"unpinned pip install of {package!r}; pin it (name==version) so the task does not drift")

    if images is not None:
        allowed = {images.base, images.resolve(images.base), *images.aliases.values(), *images.catalog}
        for found in from_images(instructions):
            image = found.image
            if image not in allowed and not found.stage_ref and images.resolve(image) not in allowed:
                add(WARNING, found.instruction, f"FROM {image} is not the configured base image {images.base}")
    return findings


_PIP = re.compile(r"^(?:pip3?(?:\.\d+)?|python3?(?:\.\d+)?\s+-m\s+pip)$")
#: pip options that take a value (the value is not a package).
_PIP_VALUE_OPTIONS = {
    "-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
    "-t", "--target", "--prefix", "--root", "--platform", "--python-version", "--trusted-host", "--cache-dir",
    "--progress-bar", "--src", "--implementation", "--abi", "--upgrade-strategy", "--log", "--proxy", "--cert",
}


def unpinned_pip_packages(command: str) -> list[str]:
    """Packages named without a version in the ``pip install`` commands of a RUN line."""
    found: list[str] = []
    for segment in re.split(r"&&|\|\||;|\|", command):
        try:
            tokens = shlex.split(segment)
        except ValueError:
            tokens = segment.split()
        # find "<pip> install" with pip possibly spelled "python3 -m pip"
        for index in range(len(tokens)):
            head = " ".join(tokens[max(0, index - 2) : index + 1])
            single = tokens[index]
            if tokens[index + 1 : index + 2] != ["install"]:
                continue
            if not (_PIP.match(single) or _PIP.match(head)):
                continue
            skip = False
            for token in tokens[index + 2 :]:
                if skip:
                    skip = False
                    continue
                if token.startswith("-"):
                    skip = token in _PIP_VALUE_OPTIONS
                    continue
                if _is_pinned(token):
                    continue
                found.append(token)
            break
    return found


def _is_pinned(spec: str) -> bool:
    """A requirement that names an exact version, a URL, a local path or a variable."""
    spec = spec.strip()
    return (
        "==" in spec
        or "@" in spec
        or "://" in spec
        or spec.startswith((".", "/", "$"))
        or spec.endswith((".whl", ".tar.gz", ".zip"))
    )


def requirements_findings(environment: dict[str, str]) -> list[Finding]:
    """Unpinned lines in ``requirements*.txt`` files of the build context."""
    findings = []
    for path, text in sorted(environment.items()):
        name = PurePosixPath(path).name
        if not (name.startswith("requirements") and name.endswith(".txt")):
            continue
        loose = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-") and not _is_pinned(line):
                loose.append(line)
        if loose:
            findings.append(
                Finding(WARNING, f"unpinned requirements: {', '.join(loose[:10])}; pin them (name==version)", f"environment/{path}")
            )
    return findings


# --- tests ------------------------------------------------------------------------

_EXISTENCE = {"exists", "lexists", "isfile", "isdir", "is_file", "is_dir", "access", "is_symlink"}


def _is_existence_check(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _is_existence_check(node.operand)
    if isinstance(node, ast.BoolOp):
        return all(_is_existence_check(value) for value in node.values)
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        return name in _EXISTENCE
    return False


def _is_constant(node: ast.expr) -> bool:
    """An assertion that cannot depend on the environment (``assert True``, ``assert 2 == 2``)."""
    return not any(isinstance(n, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) for n in ast.walk(node))


def _test_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            functions.append(node)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            functions += [
                n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")
            ]
    return functions


def weak_test_findings(tests: dict[str, str]) -> list[Finding]:
    """Tests that do not parse, that only check existence, or that assert constants."""
    findings = []
    for path, text in sorted(tests.items()):
        if not path.endswith(".py"):
            continue
        where = f"tests/{path}"
        try:
            tree = pysource.parse(text, filename=path)
        except SyntaxError as exc:
            findings.append(Finding(ERROR, f"does not parse: {exc.msg} (line {exc.lineno})", where))
            continue
        for function in _test_functions(tree):
            asserts = [n.test for n in ast.walk(function) if isinstance(n, ast.Assert)]
            if not asserts:
                continue
            if all(_is_existence_check(a) for a in asserts):
                findings.append(
                    Finding(WARNING, f"{function.name} only checks that files exist; check their content too", where)
                )
            elif any(_is_constant(a) for a in asserts):
                findings.append(
                    Finding(WARNING, f"{function.name} asserts a constant that does not depend on the environment", where)
                )
    return findings


def task_findings(record: TaskRecord, images: "ImagePolicy | None" = None) -> list[Finding]:
    """Every lint finding for one task record."""
    findings: list[Finding] = []
    dockerfile = record.environment.get("Dockerfile")
    if dockerfile is None:
        findings.append(Finding(ERROR, "the environment has no Dockerfile", DOCKERFILE))
    else:
        findings += dockerfile_findings(dockerfile, images=images, environment=record.environment)
    for path in sorted(record.environment):
        why = is_verification_path(path)
        if why:
            findings.append(Finding(ERROR, f"in the build context: {why}", f"environment/{path}"))
    findings += requirements_findings(record.environment)
    findings += weak_test_findings(record.tests)
    return findings


class LintVerifier(Verifier):
    """Static checks of a task against Harbor's quality rubric."""

    name = "lint"
    description = "Flags tests/solution baked into the image, privileged or host-mounting Dockerfiles, unpinned deps, weak tests."

    def verify(self, item: "Item", ctx: "StageContext") -> list[Finding]:
        return task_findings(TaskRecord.of(item.data), ctx.images)


@hookimpl
def register_verifiers() -> list[type[Verifier]]:
    return [LintVerifier]
