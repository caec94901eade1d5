"""Plugin loading through the real CLI: built-ins, entry points, --plugin, failures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import TEST_PLUGIN, run_cli
from termigen_core.errors import PluginError
from termigen_core.plugins import BUILTIN_PLUGINS, build_plugin_host


def plugins_json(*args: str, env: dict[str, str] | None = None) -> dict:
    result = run_cli("plugins", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def provided(data: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for plugin in data["plugins"]:
        for kind, names in plugin["provides"].items():
            out.setdefault(kind, set()).update(names)
    return out


def test_builtins_are_listed_by_kind():
    data = plugins_json()
    assert data["failures"] == []
    kinds = provided(data)
    assert {"scripted", "litellm"} <= kinds["llm_backend"]
    assert {"seeds", "propose"} <= kinds["stage"]
    assert {"taxonomy", "file"} <= kinds["seed_source"]
    assert {"analysis", "command", "hallucination", "requirement_violation", "verification_failure"} <= kinds["error_mode"]
    assert "docker" in kinds["executor"]
    assert "jsonl" in kinds["exporter"]
    builtin = [p for p in data["plugins"] if p["source"] == "builtin"]
    assert len(builtin) == len(BUILTIN_PLUGINS)
    assert all(p["distribution"] == "termigen" and p["version"] for p in builtin)


def test_plugin_from_file_and_disable(tmp_path):
    data = plugins_json("--plugin", str(TEST_PLUGIN))
    assert {"count", "ask", "shell"} <= provided(data)["stage"]
    cli_plugin = next(p for p in data["plugins"] if p["source"] == "cli")
    assert cli_plugin["distribution"] is None
    data = plugins_json("--disable-plugin", "stages.propose")
    assert "propose" not in provided(data)["stage"]
    assert "seeds" in provided(data)["stage"]


def test_plugin_from_module_attr_and_env_var(tmp_path):
    pkg = tmp_path / "mymod.py"
    pkg.write_text(textwrap.dedent('''
        from termigen_core import hookimpl
        from termigen_core.components import Exporter

        class Nothing(Exporter):
            name = "nothing"
            def export(self, items, ctx):
                return {"count": 0}

        class Plugin:
            @hookimpl
            def register_exporters(self):
                return [Nothing]

        plugin = Plugin()
    '''))
    env = {"PYTHONPATH": str(tmp_path)}
    assert "nothing" in provided(plugins_json("--plugin", "mymod:plugin", env=env))["exporter"]
    assert "nothing" in provided(plugins_json(env={**env, "TERMIGEN_PLUGINS": "mymod:plugin"}))["exporter"]


def test_broken_entry_point_plugin_is_reported_and_the_rest_works(tmp_path):
    """A distribution whose plugin raises on import: named with its distribution, CLI keeps working."""
    site = tmp_path / "site"
    (site / "broken_termigen_plugin").mkdir(parents=True)
    (site / "broken_termigen_plugin" / "__init__.py").write_text("raise RuntimeError('boom at import')\n")
    dist = site / "broken_termigen_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-termigen-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[termigen]\nbroken = broken_termigen_plugin\n")
    env = {"PYTHONPATH": str(site)}
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0
    data = json.loads(result.stdout)
    failure = next(f for f in data["failures"] if f["name"] == "broken")
    assert failure["distribution"] == "broken-termigen-plugin"
    assert "RuntimeError: boom at import" in failure["error"]
    assert "plugin 'broken' (distribution broken-termigen-plugin) failed" in result.stderr
    assert "seeds" in provided(data)["stage"]
    # other commands still work, and the warning can be silenced
    result = run_cli("components", "stage", env=env)
    assert result.returncode == 0 and "propose" in result.stdout
    result = run_cli("components", "stage", "--disable-plugin", "broken", env=env)
    assert result.returncode == 0 and "boom" not in result.stderr


def test_plugin_given_on_command_line_that_raises_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("import not_a_real_module_xyz\n")
    result = run_cli("plugins", "--plugin", str(bad))
    assert result.returncode == 2
    assert "importing it raised ModuleNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("plugins", "--plugin", "no_such_pkg_abc:plugin")
    assert result.returncode == 2 and "no_such_pkg_abc" in result.stderr


def test_two_components_with_one_name_name_both_plugins(tmp_path):
    dup = tmp_path / "dup_stage.py"
    dup.write_text(textwrap.dedent('''
        from termigen_core import hookimpl
        from termigen_core.components import Stage

        class Propose(Stage):
            name = "propose"
            def process(self, item, ctx):
                return item

        @hookimpl
        def register_stages():
            return [Propose]
    '''))
    with pytest.raises(PluginError) as info:
        _ = build_plugin_host(cli_plugins=[str(dup)], entrypoints=False, environ={}).registry
    message = str(info.value)
    assert "two stages are named 'propose'" in message
    assert "'stages.propose'" in message and "'dup_stage'" in message
    result = run_cli("components", "--plugin", str(dup))
    assert result.returncode == 2 and "two stages are named 'propose'" in result.stderr


def test_unknown_hook_is_rejected(tmp_path):
    odd = tmp_path / "odd.py"
    odd.write_text("from termigen_core import hookimpl\n@hookimpl\ndef register_stagez():\n    return []\n")
    with pytest.raises(PluginError, match="unknown hook"):
        build_plugin_host(cli_plugins=[str(odd)], entrypoints=False, environ={})


def test_help_is_fast_because_nothing_heavy_is_imported():
    code = (
        "import sys\n"
        "from termigen_core.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('litellm', 'docker', 'openai', 'jinja2') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "run" in result.stdout and "plugins" in result.stdout and "components" in result.stdout


def test_every_plugin_package_is_in_pyproject():
    """plugins/ is installed as termigen_plugins from an explicit list: a new folder must be added."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "termigen_plugins" + ("." + ".".join(p.parent.relative_to(root / "plugins").parts) if p.parent != root / "plugins" else "")
        for p in (root / "plugins").rglob("__init__.py")
    }
    assert on_disk <= listed, on_disk - listed


@pytest.mark.slow
def test_a_clean_install_is_silent_and_ships_the_data_files(tmp_path):
    """Building the wheel prints no setuptools warning, and prompts and templates are in it."""
    import shutil
    import zipfile

    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # setuptools writes build/ next to the sources: not in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    for package in ("termigen_core", "plugins"):
        shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [line for line in (result.stdout + result.stderr).splitlines()
             if line.strip() and not line.startswith("WARNING: Location")]  # the machine's pip index config, not ours
    assert noise == [], noise[:20]
    (wheel,) = tmp_path.glob("termigen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "termigen_plugins/agent/prompts/critic_system.txt" in names
    assert "termigen_plugins/stages/prompts/proposer.txt" in names
    assert "termigen_plugins/exporters/templates/harbor/test.sh.j2" in names


def test_info_shows_user_locations(termigen_home):
    result = run_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["user_config"].startswith(str(termigen_home))
    assert data["image_build_index"].endswith("images.db")
    assert "llm-cache.db" in data["llm_cache"]


def test_component_reference_in_docs_is_current():
    """docs/components.md is `termigen components --markdown` for the built-ins: regenerate it when a component changes."""
    result = run_cli("components", "--markdown", env={"TERMIGEN_DISABLE_PLUGINS": "example"})
    assert result.returncode == 0, result.stderr
    docs = Path(__file__).resolve().parent.parent / "docs" / "components.md"
    assert docs.read_text(encoding="utf-8") == result.stdout, (
        "docs/components.md is out of date: run `termigen components --markdown > docs/components.md`"
    )
