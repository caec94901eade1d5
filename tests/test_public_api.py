"""The public API for plugin authors: names importable from ``termigen_core``, and ``termigen_core.testing``."""

from __future__ import annotations

import re
import subprocess
import sys

import termigen_core
from helpers import ROOT
from termigen_core import Item
from termigen_core.testing import stage_context

EXAMPLE = ROOT / "examples" / "termigen-example-plugin"


def test_every_public_name_resolves_and_import_stays_cheap():
    for name in termigen_core.__all__:
        assert getattr(termigen_core, name) is not None, name
    code = "import sys, termigen_core; from termigen_core import hookimpl; print(sorted(m for m in ('pydantic', 'yaml', 'litellm', 'docker') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_example_plugin_uses_only_the_public_api():
    source = (EXAMPLE / "termigen_example_plugin" / "__init__.py").read_text(encoding="utf-8")
    imported = set(re.findall(r"^\s*from (termigen_core[\w.]*) import", source, re.MULTILINE))
    assert imported == {"termigen_core"}, imported


def test_the_plugin_guides_test_recipe_runs(tmp_path, monkeypatch):
    """The guide's exporter test, executed as written (docs cannot rot)."""
    guide = (ROOT / "docs" / "plugin-guide.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*Components directly\.\*\*.*?```python\n(.*?)```", guide, re.DOTALL)
    assert block is not None
    monkeypatch.syspath_prepend(str(EXAMPLE))
    namespace: dict = {}
    exec(compile(block.group(1), "plugin-guide.md", "exec"), namespace)  # noqa: S102 - our own documentation
    namespace["test_markdown_report"](tmp_path)


def test_stage_context_runs_a_stage_through_the_real_llm_path(tmp_path):
    from termigen_plugins.stages.propose import ProposeStage

    spec = {"title": "Count log lines", "objective": "Count the lines of /app/app.log into /app/count.txt.",
            "success_criteria": ["count.txt holds the number"], "difficulty": "easy"}
    ctx = stage_context(tmp_path / "run", stage="propose", script=[
        {"role": "proposer", "json": spec},
        {"role": "evaluator", "json": {"environment_complexity": 4, "data_generatability": 5, "verification_determinism": 5}},
    ])
    out = ProposeStage().process(Item(id="s1", kind="seed", data={"text": "count log lines", "category": "data_processing"}), ctx)
    assert out.kind == "spec" and out.data["spec"]["title"] == "Count log lines"
    assert [row["role"] for row in ctx.store.llm_calls()] == ["proposer", "evaluator"]  # recorded in the ledger
