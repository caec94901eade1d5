"""The taxonomy data, the seed sources, the five error modes and the jsonl exporter."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from termigen_core.errors import ConfigError, ParseError
from termigen_core.items import Item
from termigen_core.plugins import build_plugin_host
from termigen_core.store import RunStore
from termigen_plugins.exporters.jsonl import JsonlExporter
from termigen_plugins.seed_sources.file_seeds import FileSeedSource, SeedFileError, read_seed_file
from termigen_plugins.taxonomy_builtin import (
    DEFAULT_PROMPT,
    TaxonomySeedSource,
    load_taxonomy,
    parse_seeds,
    render_prompt,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = ROOT / "examples" / "termigen-example-plugin"
MODES = ("analysis", "command", "hallucination", "requirement_violation", "verification_failure")


# --- taxonomy ----------------------------------------------------------------------


def test_builtin_taxonomy_matches_the_paper():
    tax = load_taxonomy("builtin")
    assert len(tax.categories) == 11
    assert sorted({c.tier for c in tax.categories}) == [1, 2, 3]
    assert sorted(tax.tiers) == [1, 2, 3]
    assert [sum(c.tier == t for c in tax.categories) for t in (1, 2, 3)] == [3, 3, 5]
    ids = tax.ids()
    assert len(set(ids)) == len(ids)
    assert "software_build" in ids
    for c in tax.categories:
        assert c.name and c.goal and c.skills and c.tools
        assert 3 <= len(c.example_seeds) <= 5, c.id
        assert all(len(seed) <= 120 for seed in c.example_seeds)
    assert "Resolving gcc -l library not found errors" in tax.category("software_build").example_seeds


def _user_taxonomy(tmp_path: Path, categories: list[dict], name: str = "tax.yaml") -> Path:
    path = tmp_path / name
    data = {"version": 1, "name": "mine", "categories": categories}
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data), encoding="utf-8")
    return path


def _cat(cid: str, tier: int = 1, **extra) -> dict:
    return {"id": cid, "name": cid.title(), "tier": tier, "goal": "Do things.", **extra}


def test_user_taxonomy_loads_from_yaml_and_json(tmp_path):
    for name in ("t.yaml", "t.json"):
        tax = load_taxonomy(_user_taxonomy(tmp_path, [_cat("a"), _cat("b", 2)], name))
        assert tax.ids() == ["a", "b"] and tax.name == "mine"


def test_malformed_taxonomy_names_the_bad_field(tmp_path):
    cats = [_cat("a"), _cat("b"), _cat("c"), _cat("d", tier="high"), _cat("e", tools="gcc")]
    cats[1].pop("goal")
    cats[2]["colour"] = "red"
    with pytest.raises(ConfigError) as err:
        load_taxonomy(_user_taxonomy(tmp_path, cats))
    message = str(err.value)
    assert "categories[3].tier:" in message
    assert "categories[1].goal:" in message
    assert "categories[2].colour:" in message
    assert "categories[4].tools:" in message
    assert str(tmp_path / "tax.yaml") in message


def test_duplicate_ids_and_undeclared_tiers_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate category id 'a' at categories\[2\]\.id"):
        load_taxonomy(_user_taxonomy(tmp_path, [_cat("a"), _cat("b"), _cat("a")]))
    path = tmp_path / "tiers.yaml"
    path.write_text(yaml.safe_dump({"tiers": {1: "low"}, "categories": [_cat("a"), _cat("b", 4)]}))
    with pytest.raises(ConfigError, match=r"categories\[1\]\.tier: tier 4 is not declared"):
        load_taxonomy(path)


def test_missing_or_unparsable_taxonomy_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_taxonomy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        load_taxonomy(bad)


# --- taxonomy seed source --------------------------------------------------------------


def test_seed_parser_accepts_good_replies():
    assert parse_seeds('{"seeds": ["Fix a linker error", "  Tune   nginx  ", ""]}') == [
        "Fix a linker error",
        "Tune nginx",
    ]
    fenced = 'Here you go:\n```json\n{"seeds": ["A", "a", "B"]}\n```'
    assert parse_seeds(fenced) == ["A", "B"]  # case-insensitive duplicates dropped
    assert parse_seeds('["bare", "list"]') == ["bare", "list"]


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("no json here", "no JSON"),
        ('{"ideas": ["x"]}', "seeds"),
        ('{"seeds": "one string"}', "seeds"),
        ('{"seeds": ["ok", 3]}', r"seeds\[1\] is int"),
        ('{"seeds": ["", "   "]}', "no non-empty seeds"),
        ('{"seeds": ["' + "x" * 301 + '"]}', r"seeds\[0\] has 301 characters"),
    ],
)
def test_seed_parser_rejects_bad_replies(reply, problem):
    with pytest.raises(ParseError, match=problem):
        parse_seeds(reply)


def test_seed_prompt_mentions_the_category_and_the_answer_shape():
    tax = load_taxonomy("builtin")
    prompt = render_prompt(DEFAULT_PROMPT.read_text(), tax.category("machine_learning"), tax, 7)
    assert "Machine Learning & MLOps" in prompt and "Write 7 distinct" in prompt
    assert "pytorch" in prompt and "Resolving CUDA out-of-memory errors" in prompt
    assert '{"seeds": [' in prompt and "$" not in prompt


class _FakeClient:
    """Stands in for ctx.llm("seeder"): records prompts, parses canned replies."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    def ask(self, prompt, parse):
        from termigen_core.llm import Parsed

        self.prompts.append(prompt)
        return Parsed(parse(self.reply), self.reply, 0)


class _FakeCtx:
    draw = 0  # the first draw of the source stage (a campaign's later draws are tested in test_campaign.py)

    def __init__(self, client: _FakeClient, config_dir: Path) -> None:
        self.client, self.config_dir, self.messages = client, config_dir, []

    def llm(self, role: str) -> _FakeClient:
        assert role == "seeder"
        return self.client

    def resolve_path(self, path):
        p = Path(path)
        return p if p.is_absolute() else self.config_dir / p

    def log(self, message, *args):
        self.messages.append(message % args)


def test_taxonomy_seed_source_asks_once_per_category_and_truncates(tmp_path):
    client = _FakeClient('{"seeds": ["one", "two", "three"]}')
    source = TaxonomySeedSource(TaxonomySeedSource.Config(per_category=2, categories=["algorithms", "system_admin"]))
    seeds = list(source.seeds(_FakeCtx(client, tmp_path)))
    assert len(client.prompts) == 2
    assert [s["text"] for s in seeds] == ["one", "two", "one", "two"]
    assert seeds[0] == {"text": "one", "category": "algorithms", "category_name": "Algorithms & Logic Puzzles", "tier": 2}
    assert seeds[2]["category"] == "system_admin" and seeds[2]["tier"] == 1


def test_taxonomy_seed_source_user_file_relative_to_config_and_unknown_ids(tmp_path):
    _user_taxonomy(tmp_path, [_cat("alpha"), _cat("beta", 2)])
    ctx = _FakeCtx(_FakeClient('{"seeds": ["s"]}'), tmp_path)
    source = TaxonomySeedSource(TaxonomySeedSource.Config(taxonomy="tax.yaml", per_category=1))
    assert [s["category"] for s in source.seeds(ctx)] == ["alpha", "beta"]
    wrong = TaxonomySeedSource(TaxonomySeedSource.Config(taxonomy="tax.yaml", categories=["alpah"]))
    with pytest.raises(ConfigError) as err:
        list(wrong.seeds(ctx))
    message = str(err.value)
    assert "categories: unknown category id(s) 'alpah' (did you mean 'alpha'?); valid ids: alpha, beta" in message
    assert "tax.yaml" in message


def test_taxonomy_seed_source_custom_prompt_template(tmp_path):
    (tmp_path / "p.txt").write_text("Give $count seeds about $category_name. JSON {\"seeds\": [...]}")
    client = _FakeClient('{"seeds": ["x"]}')
    source = TaxonomySeedSource(
        TaxonomySeedSource.Config(prompt=tmp_path / "p.txt", categories=["software_build"], per_category=3)
    )
    list(source.seeds(_FakeCtx(client, tmp_path)))
    assert client.prompts == ['Give 3 seeds about Software Build & Compilation. JSON {"seeds": [...]}']
    (tmp_path / "bad.txt").write_text("Give $cuont seeds")
    bad = TaxonomySeedSource(TaxonomySeedSource.Config(prompt=tmp_path / "bad.txt"))
    with pytest.raises(ConfigError, match="placeholder"):
        list(bad.seeds(_FakeCtx(client, tmp_path)))


def test_taxonomy_seed_source_config_is_strict():
    with pytest.raises(ValidationError):
        TaxonomySeedSource.Config(per_category=0)
    with pytest.raises(ValidationError):
        TaxonomySeedSource.Config(per_categroy=3)
    # builtin ids are known without any file: a typo fails when the config is validated
    with pytest.raises(ValidationError, match=r"'sofware_build' \(did you mean 'software_build'\?\)"):
        TaxonomySeedSource.Config(categories=["algorithms", "sofware_build"])
    # a user taxonomy's ids can only be checked at run time (its file is relative to the config)
    assert TaxonomySeedSource.Config(taxonomy="mine.yaml", categories=["anything"]).categories == ["anything"]


# --- error modes -------------------------------------------------------------------------


@pytest.mark.parametrize("module_name", MODES)
def test_error_mode_modules(module_name):
    module = importlib.import_module(f"termigen_plugins.error_modes.{module_name}")
    (cls,) = module.register_error_modes()
    assert cls.name == module_name and cls.kind == "error_mode"
    assert cls.description and cls.weight == 1.0
    assert len(cls.instruction) > 200 and len(cls.critic_checklist) > 200
    assert 2 <= len(cls.examples) <= 3 and all(cls.examples)
    # the shared rules reach every mode: informative feedback, nothing irreversible
    assert "recoverable" in cls.instruction and "Feedback" in cls.critic_checklist
    assert cls.summary()


def test_builtin_plugins_register_through_the_plugin_host(monkeypatch):
    modules = [f"termigen_plugins.error_modes.{m}" for m in MODES] + [
        "termigen_plugins.taxonomy_builtin",
        "termigen_plugins.seed_sources.file_seeds",
        "termigen_plugins.exporters.jsonl",
    ]
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    host = build_plugin_host(builtins=modules, entrypoints=False, cli_plugins=["termigen_example_plugin"], environ={})
    assert not host.failures
    registry = host.registry
    assert registry.names("error_mode") == sorted([*MODES, "off_by_one_path"])
    assert registry.names("seed_source") == ["file", "taxonomy"]
    assert registry.names("exporter") == ["jsonl", "markdown_report"]


# --- file seed source ----------------------------------------------------------------------


def test_file_seeds_txt_jsonl_yaml(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("# my seeds\nFix a linker error\n\n  Tune nginx keepalive  \n")
    assert read_seed_file(txt, "misc") == [
        {"text": "Fix a linker error", "category": "misc", "tier": None},
        {"text": "Tune nginx keepalive", "category": "misc", "tier": None},
    ]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"text": "A", "category": "software_build", "tier": 1}\n\n{"text": "B"}\n')
    assert read_seed_file(jsonl) == [
        {"text": "A", "category": "software_build", "tier": 1},
        {"text": "B", "category": "uncategorized", "tier": None},
    ]
    yml = tmp_path / "s.yaml"
    yml.write_text(yaml.safe_dump(["plain seed", {"text": "obj seed", "category": "algorithms"}]))
    assert read_seed_file(yml) == [
        {"text": "plain seed", "category": "uncategorized", "tier": None},
        {"text": "obj seed", "category": "algorithms", "tier": None},
    ]


def test_file_seed_source_resolves_relative_path(tmp_path):
    (tmp_path / "seeds.txt").write_text("one\ntwo\n")
    source = FileSeedSource(FileSeedSource.Config(path=Path("seeds.txt"), category="x"))
    seeds = list(source.seeds(_FakeCtx(_FakeClient(""), tmp_path)))
    assert [s["text"] for s in seeds] == ["one", "two"] and seeds[0]["category"] == "x"


def test_file_seeds_report_bad_lines_with_numbers(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"text": "broken"\n["a list"]\n{"txt": "typo"}\n')
    with pytest.raises(SeedFileError) as err:
        read_seed_file(jsonl)
    message = str(err.value)
    assert "3 bad entries" in message
    assert "line 2: invalid JSON" in message
    assert "line 3: expected a JSON object" in message
    assert "line 4:" in message and "text" in message and "txt" in message
    with pytest.raises(SeedFileError, match="not found"):
        read_seed_file(tmp_path / "missing.txt")
    with pytest.raises(SeedFileError, match="unsupported type"):
        read_seed_file(tmp_path / "seeds.csv")
    yml = tmp_path / "bad.yaml"
    yml.write_text(yaml.safe_dump(["fine", {"text": ""}]))
    with pytest.raises(SeedFileError, match=r"\[1\]: text"):
        read_seed_file(yml)


# --- exporters ---------------------------------------------------------------------------------


def _export_ctx(tmp_path: Path):
    from termigen_core.context import ExportContext

    run_dir = tmp_path / "run"
    return ExportContext(run_id="r1", run_dir=run_dir, store=RunStore(run_dir), registry=None)  # type: ignore[arg-type]


ITEMS = [
    Item(id="software_build-1", kind="seed", data={"text": "Fix ld | errors", "category": "software_build"}),
    Item(id="t1", kind="task", data={"title": "Täsk"}, parent="software_build-1", meta={"status": "validated"}),
]


def test_jsonl_exporter_writes_items_atomically(tmp_path):
    ctx = _export_ctx(tmp_path)
    summary = JsonlExporter().export(ITEMS, ctx)
    path = ctx.run_dir / "export" / "items.jsonl"
    assert summary == {"path": str(path), "count": 2}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows[1] == {"id": "t1", "kind": "task", "data": {"title": "Täsk"}, "meta": {"status": "validated"}, "parent": "software_build-1"}
    assert [p.name for p in path.parent.iterdir()] == ["items.jsonl"]  # no temp file left behind

    only = JsonlExporter(JsonlExporter.Config(path=str(tmp_path / "abs.jsonl"), kinds=["task"])).export(ITEMS, ctx)
    assert only["count"] == 1
    assert json.loads((tmp_path / "abs.jsonl").read_text())["id"] == "t1"


def test_example_plugin_markdown_report(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    sys.modules.pop("termigen_example_plugin", None)
    plugin = importlib.import_module("termigen_example_plugin")
    ctx = _export_ctx(tmp_path)
    summary = plugin.MarkdownReport().export(ITEMS, ctx)
    text = Path(summary["path"]).read_text(encoding="utf-8")
    assert "| id | kind | category | status / summary |" in text
    assert "| software_build-1 | seed | software_build | Fix ld \\| errors |" in text
    assert "| t1 | task |  | validated: Täsk |" in text
    (mode,) = plugin.register_error_modes()
    assert mode.name == "off_by_one_path" and mode.instruction and mode.critic_checklist
