"""One run-level train_on honoured by every SFT format; exact OpenAI JSONL; typed, loadable files; card and split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jinja2
import pytest
import yaml
from jinja2.ext import Extension
from test_sft_exporters import items, task, trajectory

from termigen_core.components import instantiate
from termigen_core.config import DatasetSection, SplitSection, effective_train_on
from termigen_core.context import ExportContext
from termigen_core.items import Item
from termigen_plugins.exporters.axolotl import AxolotlExporter
from termigen_plugins.exporters.sft import OpenAIJsonlExporter, ParquetExporter, ShareGPTExporter

datasets = pytest.importorskip("datasets")

ALL = (OpenAIJsonlExporter, ShareGPTExporter, ParquetExporter, AxolotlExporter)
#: the fixture's injected-error actions: steps 1 and 2 of every trajectory
ERROR_COMMANDS = {"logcount --level ERROR /app/logs/app.log", "grep -c ERROR /app/logs/old.log > /app/out.txt"}


def run_all(tmp_path: Path, dataset: DatasetSection, extra: list[Item] | None = None) -> dict[str, dict]:
    ctx = ExportContext("run-1", tmp_path, None, None, dataset)  # type: ignore[arg-type]
    return {cls.name: instantiate(cls, {}, tmp_path).export(items() + (extra or []), ctx) for cls in ALL}


def openai_problems(row: dict) -> list[str]:
    """OpenAI fine-tuning rules for one chat line (tools format)."""
    problems = [f"key {k!r} not allowed" for k in row if k not in ("messages", "tools", "parallel_tool_calls")]
    pending: set[str] = set()
    for n, m in enumerate(row["messages"]):
        role = m.get("role")
        allowed = {"system": {"role", "content"}, "user": {"role", "content"},
                   "assistant": {"role", "content", "tool_calls", "weight"}, "tool": {"role", "content", "tool_call_id"}}.get(role)
        if allowed is None:
            problems.append(f"message {n}: role {role!r}")
            continue
        problems += [f"message {n}: key {k!r} on {role}" for k in set(m) - allowed]
        if role == "assistant":
            if m.get("weight") not in (0, 1):
                problems.append(f"message {n}: weight {m.get('weight')!r}")
            for call in m.get("tool_calls") or []:
                if call.get("type") != "function" or not isinstance(call["function"]["arguments"], str):
                    problems.append(f"message {n}: malformed call")
                json.loads(call["function"]["arguments"])
                if not re.fullmatch(r"[A-Za-z0-9]{9}", call["id"]):
                    problems.append(f"message {n}: call id {call['id']!r}")
                pending.add(call["id"])
            if "<tool_call>" in (m.get("content") or ""):
                problems.append(f"message {n}: tool call left in content")
        elif role == "tool":
            if m.get("tool_call_id") not in pending:
                problems.append(f"message {n}: tool_call_id answers no call")
            pending.discard(m.get("tool_call_id"))
    if row["messages"][-1]["role"] != "assistant":
        problems.append("last message is not the assistant's")
    return problems


def masked_commands_openai(rows: list[dict]) -> set[tuple[str, str]]:
    out = set()
    for row, meta in rows:
        for m in row["messages"]:
            if m["role"] == "assistant" and m["weight"] == 0:
                out.add((meta["trajectory_id"], json.loads(m["tool_calls"][0]["function"]["arguments"])["command"]))
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("train_on", ["all", "no_injected_errors"])
def test_every_format_masks_the_same_turns(tmp_path, train_on):
    results = run_all(tmp_path, DatasetSection(train_on=train_on))
    sft = tmp_path / "export/sft"
    assert {r["train_on"] for r in results.values()} == {train_on}
    expected = {(f"t{n}.0", c) for n in range(3) for c in ERROR_COMMANDS} if train_on == "no_injected_errors" else set()

    openai = list(zip(read_jsonl(sft / "openai.jsonl"), read_jsonl(sft / "openai.meta.jsonl")))
    assert masked_commands_openai(openai) == expected

    axolotl = read_jsonl(sft / "axolotl.jsonl")
    masked_ax = {(r["id"], json.loads(m["tool_calls"][0]["function"]["arguments"])["command"])
                 for r in axolotl for m in r["messages"] if m["role"] == "assistant" and not m["train"]}
    assert masked_ax == expected
    assert all(not m["train"] for r in axolotl for m in r["messages"] if m["role"] != "assistant")

    table = datasets.load_dataset("parquet", data_files=str(sft / "trajectories.parquet"), split="train")
    masked_pq = {(r["metadata"]["trajectory_id"], json.loads(m["tool_calls"][0]["function"]["arguments"])["command"])
                 for r in table for m in r["messages"] if m["role"] == "assistant" and m["weight"] == 0}
    assert masked_pq == expected

    # LLaMA-Factory: with mask_history only each example's last turn is trained; masked turns never end one
    sharegpt = json.loads((sft / "sharegpt.json").read_text())
    args = yaml.safe_load((sft / "llamafactory.yaml").read_text())
    assert args["mask_history"] is (train_on == "no_injected_errors")
    if train_on == "no_injected_errors":
        last = {(ex["metadata"]["trajectory_id"], ex["conversations"][-1]["value"]) for ex in sharegpt}
        assert not any(cmd in value for _, value in last for cmd in ERROR_COMMANDS)
        assert len(sharegpt) == 3 * 4  # four kept turns per trajectory
    else:
        assert len(sharegpt) == 3


@pytest.mark.parametrize("agent_format", ["hermes", "tool_calls"])
def test_openai_jsonl_follows_the_fine_tuning_rules_for_both_agent_formats(tmp_path, agent_format):
    record = trajectory("h1.0", pass_ratio=1.0, agent_format=agent_format)
    item = Item(id="h1.0", kind="trajectory", data={"task": task("h1"), "trajectory": record.model_dump()})
    ctx = ExportContext("run-1", tmp_path, None, None, DatasetSection(train_on="no_injected_errors"))  # type: ignore[arg-type]
    summary = instantiate(OpenAIJsonlExporter, {}, tmp_path).export([item], ctx)
    rows = read_jsonl(Path(summary["path"]))
    assert [openai_problems(r) for r in rows] == [[]]
    again = tmp_path / "again"
    instantiate(OpenAIJsonlExporter, {}, again).export([item], ExportContext("run-1", again, None, None, ctx.dataset))  # type: ignore[arg-type]
    assert read_jsonl(again / "export/sft/openai.jsonl") == rows  # ids are reproducible
    meta = read_jsonl(Path(summary["metadata"]["train"]))
    assert meta[0]["id"] == "h1.0" and meta[0]["error_steps"] == [1, 2]


def test_jsonl_and_parquet_load_with_one_schema_per_tool(tmp_path):
    run_all(tmp_path, DatasetSection(train_on="no_injected_errors"))
    sft = tmp_path / "export/sft"
    ax = datasets.load_dataset("json", data_files=str(sft / "axolotl.jsonl"), split="train")
    pq = datasets.load_dataset("parquet", data_files=str(sft / "trajectories.parquet"), split="train")
    for table in (ax, pq):
        tools = table[0]["tools"]
        params = {t["function"]["name"]: json.loads(t["function"]["parameters"]) for t in tools}
        assert set(params["bash"]["properties"]) == {"command"} and set(params["finish"]["properties"]) == {"summary"}
        assert table.features["tools"].feature["function"]["parameters"].dtype == "string"
    assert pq.features["messages"].feature["weight"].dtype == "int8"


class GenerationMarks(Extension):
    """``{% generation %}`` as transformers defines it, marking the trained spans with \x02...\x03."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
        return "\x02" + caller() + "\x03"


def test_trl_template_leaves_masked_turns_outside_generation(tmp_path):
    run_all(tmp_path, DatasetSection(train_on="no_injected_errors"))
    sft = tmp_path / "export/sft"
    env = jinja2.Environment(extensions=[GenerationMarks, "jinja2.ext.loopcontrols"])
    template = env.from_string((sft / "chat_template.jinja").read_text())
    row = datasets.load_dataset("parquet", data_files=str(sft / "trajectories.parquet"), split="train")[0]
    text = template.render(messages=row["messages"], tools=row["tools"], add_generation_prompt=False)
    trained = "".join(re.findall("\x02(.*?)\x03", text, re.DOTALL))
    assert "ls /app/logs" in trained and "cat /app/out.txt" in trained
    for command in ERROR_COMMANDS:
        assert command.replace('"', '\\"') in text and command not in trained
    assert '"parameters": {"properties"' in text  # the JSON-string parameters are inlined, not quoted
    snippet = yaml.safe_load((sft / "axolotl.yaml").read_text())["datasets"][0]
    assert snippet["message_field_training"] == "train" and (sft / snippet["path"]).is_file()


def test_card_front_matter_and_split_by_task(tmp_path):
    extra = []
    for n in range(3, 12):  # several trajectories per task: they must stay together
        for k in range(2):
            record = trajectory(f"t{n}.{k}", pass_ratio=1.0)
            extra.append(Item(id=record.id, kind="trajectory", data={"task": task(f"t{n}"), "trajectory": record.model_dump()}))
    run_all(tmp_path, DatasetSection(train_on="no_injected_errors", split=SplitSection(validation=0.3, seed=1), license="cc-by-4.0"), extra)
    sft = tmp_path / "export/sft"
    text = (sft / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "cc-by-4.0" and "termigen" in front["tags"]
    names = {c["config_name"] for c in front["configs"]}
    # one datasets builder per folder: the JSON formats are its configs, parquet is loaded by file
    assert names == {"openai", "sharegpt", "axolotl"}
    assert {i["config_name"] for i in front["dataset_info"]} == names
    assert 'load_dataset("parquet", data_files={"train": "trajectories.parquet", "validation": "trajectories.validation.parquet"})' in text
    for config in front["configs"]:
        assert {f["split"] for f in config["data_files"]} == {"train", "validation"}
        assert all((sft / f["path"]).is_file() for f in config["data_files"])
        # the folder is a dataset repository: every config and split loads as the card says, and the
        # features the card declares are the ones datasets reads
        declared = next(i for i in front["dataset_info"] if i["config_name"] == config["config_name"])
        for split in ("train", "validation"):
            ds = datasets.load_dataset(str(sft), config["config_name"], split=split, verification_mode="all_checks")
            assert len(ds) > 0
            if "features" in declared:
                assert ds.features == datasets.Features._from_yaml_list(declared["features"])
    assert "features" not in next(i for i in front["dataset_info"] if i["config_name"] == "openai")
    stats = front["termigen"]["exports"]["openai"]
    assert stats["masked_turns"] == 2 * stats["trajectories"] and stats["models"] == ["scripted-demo"]
    train = {r["task_id"] for r in read_jsonl(sft / "openai.meta.jsonl")}
    validation = {r["task_id"] for r in read_jsonl(sft / "openai.validation.meta.jsonl")}
    assert train and validation and not train & validation


def test_sharegpt_template_families(tmp_path):
    ctx = ExportContext("run-1", tmp_path, None, None, DatasetSection())  # type: ignore[arg-type]
    for template, style, tag in [("qwen", "function_call", True), ("llama3", "function_call", False), ("gemma", "text", True)]:
        summary = instantiate(ShareGPTExporter, {"template": template}, tmp_path).export(items(), ctx)
        assert summary["call_style"] == style
        example = json.loads(Path(summary["path"]).read_text())[0]
        assert ("<tool_call>" in example["system"]) is tag, template
        assert (example["tools"] == "") is (style == "text")
    with pytest.raises(ValueError, match="crashes on function_call"):
        instantiate(ShareGPTExporter, {"template": "mistral", "call_style": "function_call"}, tmp_path)


def test_legacy_zero_weight_errors_is_folded_or_refused():
    assert effective_train_on(None, True) == "no_injected_errors"
    assert effective_train_on(None, None) == "all"
    with pytest.raises(ValueError, match="contradicts dataset.train_on: all"):
        effective_train_on("all", True, "openai_jsonl: ")


def test_config_check_folds_or_refuses_zero_weight_errors(tmp_path):
    """The real CLI: a legacy flag alone is accepted; one contradicting dataset.train_on is one clear line."""
    from helpers import TEST_PLUGIN, run_cli

    (tmp_path / "script.yaml").write_text('- role: worker\n  response: "fine"\n')
    base = ("version: 1\nrun: {out: run}\nstages:\n  - use: count\n    with: {n: 2}\n"
            "llm:\n  default: {backend: scripted, script: script.yaml}\n")
    legacy = "exports:\n  - {use: openai_jsonl, with: {zero_weight_errors: true}}\n  - {use: axolotl}\n"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(base + legacy)
    bad.write_text(base + "dataset: {train_on: all}\n" + legacy)
    ok = run_cli("config", "check", str(good), "--plugin", str(TEST_PLUGIN), timeout=60)
    assert ok.returncode == 0, ok.stderr
    refused = run_cli("config", "check", str(bad), "--plugin", str(TEST_PLUGIN), timeout=60)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "exports[0].with.zero_weight_errors" in refused.stderr + refused.stdout
    assert "contradicts dataset.train_on: all" in refused.stderr + refused.stdout
