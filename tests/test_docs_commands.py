"""Every command and repository path in README.md and docs/*.md works as written.

The docs are scanned for ``termigen ...`` and ``scripts/...`` commands, in fenced shell blocks
(``\\`` continuations joined, ``#`` comments dropped) and in inline `code` spans, and for the
repository paths and Markdown links they name. Each command is checked through the real CLI:

- every subcommand and option it shows must exist: the command line is walked against
  ``termigen [SUB...] --help`` the way click parses it (so an option placed where click would
  not accept it fails too), and it may not pass more arguments than the usage line takes;
- ``termigen run CONFIG ...`` on a config file of the repository becomes
  ``termigen config check CONFIG`` with the same ``-s`` overrides and plugins (dummy API keys in
  the environment), which must pass; overrides shown on a user's file (``pipeline.yaml``) are
  checked against ``examples/quickstart.yaml``;
- commands that only read what is installed (``plugins``, ``components``, ``info``,
  ``config schema``, ``config check <repo file>``, ``images list`` when an engine answers, ...)
  are run and must exit 0 with sensible output; optional ``[...]`` parts are dropped to run them;
- commands with placeholders (``RUN_DIR``, ``FILE``, ``...``) or needing a run or a container
  engine (``status``, ``sandbox prune``, ``images bootstrap``) get the subcommand/option check only.

Every case is named by the file and line where the command is written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from helpers import ROOT, run_cli

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Top-level folders of the repository: a path starting with one of them must exist.
# (Run output folders such as runs/, export/ and out/ are deliberately not in this list.)
REPO_DIRS = ("examples", "plugins", "termigen_core", "docs", "scripts", "benchmarks", "tests")
REPO_PATH_RE = re.compile(r"(?<![\w./$~:-])(?:" + "|".join(REPO_DIRS) + r")/[\w.*/-]*")
URL_RE = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
LINK_RE = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
TERMIGEN_RE = re.compile(r"^(?:\./)?(?:\.venv/bin/)?termigen$")
PLACEHOLDER_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")

# The doc shows `--plugin termigen_example_plugin` "with the folder on PYTHONPATH".
EXAMPLE_PLUGIN_DIR = ROOT / "examples" / "termigen-example-plugin"
# A model that needs a key finds one (config check never calls the model).
DUMMY_KEYS = {"ANTHROPIC_API_KEY": "sk-dummy", "OPENAI_API_KEY": "sk-dummy"}
# Subcommands that need a run directory or change the container engine: option check only.
NOT_RUN = {("status",), ("report",), ("view",), ("sandbox", "prune"), ("images", "bootstrap")}
# Subcommands that only need an answering container engine.
NEEDS_ENGINE = {("images", "list")}
GLOBAL_PLUGIN_FLAGS = ("--plugin", "--disable-plugin")


# --- extraction -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    file: str   # relative to the repository
    line: int
    text: str   # as written (continuations joined, comment dropped)
    argv: tuple[str, ...]  # after the program: `termigen` or the script path
    program: str  # "termigen" or the script path
    env: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: `{self.text}`"


@dataclass(frozen=True)
class DocPath:
    file: str
    line: int
    path: str        # relative to the repository
    anchor: str = ""  # for links: the #fragment


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _split_fences(text: str) -> tuple[list[tuple[int, str, list[str]]], str]:
    """Fenced blocks as (first content line number, language, lines); the rest with fences blanked."""
    blocks: list[tuple[int, str, list[str]]] = []
    prose: list[str] = []
    fence: str | None = None
    lang = ""
    body: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, lang, body, start = match.group(1), match.group(2).lower(), [], number + 1
                prose.append("")
            else:
                prose.append(line)
        else:
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                blocks.append((start, lang, body))
                fence = None
            else:
                body.append(line)
            prose.append("")
    return blocks, "\n".join(prose)


def _shell_words(text: str) -> list[str]:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        words = text.split("#", 1)[0].split()
    for i, word in enumerate(words):  # a pipe, redirection or next command ends this one
        if word in {"|", ">", ">>", "<", "&&", "||", ";", "&"}:
            return words[:i]
    return words


def _as_command(file: str, line: int, text: str) -> DocCommand | None:
    words = _shell_words(text)
    env: list[tuple[str, str]] = []
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env.append((key, value))
    if not words:
        return None
    shown = " ".join([f"{k}={v}" for k, v in env] + words)
    first = words[0]
    if TERMIGEN_RE.match(first) and len(words) > 1:
        return DocCommand(file, line, shown, tuple(words[1:]), "termigen", tuple(env))
    if first.removeprefix("./").startswith("scripts/"):
        return DocCommand(file, line, shown, tuple(words[1:]), first.removeprefix("./"), tuple(env))
    return None


def extract(path: Path) -> tuple[list[DocCommand], list[DocPath]]:
    file = _rel(path)
    text = path.read_text(encoding="utf-8")
    commands: list[DocCommand] = []
    blocks, prose = _split_fences(text)

    for start, lang, body in blocks:
        if lang not in SHELL_LANGS:
            continue
        pending, first_line = "", 0
        for offset, raw in enumerate(body):
            line = raw.strip()
            if not pending:
                first_line = start + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            joined, pending = (pending + line).strip(), ""
            joined = joined.removeprefix("$ ")
            command = _as_command(file, first_line, joined)
            if command:
                commands.append(command)

    code: list[tuple[int, str]] = []  # (line number, code written on it), for the paths below
    for match in re.finditer(r"(`+)(.+?)\1", prose, flags=re.DOTALL):  # inline spans, also across lines
        content = match.group(2)
        if "\n\n" in content:
            continue
        line = prose.count("\n", 0, match.start(2)) + 1
        code += [(line + offset, part) for offset, part in enumerate(content.split("\n"))]
        command = _as_command(file, line, " ".join(content.split()))
        if command:
            commands.append(command)

    # Paths are those written as code (inline spans, fenced blocks) or linked: plain prose may
    # name paths of other trees (a task folder's tests/ in docs/components.md, say).
    paths: set[DocPath] = set()
    for start, _lang, body in blocks:
        code += [(start + offset, line) for offset, line in enumerate(body)]
    for number, fragment in code:
        for match in REPO_PATH_RE.finditer(URL_RE.sub(" ", fragment)):
            paths.add(DocPath(file, number, match.group(0).rstrip(".,:;")))
    for number, line in enumerate(prose.splitlines(), start=1):
        for match in LINK_RE.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                continue
            target_path, _, anchor = target.partition("#")
            resolved = (path.parent / target_path).resolve() if target_path else path
            try:
                relative = _rel(resolved)
            except ValueError:
                relative = str(resolved)  # outside the repository: reported as missing below
            paths.add(DocPath(file, number, relative, anchor))
    return sorted(commands, key=lambda c: (c.file, c.line, c.text)), sorted(paths, key=lambda p: (p.file, p.line, p.path, p.anchor))


def _extract_all() -> tuple[list[DocCommand], list[DocPath]]:
    commands: list[DocCommand] = []
    paths: list[DocPath] = []
    for doc in DOC_FILES:
        found_commands, found_paths = extract(doc)
        commands += found_commands
        paths += found_paths
    return commands, paths


COMMANDS, PATHS = _extract_all()
TERMIGEN_COMMANDS = [c for c in COMMANDS if c.program == "termigen"]
SCRIPT_COMMANDS = [c for c in COMMANDS if c.program != "termigen"]


def _case_id(file: str, line: int, text: str) -> str:
    return f"{file}:{line}:{text}"


# --- the CLI's own description of itself --------------------------------------------------------


@dataclass
class Help:
    text: str
    commands: set[str] = field(default_factory=set)
    options: dict[str, bool] = field(default_factory=dict)  # flag -> takes a value
    args: list[str] = field(default_factory=list)            # positional arguments in the usage line


def _split_usage(usage: str) -> list[str]:
    """Usage-line units, keeping bracketed groups (click wraps long choice lists) together."""
    units, depth, current = [], 0, ""
    for char in usage:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char.isspace() and depth == 0:
            if current:
                units.append(current)
            current = ""
        elif not (char.isspace() and depth > 0):
            current += char
    if current:
        units.append(current)
    return units


def parse_help(text: str) -> Help:
    result = Help(text)
    lines = text.splitlines()
    usage_lines: list[str] = []
    for line in lines:
        if usage_lines and not line.strip():
            break
        if line.startswith("Usage:") or usage_lines:
            usage_lines.append(line.strip())
    units = _split_usage(" ".join(usage_lines).removeprefix("Usage:"))
    if "[OPTIONS]" in units:
        result.args = units[units.index("[OPTIONS]") + 1:]
    section = None
    for line in lines:
        if re.match(r"^\S.*:$", line):
            section = line[:-1]
            continue
        if section == "Commands":
            match = re.match(r"^  (\S+)", line)
            if match:
                result.commands.add(match.group(1))
        elif section == "Options":
            match = re.match(r"^  (-\S.*?)(?:\s{2,}.*)?$", line)
            if not match:
                continue
            parts = re.split(r",\s+|\s+/\s+", match.group(1).strip())
            takes_value = any(re.match(r"^-{1,2}[\w-]+[ =]\S", part) for part in parts)
            for part in parts:
                result.options[re.match(r"^(-{1,2}[\w-]+)", part).group(1)] = takes_value
    return result


@cache
def cli_help(path: tuple[str, ...]) -> Help:
    result = run_cli(*path, "--help", cwd=ROOT, env=_cli_env())
    assert result.returncode == 0, f"`termigen {' '.join(path)} --help` failed: {result.stderr}"
    return parse_help(result.stdout)


def _cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(EXAMPLE_PLUGIN_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": pythonpath, **(extra or {})}


# --- reading a documented command line ----------------------------------------------------------


def is_placeholder(word: str) -> bool:
    return bool(PLACEHOLDER_RE.match(word)) or "..." in word or "\u2026" in word


@dataclass
class Parsed:
    path: tuple[str, ...] = ()                            # subcommands, e.g. ("config", "check")
    options: list[tuple[str, str | None, bool]] = field(default_factory=list)  # (flag, value, optional)
    positionals: list[tuple[str, bool]] = field(default_factory=list)           # (word, optional)
    plugins: list[tuple[str, str, bool]] = field(default_factory=list)          # (flag, value, optional)
    problems: list[str] = field(default_factory=list)

    def required_words(self) -> list[str]:
        words = [w for w, optional in self.positionals if not optional]
        for flag, value, optional in self.options + self.plugins:
            if not optional:
                words += [flag] + ([value] if value is not None else [])
        return words


def _unbracket(argv: tuple[str, ...]) -> list[tuple[str, bool]]:
    """Words with brackets removed, each marked optional if it sat inside `[...]`."""
    out, depth = [], 0
    for word in argv:
        opening = len(word) - len(word.lstrip("["))
        depth += opening
        core = word.lstrip("[")
        closing = len(core) - len(core.rstrip("]"))
        core = core.rstrip("]")
        if core:
            out.append((core, depth > 0))
        depth = max(0, depth - closing)
    return out


def parse_command(command: DocCommand) -> Parsed:
    """Walk the command line against the CLI's help, as click would parse it."""
    parsed = Parsed()
    words: list[tuple[str, bool]] = []
    items = _unbracket(command.argv)
    i = 0
    while i < len(items):  # --plugin / --disable-plugin are read anywhere (cli.split_plugin_args)
        word, optional = items[i]
        flag, eq, value = word.partition("=")
        if flag in GLOBAL_PLUGIN_FLAGS:
            if not eq:
                i += 1
                value = items[i][0] if i < len(items) else ""
            if not value:
                parsed.problems.append(f"{flag} needs a value")
            parsed.plugins.append((flag, value, optional))
        else:
            words.append((word, optional))
        i += 1

    help_ = cli_help(())
    i = 0
    while i < len(words):
        word, optional = words[i]
        here = " ".join(("termigen", *parsed.path))
        if word.startswith("-") and word != "-":
            flag, eq, value = word.partition("=")
            if flag not in help_.options:
                parsed.problems.append(f"`{here}` has no option {flag} (`{here} --help` lists: {', '.join(sorted(help_.options))})")
                i += 1
                continue
            if help_.options[flag] and not eq:
                i += 1
                value = words[i][0] if i < len(words) else None
                if value is None:
                    parsed.problems.append(f"option {flag} of `{here}` needs a value")
            parsed.options.append((flag, value if help_.options[flag] else None, optional))
        elif help_.commands:
            if is_placeholder(word):
                parsed.problems.append(f"`{here}` needs a subcommand, the doc shows {word!r}")
                break
            if word not in help_.commands:
                parsed.problems.append(f"`{here}` has no subcommand {word!r} (it has: {', '.join(sorted(help_.commands))})")
                break
            parsed.path += (word,)
            help_ = cli_help(parsed.path)
        else:
            parsed.positionals.append((word, optional))
        i += 1

    if not parsed.problems and not help_.commands:
        variadic = any(arg.endswith("...") for arg in help_.args)
        if not variadic and len(parsed.positionals) > len(help_.args):
            parsed.problems.append(
                f"`termigen {' '.join(parsed.path)}` takes {len(help_.args)} argument(s) ({' '.join(help_.args) or 'none'}), "
                f"the doc passes {len(parsed.positionals)}: {[w for w, _ in parsed.positionals]}"
            )
        # A bare `termigen run` in prose names a command; once options or arguments are shown,
        # the command line must be complete (a placeholder such as RUN_DIR is fine).
        required = [arg for arg in help_.args if not arg.startswith("[")]
        asks_help = any(flag in ("--help", "-h") for flag, _, _ in parsed.options)
        shows_more = bool(parsed.options or parsed.positionals)
        if shows_more and not asks_help and len(parsed.positionals) < len(required):
            parsed.problems.append(
                f"`termigen {' '.join(parsed.path)}` needs {' '.join(required)}, the doc passes "
                f"{[w for w, _ in parsed.positionals] or 'nothing'} (write a placeholder such as {required[-1]})"
            )
    return parsed


def _real_repo_file(word: str) -> Path | None:
    if is_placeholder(word):
        return None
    candidate = ROOT / word
    return candidate if candidate.is_file() else None


# --- checks of what a command prints -------------------------------------------------------------


def _expected_output(parsed: Parsed, argv: list[str], stdout: str) -> list[str]:
    """Problems with the output of a command that ran (empty when it looks right)."""
    problems = []
    if not stdout.strip():
        return ["printed nothing"]
    if "--help" in argv or "-h" in argv:
        return [] if "Usage:" in stdout else ["help without a Usage line"]
    if "--json" in argv or parsed.path == ("config", "schema"):
        try:
            data = json.loads(stdout)
        except ValueError as exc:
            return [f"output is not JSON: {exc}"]
        if parsed.path == ("plugins",) and not data.get("plugins"):
            problems.append("no plugins in the JSON")
        if parsed.path == ("config", "schema") and "properties" not in data:
            problems.append("the schema has no properties")
    elif parsed.path == ("plugins",):
        if "taxonomy_builtin" not in stdout:
            problems.append("the built-in plugins are not listed")
    elif parsed.path == ("components",) and "--markdown" in argv:
        if not stdout.startswith("# Components"):
            problems.append("not the components reference")
    elif parsed.path == ("components",):
        kinds = [w for w, optional in parsed.positionals if not optional]
        titles = [line for line in stdout.splitlines() if re.match(r"^\S.*:$", line)]
        entries = [line for line in stdout.splitlines() if re.match(r"^  \S+ ", line)]
        if not entries or len(titles) != (1 if kinds else len(cli_help(("components",)).args[0].split("|"))):
            problems.append(f"expected one listing per kind with components in it, got kinds {titles}")
    elif parsed.path == ("config", "check"):
        if ": ok (" not in stdout:
            problems.append("no `ok` line")
    elif parsed.path == ("info",) and "user_config" not in stdout:
        problems.append("does not show the user config")
    if parsed.path == ("plugins",):
        for flag, spec, _ in parsed.plugins:
            if flag == "--plugin":
                name = Path(spec).stem if spec.endswith(".py") else spec
                if name not in stdout:
                    problems.append(f"the plugin loaded with --plugin {spec} ({name}) is not listed")
    return problems


@cache
def engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means: no engine to list images from
        return False


def _overrides(parsed: Parsed) -> list[str]:
    out = []
    for flag, value, optional in parsed.options:
        if flag in ("-s", "--set") and not optional and value is not None and not is_placeholder(value):
            out += ["-s", value]
    return out


def _plugin_args(parsed: Parsed) -> list[str]:
    return [arg for flag, value, optional in parsed.plugins if not optional for arg in (flag, value)]


def _run(argv: list[str], command: DocCommand, extra_env: dict[str, str] | None = None):
    env = _cli_env({**dict(command.env), **(extra_env or {})})
    return run_cli(*argv, cwd=ROOT, env=env, timeout=120)


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", TERMIGEN_COMMANDS, ids=[_case_id(c.file, c.line, c.text) for c in TERMIGEN_COMMANDS]
)
def test_documented_termigen_command(command: DocCommand):
    parsed = parse_command(command)
    assert not parsed.problems, f"{command.where}\n  " + "\n  ".join(parsed.problems)
    # From here the subcommand and every option shown exist and sit where click accepts them.

    required = parsed.required_words()
    if parsed.path == ("run",):
        config = next((w for w, optional in parsed.positionals if not optional), None)
        config_path = _real_repo_file(config) if config else None
        overrides = _overrides(parsed)
        if config_path is None and not overrides:
            return  # `termigen run pipeline.yaml` on the user's own file: the options are checked
        target = config if config_path else "examples/quickstart.yaml"
        argv = [*_plugin_args(parsed), "config", "check", target, *overrides]
        result = _run(argv, command, DUMMY_KEYS)
        assert result.returncode == 0, (
            f"{command.where}\n  checked as `termigen {' '.join(argv)}`: exit {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )
        return

    if parsed.path in NOT_RUN:
        return  # needs a run directory or changes the engine: the options are checked
    if parsed.path in NEEDS_ENGINE and not engine_answers():
        return  # no engine to ask: the options are checked
    if any(is_placeholder(word) for word in required):
        return  # a placeholder the reader fills in: the options are checked
    if parsed.path == ("config", "check") and not any(_real_repo_file(w) for w, o in parsed.positionals if not o):
        return  # the reader's own file (`pipeline.yaml`): the options are checked

    # Run it as written, without its optional [...] parts.
    argv = [*_plugin_args(parsed), *parsed.path]
    for flag, value, optional in parsed.options:
        if not optional:
            argv += [flag] + ([value] if value is not None else [])
    argv += [w for w, optional in parsed.positionals if not optional]
    result = _run(argv, command, DUMMY_KEYS)
    assert result.returncode == 0, (
        f"{command.where}\n  ran `termigen {' '.join(argv)}`: exit {result.returncode}\n{result.stdout}{result.stderr}"
    )
    problems = _expected_output(parsed, argv, result.stdout)
    assert not problems, f"{command.where}\n  ran `termigen {' '.join(argv)}`: " + "; ".join(problems)


@pytest.mark.parametrize(
    "command", SCRIPT_COMMANDS, ids=[_case_id(c.file, c.line, c.text) for c in SCRIPT_COMMANDS]
)
def test_documented_script_command(command: DocCommand):
    script = ROOT / command.program
    assert script.is_file(), f"{command.where}\n  no script {command.program} in the repository"
    assert os.access(script, os.X_OK), f"{command.where}\n  {command.program} is not executable"
    source = script.read_text(encoding="utf-8")
    for word in command.argv:
        if word.startswith("-"):
            flag = word.partition("=")[0].strip("[]")
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", source), (
                f"{command.where}\n  {command.program} does not handle {flag}"
            )


def _heading_anchors(path: Path) -> set[str]:
    anchors = set()
    _, prose = _split_fences(path.read_text(encoding="utf-8"))
    for line in prose.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            title = re.sub(r"[`*_]", "", match.group(1)).strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


@pytest.mark.parametrize(
    "doc_path", PATHS, ids=[_case_id(p.file, p.line, p.path + (f"#{p.anchor}" if p.anchor else "")) for p in PATHS]
)
def test_documented_path_exists(doc_path: DocPath):
    where = f"{doc_path.file}:{doc_path.line}"
    if "*" in doc_path.path:
        assert list(ROOT.glob(doc_path.path)), f"{where}: nothing in the repository matches {doc_path.path}"
    else:
        assert (ROOT / doc_path.path).exists(), f"{where}: {doc_path.path} does not exist in the repository"
    if doc_path.anchor:
        target = ROOT / doc_path.path
        assert target.suffix == ".md", f"{where}: #{doc_path.anchor} on a file that is not Markdown"
        assert doc_path.anchor in _heading_anchors(target), (
            f"{where}: {doc_path.path} has no heading #{doc_path.anchor}"
        )


def test_extractor_finds_the_documented_commands():
    """A broken extractor must not pass silently with nothing to check."""
    readme = [c for c in TERMIGEN_COMMANDS if c.file == "README.md"]
    readme_table = {c.text for c in readme}
    for row in (
        "termigen run CONFIG [-s key=value] [--out DIR] [--plugin ...]",
        "termigen status RUN_DIR",
        "termigen config check FILE",
        "termigen config schema",
        "termigen plugins [--json]",
        "termigen components [KIND]",
        "termigen images bootstrap",
        "termigen images list",
        "termigen sandbox prune [--run ID]",
        "termigen info",
    ):
        assert row in readme_table, f"the README's command table row `{row}` was not extracted"
    # The fenced, continued command of "With a real model" comes out as one command line.
    real_model = [c for c in readme if c.argv[:2] == ("run", "examples/quickstart.yaml")]
    assert real_model and "llm.default.model=anthropic/claude-sonnet-4-5" in real_model[0].argv, real_model
    assert "--out" in real_model[0].argv
    # Comments after `#` are dropped; .venv/bin/termigen and scripts are recognised.
    assert not any("#" in c.text for c in COMMANDS), [c.text for c in COMMANDS if "#" in c.text]
    assert {"scripts/quickstart.sh", "scripts/test.sh", "scripts/bootstrap.sh", "scripts/conformance.sh"} <= {
        c.program for c in SCRIPT_COMMANDS
    }
    assert len(TERMIGEN_COMMANDS) >= 30, len(TERMIGEN_COMMANDS)
    assert {"README.md", "docs/user-guide.md", "docs/plugin-guide.md", "docs/config-reference.md"} <= {
        c.file for c in TERMIGEN_COMMANDS
    }
    assert len(PATHS) >= 20, len(PATHS)
    assert any(p.path == "examples/quickstart.yaml" for p in PATHS)
    assert any(p.anchor == "base-images" for p in PATHS)


def test_parser_rejects_what_the_cli_does_not_have():
    """The option check can fail: a made-up subcommand, option or extra argument is reported."""
    def problems(text: str) -> list[str]:
        command = _as_command("doc.md", 1, text)
        assert command is not None
        return parse_command(command).problems

    assert problems("termigen runn examples/quickstart.yaml")
    assert problems("termigen run examples/quickstart.yaml --outdir x")
    assert problems("termigen status --run x RUN_DIR")
    assert problems("termigen status a b")
    assert problems("termigen sandbox prune --json")
    assert problems("termigen status --json")
    assert not problems("termigen --plugin x.py run CONFIG -s a=b --out DIR --no-progress")
    assert not problems("termigen components [KIND]")
