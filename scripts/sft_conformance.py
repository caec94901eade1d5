"""SFT conformance checks, run inside each trainer's own venv by scripts/sft_conformance.sh.

Each subcommand prints one result row per line, ``SFTCONF {"trainer", "version", "template",
"loads", "trains", "masks", "detail"}`` (a cell is true, false, or null when not tested).
The expected mask comes from the export itself (``weight`` in openai.jsonl, per trajectory):
a kept assistant turn must carry labels, a masked one (an injected error) must not. Nothing
is downloaded: the tokenizer is trained here with ``tokenizers`` and the model is a random
tiny ``LlamaConfig`` so that one real optimiser step runs on CPU in seconds.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

IGNORE = -100
MARK = "SFTCONF "  # result lines start with this: the trainers print examples (JSON too) to stdout
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",  # ChatML (qwen, the shipped TRL template)
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",  # llama3
    "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_CALLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]",  # mistral
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<pad>",  # gemma
]


def row(trainer: str, version: str, template: str, loads: bool | None, trains: bool | None, masks: bool | None, detail: str) -> None:
    """One matrix cell group, as a JSON line the driver collects."""
    print(MARK + json.dumps({"trainer": trainer, "version": version, "template": template, "loads": loads,
                      "trains": trains, "masks": masks, "detail": detail}), flush=True)


def expected_kept(sft: Path) -> dict[str, list[bool]]:
    """Per trajectory: for each assistant turn in order, whether it is trained (weight != 0)."""
    meta = [json.loads(line) for line in (sft / "openai.meta.jsonl").read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in (sft / "openai.jsonl").read_text().splitlines() if line.strip()]
    return {m["trajectory_id"]: [m_.get("weight", 1) != 0 for m_ in r["messages"] if m_["role"] == "assistant"]
            for m, r in zip(meta, rows)}


def workdir(prefix: str) -> Path:
    """A scratch folder for the tokenizer, the tiny model and the trainer's output, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_tokenizer(sft: Path, out: Path) -> Any:
    """A byte-level BPE tokenizer trained on the export's own text, with every template's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [p.read_text() for p in sorted(sft.rglob("*")) if p.suffix in (".json", ".jsonl", ".jinja")]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=[s for s in SPECIALS if s not in ("<s>", "<|im_end|>", "<|endoftext|>")])
    fast.save_pretrained(out)
    return fast


def make_model(tokenizer: Any, out: Path) -> Any:
    """A random 2-layer Llama: enough for a real forward/backward/optimiser step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16384,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return model


def cmd_datasets(args: argparse.Namespace) -> None:
    """Load every JSONL/parquet with this venv's datasets; a loaded row must equal the file's row."""
    import datasets
    import pyarrow.parquet as pq

    for path in sorted(args.sft.rglob("*")):
        if path.suffix not in (".jsonl", ".parquet"):
            continue
        kind = "parquet" if path.suffix == ".parquet" else "json"
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # noqa: BLE001 - the cell records why
            row("datasets", datasets.__version__, path.name, False, None, None, f"{type(exc).__name__}: {exc}"[:300])
            continue
        source = pq.read_table(path).to_pylist() if kind == "parquet" else [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        merged = sorted({d for a, b in zip(source, ds.to_list()) for d in added_keys(a, b)})
        # null-filled message keys (tool_calls on a user turn) are read as absent by chat templates;
        # keys merged into a tool's parameters change the tool schema the model is shown
        tools = [k for k in merged if k.startswith(".tools")]
        row("datasets", datasets.__version__, path.name, len(ds) == len(source) and not tools, None, None,
            f"{len(ds)} rows" + (f"; schema merge added null keys: {', '.join(merged[:6])}" if merged else "; rows identical"))
    card_repository(args.sft)


def card_repository(sft: Path) -> None:
    """The folder as a dataset repository: every config of its card loads, with the features it declares."""
    import datasets
    import yaml

    readme = sft / "README.md"
    if not readme.is_file():
        return
    front = yaml.safe_load(readme.read_text(encoding="utf-8").split("---\n")[1])
    declared = {i["config_name"]: i for i in front.get("dataset_info", [])}
    for config in front.get("configs", []):
        name = config["config_name"]
        try:
            ds = datasets.load_dataset(str(sft), name, split="train", verification_mode="all_checks")
        except Exception as exc:  # noqa: BLE001 - the cell records why
            row("datasets", datasets.__version__, f"README.md config {name}", False, None, None, f"{type(exc).__name__}: {exc}"[:300])
            continue
        features = declared.get(name, {}).get("features")
        same = features is None or ds.features == datasets.Features._from_yaml_list(features)
        row("datasets", datasets.__version__, f"README.md config {name}", same, None, None,
            f"{len(ds)} rows; " + ("features as declared" if features else "no features declared"))


def added_keys(src: Any, loaded: Any, where: str = "") -> list[str]:
    """Keys present (as null) in the loaded row but absent from the file: a datasets schema merge."""
    if isinstance(src, dict) and isinstance(loaded, dict):
        out = [f"{where}.{k}" for k in loaded if k not in src and loaded[k] is None]
        return out + [x for k in src if k in loaded for x in added_keys(src[k], loaded[k], f"{where}.{k}")]
    if isinstance(src, list) and isinstance(loaded, list):
        return [x for a, b in zip(src, loaded) for x in added_keys(a, b, f"{where}[]")]
    return []


def cmd_llamafactory(args: argparse.Namespace) -> None:
    """LLaMA-Factory's get_dataset (converter, template, supervised processor) on the ShareGPT export."""
    import importlib.machinery
    import types

    # llamafactory.data imports torchaudio at module level; no torchaudio wheel matches this
    # torch, and the text pipeline never calls it, so an empty module stands in.
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules.setdefault("torchaudio", stub)
    import llamafactory
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.data_utils import Role
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    version = llamafactory.__version__
    kept = expected_kept(args.kept_from)
    work = workdir("sftconf-lf-")
    tokenizer = make_tokenizer(args.sft, work)
    make_model(tokenizer, work)
    examples = json.loads((args.sft / "sharegpt.json").read_text())
    try:
        model_args, data_args, training_args, _, _ = get_train_args({
            "model_name_or_path": str(work), "stage": "sft", "do_train": True, "finetuning_type": "full",
            "dataset": "termigen_trajectories", "dataset_dir": str(args.sft), "template": args.template,
            "mask_history": True, "train_on_prompt": False, "cutoff_len": 16384, "output_dir": str(work / "out"),
            "overwrite_cache": True, "report_to": "none", "per_device_train_batch_size": 1, "max_steps": 1, "use_cpu": True,
        })
        tokenizer_module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
        ds = module["train_dataset"]
    except Exception as exc:  # noqa: BLE001
        row("llamafactory", version, args.template, False, None, None, f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    loads = len(ds) == len(examples)
    trained: dict[str, set[int]] = {}
    bad: list[str] = []
    tok = tokenizer_module["tokenizer"]
    roles = {"human": Role.USER.value, "gpt": Role.ASSISTANT.value, "function_call": Role.FUNCTION.value, "observation": Role.OBSERVATION.value}
    for i, (example, encoded) in enumerate(zip(examples, ds)):
        labels = encoded["labels"]
        messages = [{"role": roles[c["from"]], "content": c["value"]} for c in example["conversations"]]
        # the turns' token spans as the template renders them; the processor concatenates these pairs
        pairs = template.encode_multiturn(tok, messages, example.get("system"), example.get("tools"))
        offset, labelled = 0, []
        for source, target in pairs:
            offset += len(source)
            labelled.append(any(x != IGNORE for x in labels[offset:offset + len(target)]))
            offset += len(target)
        if offset not in (len(labels), len(labels) - 1):  # efficient_eos templates append one eos
            bad.append(f"example {i}: spans do not match the encoded length")
            continue
        trajectory = example["metadata"]["trajectory_id"]
        base = sum(1 for c in example["conversations"] if c["from"] in ("gpt", "function_call")) - len(pairs)
        trained.setdefault(trajectory, set()).update(base + k for k, flag in enumerate(labelled) if flag)
        if labelled.count(True) != 1 or not labelled[-1]:
            bad.append(f"example {i} (len {len(labels)}, spans {offset}, labelled tokens {sum(x != IGNORE for x in labels)}): labelled turns {[k for k, f in enumerate(labelled) if f]} (expected only the last)")
    for trajectory, flags in kept.items():
        want = {k for k, f in enumerate(flags) if f}
        got = trained.get(trajectory, set())
        if got != want:
            bad.append(f"{trajectory}: trained turns {sorted(got)} != kept {sorted(want)}")
    trains = train_one_step(work, ds, tok)
    row("llamafactory", version, args.template, loads, trains, not bad,
        f"{len(ds)} examples; " + ("; ".join(bad[:3]) if bad else "only kept turns labelled, every kept turn labelled once"))


def train_one_step(model_dir: Path, ds: Any, tokenizer: Any) -> bool:
    """One optimiser step of the tiny model on the first tokenized example (labels as given)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    example = ds[0]
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor([example["labels"]])
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    return bool(torch.isfinite(loss))


def cmd_trl(args: argparse.Namespace) -> None:
    """TRL's SFTTrainer with assistant_only_loss and the shipped template: one step, then the masks."""
    import datasets
    import trl
    from trl import SFTConfig, SFTTrainer

    version = trl.__version__
    kept = expected_kept(args.sft)
    work = workdir("sftconf-trl-")
    tokenizer = make_tokenizer(args.sft, work)
    tokenizer.chat_template = (args.sft / "chat_template.jinja").read_text()
    model = make_model(tokenizer, work)
    meta = [json.loads(x) for x in (args.sft / "openai.meta.jsonl").read_text().splitlines() if x.strip()]
    for name, kind, path in (("parquet", "parquet", args.sft / "trajectories.parquet"), ("openai.jsonl", "json", args.sft / "openai.jsonl")):
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
            if kind == "parquet":
                ds = ds.remove_columns([c for c in ds.column_names if c not in ("messages", "tools")])
            config = SFTConfig(output_dir=str(work / name), assistant_only_loss=True, max_steps=1, per_device_train_batch_size=1,
                               report_to="none", use_cpu=True, max_length=None, logging_steps=1, save_strategy="no")
            trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tokenizer)
        except Exception as exc:  # noqa: BLE001
            row("trl", version, f"shipped/{name}", False, None, None, f"{type(exc).__name__}: {str(exc)[:300]}")
            continue
        prepared = trainer.train_dataset
        try:
            result = trainer.train()
            trains, why = result.global_step == 1, f"loss {result.training_loss:.3f}; "
        except Exception as exc:  # noqa: BLE001
            trains, why = False, f"train: {type(exc).__name__}: {str(exc)[:200]}; "
            print(traceback.format_exc(), file=sys.stderr)
        bad = []
        for i, (example, m) in enumerate(zip(prepared, meta)):
            # TRL <= 0.2x keeps assistant_masks; 1.x folds them into labels (-100 outside the loss)
            mask = example["assistant_masks"] if "assistant_masks" in example else [x != IGNORE for x in example.get("labels") or []]
            bad += loss_mismatches(tokenizer, example["input_ids"], mask, ds[i]["messages"], kept[m["trajectory_id"]], m["trajectory_id"])
        row("trl", version, f"shipped/{name}", True, trains, not bad,
            f"{len(prepared)} examples; {why}" + ("; ".join(bad[:3]) if bad else "masked turns outside the loss, kept turns inside"))


def loss_mismatches(tokenizer: Any, ids: list[int], in_loss: list[Any], messages: list[dict[str, Any]], want: list[bool], name: str) -> list[str]:
    """Assistant turns whose text is in the loss when masked, or missing from it when kept.

    A turn is identified by the start of its content (or its first call's name), looked up in
    the decoded in-loss tokens: the per-token masks come from the trainer, the expectation from
    the export's weights.
    """
    text = tokenizer.decode([t for t, f in zip(ids, in_loss) if f])
    bad = []
    for k, (msg, kept) in enumerate(zip([m for m in messages if m["role"] == "assistant"], want)):
        probe = (msg.get("content") or "").strip()[:60] or json.dumps(msg["tool_calls"][0]["function"]["name"])
        if (probe in text) != kept:
            bad.append(f"{name} turn {k}: {'missing from' if kept else 'in'} the loss")
    return bad


def cmd_axolotl(args: argparse.Namespace) -> None:
    """axolotl's chat_template strategy with the shipped axolotl.yaml dataset entry (per-message train)."""
    import axolotl
    import yaml
    from axolotl.prompt_strategies.chat_template import load
    from axolotl.utils.dict import DictDefault

    version = axolotl.__version__
    kept = expected_kept(args.sft)
    work = workdir("sftconf-axolotl-")
    tokenizer = make_tokenizer(args.sft, work)
    tokenizer.chat_template = (args.sft / "chat_template.jinja").read_text()  # ChatML, as tokenizer_default
    make_model(tokenizer, work)
    entry = yaml.safe_load((args.sft / "axolotl.yaml").read_text())["datasets"][0]
    rows = [json.loads(x) for x in (args.sft / entry["path"]).read_text().splitlines() if x.strip()]
    try:
        strategy = load(tokenizer, DictDefault({"sequence_len": 16384, "train_on_inputs": False}), DictDefault(entry))
        encoded = [strategy.tokenize_prompt(r) for r in rows]
    except Exception as exc:  # noqa: BLE001
        row("axolotl", version, "tokenizer_default", False, None, None, f"{type(exc).__name__}: {str(exc)[:300]}")
        return
    bad = []
    for r, e in zip(rows, encoded):
        trajectory = r["id"]
        bad += loss_mismatches(tokenizer, e["input_ids"], [x != IGNORE for x in e["labels"]], r["messages"], kept.get(trajectory, []), trajectory)
    trains = train_one_step(work, encoded, tokenizer)
    row("axolotl", version, "tokenizer_default", True, trains, not bad,
        f"{len(encoded)} examples; " + ("; ".join(bad[:3]) if bad else "masked turns outside the loss, kept turns inside"))


def cmd_openai(args: argparse.Namespace) -> None:
    """openai.jsonl against the fine-tuning format rules (chat + tools, per-turn weight)."""
    allowed = {"system": {"role", "content", "name"}, "user": {"role", "content", "name"},
               "assistant": {"role", "content", "name", "tool_calls", "weight", "refusal"}, "tool": {"role", "content", "tool_call_id"}}
    bad = []
    lines = [x for x in (args.sft / "openai.jsonl").read_text().splitlines() if x.strip()]
    for n, line in enumerate(lines, 1):
        record = json.loads(line)
        if set(record) - {"messages", "tools", "parallel_tool_calls"}:
            bad.append(f"line {n}: keys {sorted(set(record) - {'messages', 'tools', 'parallel_tool_calls'})}")
        pending: set[str] = set()
        for k, msg in enumerate(record.get("messages", [])):
            role = msg.get("role")
            if role not in allowed:
                bad.append(f"line {n} message {k}: role {role!r}")
                continue
            if set(msg) - allowed[role]:
                bad.append(f"line {n} message {k}: {role} keys {sorted(set(msg) - allowed[role])}")
            if "weight" in msg and msg["weight"] not in (0, 1):
                bad.append(f"line {n} message {k}: weight {msg['weight']!r}")
            for call in msg.get("tool_calls") or []:
                if call.get("type") != "function" or not isinstance(call.get("function", {}).get("arguments"), str) or not call.get("id"):
                    bad.append(f"line {n} message {k}: malformed tool call")
                pending.add(call.get("id"))
            if role == "tool":
                if msg.get("tool_call_id") not in pending:
                    bad.append(f"line {n} message {k}: tool_call_id {msg.get('tool_call_id')!r} answers no open call")
                pending.discard(msg.get("tool_call_id"))
        if not any(m.get("role") == "assistant" and m.get("weight", 1) for m in record.get("messages", [])):
            bad.append(f"line {n}: no trained assistant turn")
        for tool in record.get("tools") or []:
            if tool.get("type") != "function" or not isinstance(tool.get("function", {}).get("parameters"), dict):
                bad.append(f"line {n}: tool {tool.get('function', {}).get('name')!r} not a function with object parameters")
    row("openai-format", "fine-tuning rules", "-", not bad, None, True if not bad else None,
        f"{len(lines)} examples; " + ("; ".join(bad[:3]) if bad else "roles, keys, tool_call_id pairing and weights valid"))


def cmd_matrix(args: argparse.Namespace) -> int:
    """Print the collected rows as a table; exit 1 if any tested cell failed."""
    rows = [json.loads(x.removeprefix(MARK)) for x in args.results.read_text().splitlines() if x.startswith(MARK)]
    cell = {True: "ok", False: "FAIL", None: "-"}
    print(f"{'trainer':<14} {'version':<18} {'template':<28} {'loads':<6} {'trains':<7} {'masks':<6} detail")
    for r in rows:
        print(f"{r['trainer']:<14} {r['version']:<18} {r['template']:<28} {cell[r['loads']]:<6} {cell[r['trains']]:<7} "
              f"{cell[r['masks']]:<6} {r['detail']}")
    return 1 if not rows or any(r[k] is False for r in rows for k in ("loads", "trains", "masks")) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("datasets", "llamafactory", "trl", "axolotl", "openai"):
        p = sub.add_parser(name)
        p.add_argument("sft", type=Path)
        if name == "llamafactory":
            p.add_argument("--template", required=True)
            p.add_argument("--kept-from", type=Path, required=True, help="the export folder holding openai.jsonl")
    sub.add_parser("matrix").add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command == "matrix":
        return cmd_matrix(args)
    {"datasets": cmd_datasets, "llamafactory": cmd_llamafactory, "trl": cmd_trl, "axolotl": cmd_axolotl, "openai": cmd_openai}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
