"""Bad inputs a user can give: each is refused with one clear line naming the thing, never a traceback.

Every case runs the real CLI: duplicate YAML keys, an alias bomb, TOML in a ``.yaml`` file, an
unusable ``--out``, export paths where a file is needed and a folder is in the way (or the
reverse), a buggy exporter, and a script with a duplicate key.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import TEST_PLUGIN, run_cli, write_yaml

SCRIPT = '- role: worker\n  response: "fine"\n'

PIPELINE = """\
version: 1
run: {out: run}
stages:
  - use: count
    with: {n: 2}
llm:
  default: {backend: scripted, script: script.yaml}
exports:
  - use: jsonl
"""


def check(path: Path) -> subprocess.CompletedProcess:
    return run_cli("config", "check", str(path), "--plugin", str(TEST_PLUGIN), timeout=30)


def termigen_run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), *args, timeout=120)


def assert_refused(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Exit ``code``, every needle on one line of the output, and no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert any(needle in line for line in output.splitlines()), (needle, output)


def pipeline(tmp_path: Path, exports: list[dict] | None = None) -> Path:
    (tmp_path / "script.yaml").write_text(SCRIPT, encoding="utf-8")
    return write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run")},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "count", "with": {"n": 2}}],
        "exports": exports or [{"use": "jsonl"}],
    })


# --- config files -------------------------------------------------------------------------------


def test_a_second_top_level_block_is_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE + "stages:\n  - use: count\n", encoding="utf-8")
    assert_refused(check(path), 2, "duplicate key 'stages' (lines 3 and 10)")


def test_a_duplicate_key_in_a_nested_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.replace("with: {n: 2}", "with:\n      n: 2\n      n: 3"), encoding="utf-8")
    assert_refused(check(path), 2, "duplicate key 'n' (lines 6 and 7)")


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    levels = ['laughs0: &laughs0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"laughs{i}: &laughs{i} [{', '.join([f'*laughs{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text(PIPELINE + "\n".join(levels) + "\n", encoding="utf-8")
    assert 1000 < path.stat().st_size < 2000
    # 9**10 strings if expanded; refused at the first alias, so this returns at once (timeout 30 s)
    assert_refused(check(path), 2, "YAML aliases (*laughs0, line 11) are not allowed in pipeline files")


def test_toml_in_a_yaml_file_says_so_and_the_toml_file_works(tmp_path: Path) -> None:
    (tmp_path / "script.yaml").write_text(SCRIPT, encoding="utf-8")
    toml = (
        'version = 1\n\n[run]\nout = "run"\n\n[llm.default]\nbackend = "scripted"\nscript = "script.yaml"\n\n'
        '[[stages]]\nuse = "count"\n\n[[exports]]\nuse = "jsonl"\n'
    )
    as_yaml = tmp_path / "pipeline.yaml"
    as_yaml.write_text(toml, encoding="utf-8")
    assert_refused(check(as_yaml), 2, "not a YAML mapping", "only files ending in .toml are read as TOML: rename it to pipeline.toml")

    as_toml = tmp_path / "pipeline.toml"
    as_toml.write_text(toml, encoding="utf-8")
    result = check(as_toml)
    assert result.returncode == 0, result.stderr


# --- the run directory --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["under_a_file", "/proc/termigen-run", "/sys/termigen-run"])
def test_an_unusable_out_dir_is_one_line(tmp_path: Path, where: str) -> None:
    config = pipeline(tmp_path)
    if where == "under_a_file":
        (tmp_path / "some_file.txt").write_text("x", encoding="utf-8")
        where = str(tmp_path / "some_file.txt" / "run")
    assert_refused(termigen_run(config, "--out", where), 2, f"cannot create the run directory {where}: ")


# --- exporters ----------------------------------------------------------------------------------


def test_export_paths_of_the_wrong_kind_fail_that_exporter_only(tmp_path: Path) -> None:
    config = pipeline(tmp_path, exports=[
        {"use": "jsonl", "with": {"path": "export/items.jsonl"}},
        {"use": "harbor", "with": {"path": "export/harbor"}},
        {"use": "tb1", "with": {"path": "export/harbor/tb1"}},
        {"use": "sharegpt", "with": {"path": "export/sharegpt.json"}},
        {"use": "jsonl", "with": {"path": "export/ok.jsonl"}},
    ])
    export = tmp_path / "run" / "export"
    (export / "items.jsonl").mkdir(parents=True)
    (export / "sharegpt.json").mkdir()
    (export / "harbor").write_text("not a folder", encoding="utf-8")

    result = termigen_run(config)
    assert_refused(
        result, 1,
        f"exporter jsonl failed: cannot write to {export / 'items.jsonl'}: it is a directory",
        f"exporter harbor failed: cannot write to {export / 'harbor'}: it is a file, and the task folders need a folder",
        f"exporter tb1 failed: cannot write to {export / 'harbor' / 'tb1'}: {export / 'harbor'} is a file, not a folder",
        f"exporter sharegpt failed: cannot write to {export / 'sharegpt.json'}: it is a directory",
        "an exporter failed (see exports)",
    )
    assert len((export / "ok.jsonl").read_text().splitlines()) == 2  # the other exporters still ran
    assert "Traceback" not in (tmp_path / "run" / "run.log").read_text()  # an expected error, not a bug


def test_an_exporter_bug_is_one_console_line_and_a_traceback_in_run_log(tmp_path: Path) -> None:
    plugin = tmp_path / "buggy_exporter.py"
    plugin.write_text(
        "from termigen_core import hookimpl\n"
        "from termigen_core.components import Exporter\n\n"
        "class Buggy(Exporter):\n"
        "    name = 'buggy'\n"
        "    def export(self, items, ctx):\n"
        "        return {}['missing']\n\n"
        "@hookimpl\n"
        "def register_exporters():\n"
        "    return [Buggy]\n",
        encoding="utf-8",
    )
    config = pipeline(tmp_path, exports=[{"use": "buggy"}, {"use": "jsonl"}])
    result = termigen_run(config, "--plugin", str(plugin))
    assert_refused(result, 1, "exporter buggy failed: KeyError: 'missing' (traceback in run.log)")
    log = (tmp_path / "run" / "run.log").read_text()
    assert "Traceback" in log and "return {}['missing']" in log
    assert (tmp_path / "run" / "export" / "items.jsonl").exists()


# --- scripted backend scripts -------------------------------------------------------------------


def test_a_script_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    config = pipeline(tmp_path)
    data = config.read_text(encoding="utf-8").replace("- use: count\n  with:\n    n: 2\n", "- use: count\n  with:\n    n: 2\n- use: ask\n")
    config.write_text(data, encoding="utf-8")
    (tmp_path / "script.yaml").write_text(SCRIPT + '  response: "other"\n', encoding="utf-8")
    assert_refused(termigen_run(config), 2, "invalid YAML: duplicate key 'response' (lines 2 and 3)")
