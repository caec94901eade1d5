"""The example third-party package, pip-installed for real, seen and used through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, TEST_PLUGIN, run_cli, write_yaml

PACKAGE = ROOT / "examples" / "termigen-example-plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    # installed from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds
    source = tmp_path_factory.mktemp("example") / PACKAGE.name
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    result = subprocess.run([*pip, "install", "--no-deps", str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "termigen-example-plugin"], capture_output=True, text=True, timeout=300)


def test_example_plugin_is_listed_with_its_distribution(installed_example):
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    example = next(p for p in data["plugins"] if p["name"] == "example")
    assert example["source"] == "entrypoint"
    assert example["distribution"] == "termigen-example-plugin" and example["version"] == "0.1.0"
    assert example["provides"] == {"error_mode": ["off_by_one_path"], "exporter": ["markdown_report"]}
    modes = run_cli("components", "error_mode")
    assert "off_by_one_path" in modes.stdout
    hidden = json.loads(run_cli("plugins", "--json", "--disable-plugin", "example").stdout)
    assert all(p["name"] != "example" for p in hidden["plugins"])


def test_example_exporter_is_used_in_a_run(installed_example, tmp_path):
    (tmp_path / "script.yaml").write_text('- role: worker\n  response: "fine"\n', encoding="utf-8")
    config = write_yaml(tmp_path / "p.yaml", {
        "version": 1,
        "run": {"out": str(tmp_path / "run")},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "count", "with": {"n": 3}}, {"use": "ask"}],
        "exports": [{"use": "markdown_report", "with": {"path": "export/report.md"}}],
    })
    result = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "run" / "export" / "report.md").read_text()
    assert "| item-000 |" in report and "| item-002 |" in report
