"""Config files: both validation passes, located errors, hints, secrets, overrides, safety."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from helpers import TEST_PLUGIN, run_cli, write_yaml
from termigen_core.config import apply_override, load_pipeline, load_user_defaults
from termigen_core.errors import ConfigError
from termigen_core.plugins import build_plugin_host


@pytest.fixture(scope="module")
def registry():
    return build_plugin_host(cli_plugins=[str(TEST_PLUGIN)], entrypoints=False, environ={}).registry


def base_config(**extra):
    config = {
        "version": 1,
        "run": {"out": "runs/t"},
        "llm": {"default": {"backend": "scripted", "model": "scripted", "script": "script.yaml"}},
        "stages": [{"use": "count", "with": {"n": 3}}, {"use": "ask"}],
        "exports": [{"use": "jsonl"}],
    }
    config.update(extra)
    return config


def problems(exc: ConfigError) -> list[str]:
    return [str(issue) for issue in exc.issues]


def test_valid_config_resolves_components_and_relative_paths(tmp_path, registry):
    cfg = write_yaml(tmp_path / "p.yaml", base_config())
    pipeline = load_pipeline(cfg, registry, environ={})
    assert [cls.name for cls, _ in pipeline.stages] == ["count", "ask"]
    assert pipeline.stages[0][1].n == 3
    assert pipeline.config_dir == tmp_path


def test_every_error_is_reported_at_once_with_its_path(tmp_path, registry):
    data = base_config()
    data["stages"] = [
        {"use": "count", "with": {"n": "many"}},
        {"use": "ask", "with": {"sleep_s": 0, "fail_itemz": []}},
        {"use": "propse"},
    ]
    data["run"]["concurency"] = 3
    data["exports"] = [{"use": "jsonl", "with": {"path": 5}}]
    cfg = write_yaml(tmp_path / "p.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_pipeline(cfg, registry, environ={})
    found = problems(info.value)
    # pass one stops at shape errors; fix the shape, then see the component errors
    assert any(p.startswith("run.concurency: unknown key (did you mean 'concurrency'?)") for p in found), found

    del data["run"]["concurency"]
    cfg = write_yaml(tmp_path / "p.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_pipeline(cfg, registry, environ={})
    found = problems(info.value)
    assert "stages[0].with.n: Input should be a valid integer, unable to parse string as an integer" in found
    assert "stages[1].with.fail_itemz: unknown key (did you mean 'fail_items'?)" in found
    assert any(p.startswith("stages[2].use: no stage named 'propse' (did you mean 'propose'?)") for p in found), found
    assert "exports[0].with.path: Input should be a valid string" in found
    assert len(found) == 4


def test_source_stage_order_is_checked(tmp_path, registry):
    data = base_config(stages=[{"use": "ask"}, {"use": "count"}])
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(tmp_path / "p.yaml", data), registry, environ={})
    found = problems(info.value)
    assert any(p.startswith("stages[0].use: stage 'ask' cannot start a pipeline") for p in found)
    assert any(p.startswith("stages[1].use: stage 'count' starts a pipeline") for p in found)


def test_llm_role_and_backend_errors(tmp_path, registry):
    data = base_config()
    data["llm"]["roles"] = {"workr": {"temperature": 0.2}, "worker": {"backend": "litelm"}}
    data["llm"]["default"]["scrpt"] = "x.yaml"
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(tmp_path / "p.yaml", data), registry, environ={})
    found = problems(info.value)
    assert any(p.startswith("llm.roles.workr: no configured stage uses the role 'workr' (did you mean 'worker'?)") for p in found), found
    assert any(p.startswith("llm.roles.worker.backend: no LLM backend named 'litelm' (did you mean 'litellm'?)") for p in found), found
    assert any(p.startswith("llm.default.scrpt: unknown key for backend 'scripted' (did you mean 'script'?)") for p in found), found


def test_backend_options_live_under_llm_backends_so_a_switch_is_valid(tmp_path, registry):
    data = base_config()
    data["llm"] = {"default": {"backend": "scripted", "model": "m"}, "backends": {"scripted": {"script": "script.yaml"}}}
    path = write_yaml(tmp_path / "p.yaml", data)
    pipeline = load_pipeline(path, registry, environ={})
    assert pipeline.config.llm.backends["scripted"] == {"script": "script.yaml"} and pipeline.notes == []
    switched = load_pipeline(path, registry, environ={}, overrides=["llm.default.backend=litellm", "llm.default.model=openai/x"])
    assert switched.config.llm.default.backend == "litellm" and switched.notes == []


def test_a_switch_drops_the_other_backends_inline_options_with_a_note(tmp_path, registry):
    path = write_yaml(tmp_path / "p.yaml", base_config())  # script: inline on llm.default
    pipeline = load_pipeline(path, registry, environ={}, overrides=["llm.default.backend=litellm", "llm.default.model=openai/x"])
    assert pipeline.config.llm.default.backend_options() == {}
    [note] = pipeline.notes
    assert note.startswith("llm.default.script: ignored: it is an option of backend 'scripted' and this role uses 'litellm'")
    result = run_cli("config", "check", str(path), "--plugin", str(TEST_PLUGIN), "-s", "llm.default.backend=litellm",
                     "-s", "llm.default.model=openai/x")
    assert result.returncode == 0, result.stderr
    assert "note: llm.default.script: ignored" in result.stderr


def test_llm_backends_section_errors_have_paths(tmp_path, registry):
    data = base_config()
    data["llm"] = {"default": {"backend": "scripted"},
                   "backends": {"scripted": {"scrpt": "s.yaml"}, "litelm": {}, "litellm": {"api_base": 3}}}
    data["llm"]["roles"] = {"worker": {"backend": "litellm", "model": "openai/x"}}
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(tmp_path / "p.yaml", data), registry, environ={})
    found = problems(info.value)
    assert "llm.backends.scripted.scrpt: unknown key for backend 'scripted' (did you mean 'script'?)" in found, found
    assert any(p.startswith("llm.backends.litelm: no LLM backend named 'litelm' (did you mean 'litellm'?)") for p in found), found
    assert any(p.startswith("llm.default.script: required by backend 'scripted'") for p in found), found
    assert any(p.startswith("llm.backends.litellm.api_base:") for p in found), found


def test_env_secrets_resolve_and_missing_ones_are_errors(tmp_path, registry):
    data = base_config()
    data["llm"]["default"] = {"backend": "litellm", "model": "openai/x", "api_key": {"$env": "MY_TEST_KEY"}}
    cfg = write_yaml(tmp_path / "p.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_pipeline(cfg, registry, environ={})
    assert problems(info.value) == ["llm.default.api_key: environment variable MY_TEST_KEY is not set"]
    pipeline = load_pipeline(cfg, registry, environ={"MY_TEST_KEY": "sk-very-secret"})
    key = pipeline.config.llm.default.backend_options()["api_key"]
    assert isinstance(key, SecretStr) and key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in str(pipeline.redacted())
    assert pipeline.redacted()["llm"]["default"]["api_key"] == {"$env": "MY_TEST_KEY"}


def test_overrides_with_dots_indexes_and_yaml_values(tmp_path, registry):
    data = base_config()
    apply_override(data, "run.concurrency=7")
    apply_override(data, "stages[0].with.n=9")
    apply_override(data, "stages.1.with.fail_items=[a, b]")
    apply_override(data, "llm.default.model=anthropic/claude-sonnet-4-5")
    assert data["run"]["concurrency"] == 7
    assert data["stages"][0]["with"]["n"] == 9
    assert data["stages"][1]["with"]["fail_items"] == ["a", "b"]
    assert data["llm"]["default"]["model"] == "anthropic/claude-sonnet-4-5"
    with pytest.raises(ConfigError, match="no list entry 5"):
        apply_override(data, "stages[5].use=x")
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        apply_override(data, "run.seed")


def test_toml_configs_work(tmp_path, registry):
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        'version = 1\n[run]\nout = "runs/x"\n[llm.default]\nbackend = "scripted"\nscript = "s.yaml"\n'
        '[[stages]]\nuse = "count"\n[stages.with]\nn = 2\n[[stages]]\nuse = "ask"\n',
        encoding="utf-8",
    )
    pipeline = load_pipeline(cfg, registry, environ={})
    assert pipeline.stages[0][1].n == 2


def test_a_config_cannot_construct_python_objects(tmp_path, registry):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "version: 1\nstages:\n  - use: !!python/object/apply:os.system ['touch " + str(marker) + "']\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(cfg, registry, environ={})
    assert not marker.exists()


def test_a_config_cannot_name_import_paths(tmp_path, registry):
    data = base_config(stages=[{"use": "os:system"}, {"use": "ask"}])
    with pytest.raises(ConfigError) as info:
        load_pipeline(write_yaml(tmp_path / "p.yaml", data), registry, environ={})
    assert any(p.startswith("stages[0].use: no stage named 'os:system'") for p in problems(info.value))


def test_malformed_yaml_reports_line(tmp_path, registry):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("version: 1\nstages: [\n  - use: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+"):
        load_pipeline(cfg, registry, environ={})


def test_user_defaults_are_merged_under_the_pipeline(tmp_path, registry):
    user = tmp_path / "user.toml"
    user.write_text('[llm.default]\ntemperature = 0.3\nmodel = "from-user"\n', encoding="utf-8")
    defaults = load_user_defaults(user)
    data = base_config()
    pipeline = load_pipeline(write_yaml(tmp_path / "p.yaml", data), registry, user_defaults=defaults, environ={})
    assert pipeline.config.llm.default.temperature == 0.3
    assert pipeline.config.llm.default.model == "scripted"  # the pipeline wins
    bad = tmp_path / "bad.toml"
    bad.write_text("[lm]\nx = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="did you mean 'llm'"):
        load_user_defaults(bad)


def test_cli_config_check_reports_all_problems(tmp_path):
    data = base_config(stages=[{"use": "count", "with": {"n": "x"}}, {"use": "ask", "with": {"calls": -1}}])
    cfg = write_yaml(tmp_path / "p.yaml", data)
    result = run_cli("config", "check", str(cfg), "--plugin", str(TEST_PLUGIN))
    assert result.returncode == 2, result.stderr
    assert "stages[0].with.n: Input should be a valid integer" in result.stderr
    assert "stages[1].with.calls: Input should be greater than or equal to 0" in result.stderr
    assert "Traceback" not in result.stderr
    ok = write_yaml(tmp_path / "ok.yaml", base_config())
    result = run_cli("config", "check", str(ok), "--plugin", str(TEST_PLUGIN), "-s", "stages[0].with.n=4")
    assert result.returncode == 0, result.stderr
    assert "ok (2 stages: count, ask; 1 exports)" in result.stdout


def test_cli_config_schema_lists_installed_components():
    import json

    result = run_cli("config", "schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    stage_names = {v["properties"]["use"]["const"] for v in schema["properties"]["stages"]["items"]["anyOf"]}
    assert {"seeds", "propose"} <= stage_names
    assert "stage.propose" in schema["$defs"]
