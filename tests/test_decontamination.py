"""The ``decontamination`` verifier: a planted near-copy of a benchmark task is caught and named; unrelated tasks pass.

The benchmark is real: 30 of the TermiGen authors' released Harbor tasks
(from /tmp/tbenv or the bare mirror), plus one planted Harbor folder written
here. The quickstart's tasks are rebuilt from its scripted answers (the
planner's instruction and files, the test generator's tests), which is what
the quickstart run turns into its tasks, without the Docker run.

The hashed numpy index is checked against a plain containment over token
tuples (no hashing at all), its hashes against another Python process, and
its cache (in the test's own ``TERMIGEN_HOME``) against edited, touched,
added, removed and corrupted files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, run_cli, write_yaml
from termigen_core.components import instantiate
from termigen_core.errors import Reject, TermigenError
from termigen_core.items import Item
from termigen_core.records import TaskRecord
from termigen_core.testing import stage_context
from termigen_plugins.seed_sources import task_import
from termigen_plugins.seed_sources.task_import import TaskImportConfig, import_tasks
from termigen_plugins.stages.verify import VerifyStage
from termigen_plugins.verifiers.decontaminate import (
    _COMMENT,
    _TOKEN,
    _WORD,
    CHANNELS,
    DecontaminationVerifier,
    Fingerprint,
    IndexCache,
    code_ngrams,
    word_ngrams,
)

MIRROR = Path(os.environ.get("TERMIGEN_TEST_AUTHORS_MIRROR", "/work/.mirror/ucsb-mlsec+terminal-bench-env/repo"))
EXTRACTED = Path(os.environ.get("TERMIGEN_TEST_AUTHORS_TASKS", "/tmp/tbenv/environments_harbor"))

INSTRUCTION = """\
A nightly job writes JSON lines to `/srv/metrics/events.jsonl`. Each line has a `service`,
a `latency_ms` and a `status` field. Compute the 95th percentile latency of every service,
counting only events whose status is `ok`, and write `/srv/metrics/p95.csv` with the header
`service,p95_ms` and one row per service, sorted by service name. Round to one decimal place.
Services with fewer than five ok events must be left out of the report entirely.
"""

TEST = '''\
import csv
import json
import math
from pathlib import Path

EVENTS = Path("/srv/metrics/events.jsonl")
REPORT = Path("/srv/metrics/p95.csv")


def percentile(values, q):
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def expected():
    per_service = {}
    for line in EVENTS.read_text().splitlines():
        event = json.loads(line)
        if event["status"] == "ok":
            per_service.setdefault(event["service"], []).append(event["latency_ms"])
    return {s: round(percentile(v, 95), 1) for s, v in per_service.items() if len(v) >= 5}


def test_report_has_header_and_sorted_rows():
    rows = list(csv.reader(REPORT.open()))
    assert rows[0] == ["service", "p95_ms"]
    assert [r[0] for r in rows[1:]] == sorted(expected())


def test_report_values_match():
    rows = {r["service"]: float(r["p95_ms"]) for r in csv.DictReader(REPORT.open())}
    assert rows == expected()
'''


def write_planted(root: Path) -> Path:
    """A Harbor task folder (task.toml, instruction.md, environment, tests, solution)."""
    task = root / "latency-p95-report"
    (task / "environment").mkdir(parents=True)
    (task / "tests").mkdir()
    (task / "solution").mkdir()
    (task / "task.toml").write_text('version = "1.0"\n\n[metadata]\ndifficulty = "medium"\ncategory = "data-processing"\n\n'
                                    "[verifier]\ntimeout_sec = 120.0\n\n[agent]\ntimeout_sec = 600.0\n")
    (task / "instruction.md").write_text(INSTRUCTION)
    (task / "environment" / "Dockerfile").write_text("FROM termigen/python:bookworm\nWORKDIR /srv\nCOPY metrics /srv/metrics\n")
    (task / "environment" / "metrics").mkdir()
    (task / "environment" / "metrics" / "events.jsonl").write_text('{"service": "api", "latency_ms": 12, "status": "ok"}\n')
    (task / "tests" / "test.sh").write_text("#!/bin/bash\ncd /srv && python3 -m pytest /tests/test_outputs.py && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt\n")
    (task / "tests" / "test_outputs.py").write_text(TEST)
    (task / "solution" / "solve.sh").write_text("#!/bin/bash\npython3 /srv/solve.py\n")
    return task


def extract_authors_tasks(dest: Path, count: int = 30) -> list[str]:
    """``count`` of the authors' Harbor tasks, spread over the alphabet, copied into ``dest``."""
    if EXTRACTED.is_dir():
        names = sorted(p.name for p in EXTRACTED.iterdir() if p.is_dir())
        chosen = names[:: max(1, len(names) // count)][:count]
        for name in chosen:
            shutil.copytree(EXTRACTED / name, dest / name, symlinks=True)
        return chosen
    if not MIRROR.is_dir():
        # a fresh machine has neither: the repository's own Harbor task that is not a quickstart
        # task stands in, so the planted near-copy is still caught against a real benchmark folder
        shutil.copytree(ROOT / "examples" / "recipes" / "tasks" / "word-stats", dest / "word-stats", symlinks=True)
        return ["word-stats"]
    listing = subprocess.run(["git", "-C", str(MIRROR), "ls-tree", "--name-only", "HEAD", "environments_harbor/"],
                             capture_output=True, text=True, check=True).stdout.split()
    names = sorted(Path(p).name for p in listing)
    chosen = names[:: max(1, len(names) // count)][:count]
    archive = subprocess.run(["git", "-C", str(MIRROR), "archive", "HEAD", *(f"environments_harbor/{n}" for n in chosen)],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest), "--strip-components=1"], input=archive, check=True)
    return chosen


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("benchmark")
    chosen = extract_authors_tasks(root)
    write_planted(root)
    return root, chosen


def near_copy() -> TaskRecord:
    """The planted task, lightly edited: paths renamed, a sentence reworded, the same test file."""
    instruction = (INSTRUCTION.replace("/srv/metrics", "/app/metrics").replace("nightly job", "cron job")
                   .replace("Round to one decimal place.", "Values are rounded to 1 decimal."))
    return TaskRecord(id="gen-latency", title="p95", instruction=instruction, category="data_processing",
                      environment={"Dockerfile": "FROM termigen/python:bookworm\nWORKDIR /app\n"},
                      tests={"test_outputs.py": TEST.replace("/srv/metrics", "/app/metrics")}, solution="python3 solve.py\n")


def quickstart_tasks() -> list[TaskRecord]:
    """The quickstart's three tasks as its scripted planner and test generator write them."""
    script = yaml.safe_load((ROOT / "examples" / "quickstart.script.yaml").read_text())
    plans = [r["json"] for r in script if r["role"] == "planner"]
    tests = [r["json"]["files"] for r in script if r["role"] == "test_generator"]
    records = []
    for n, plan in enumerate(plans):
        files = {f["path"]: str(f.get("content") or f.get("purpose") or "") for f in plan.get("files", [])}
        records.append(TaskRecord(id=f"quickstart-{n}", title=f"quickstart {n}", instruction=plan["instruction"], category="x",
                                  environment=files, tests=tests[min(2 * n, len(tests) - 1)]))
    return records


def verifier(root: Path, **options) -> DecontaminationVerifier:
    return instantiate(DecontaminationVerifier, {"benchmarks": [str(root)], **options}, root)  # type: ignore[return-value]


def test_a_planted_near_copy_is_an_error_naming_the_benchmark_task(benchmark) -> None:
    root, _ = benchmark
    findings = verifier(root).check(near_copy())
    assert findings, "the near-copy was not flagged"
    top = findings[0]
    assert top.severity == "error" and top.path == f"{root.name}/latency-p95-report"
    assert "latency-p95-report" in top.message and "instruction" in top.message and "tests" in top.message
    assert all("latency-p95-report" in f.path for f in findings if f.severity == "error")


def test_only_the_instruction_copied_is_still_caught(benchmark) -> None:
    root, _ = benchmark
    record = near_copy().model_copy(update={"tests": {"test_x.py": "def test_it():\n    assert open('/app/out').read() == 'x'\n"}})
    (top,) = [f for f in verifier(root).check(record) if f.severity == "error"]
    assert top.path.endswith("latency-p95-report") and "tests" not in top.message


def test_a_loose_paraphrase_is_a_warning_between_the_thresholds(benchmark) -> None:
    root, _ = benchmark
    sentences = INSTRUCTION.replace("\n", " ").split(". ")
    loose = TaskRecord(id="gen-2", title="t", category="x",
                       instruction=sentences[0] + ". Then do something rather different with the data, in your own words, for a report.")
    findings = verifier(root, threshold=0.9, warn_threshold=0.1).check(loose)
    assert [f.severity for f in findings] == ["warning"] and findings[0].path.endswith("latency-p95-report")


def test_the_quickstart_tasks_pass_against_unrelated_benchmark_tasks(benchmark) -> None:
    root, chosen = benchmark
    checker = verifier(root)
    index = checker.index()
    assert len(index.names) == len(chosen) + 1, index.skipped
    for record in quickstart_tasks():
        assert checker.check(record) == [], record.instruction


def test_every_benchmark_task_matches_itself(benchmark) -> None:
    """The index really holds the authors' tasks: each, read back, is an error against its own folder."""
    root, chosen = benchmark
    checker = verifier(root)
    records = import_tasks(root, TaskImportConfig(path=root, ids=chosen[:5])).records
    for record, _ in records:
        findings = checker.check(record)
        assert findings and findings[0].severity == "error" and findings[0].path == f"{root.name}/{record.id}"


def test_the_verify_stage_rejects_the_near_copy_and_passes_the_rest(benchmark, tmp_path: Path) -> None:
    root, _ = benchmark
    ctx = stage_context(tmp_path, stage="verify")
    stage = instantiate(VerifyStage, {"verifiers": [{"use": "decontamination", "with": {"benchmarks": [str(root)]}}]}, tmp_path)
    with pytest.raises(Reject, match="latency-p95-report"):
        stage.process(Item(id="copy", kind="task", data={"task": near_copy().model_dump()}), ctx)
    clean = quickstart_tasks()[0]
    out = stage.process(Item(id="clean", kind="task", data={"task": clean.model_dump()}), ctx)
    assert out.task().lint == []
    # built once per run: both items went through one component, whose index was read once
    (ref,) = stage.config.verifiers
    assert ctx.component(ref, "verifier").index() is ctx.component(ref, "verifier").index()  # type: ignore[attr-defined]


def test_a_missing_benchmark_folder_is_a_config_error_with_its_path(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    shutil.copy(ROOT / "examples" / "quickstart.script.yaml", tmp_path / "quickstart.script.yaml")
    missing = tmp_path / "no-such-benchmark"
    for stage in config["stages"]:
        if stage.get("use") == "verify":
            stage["with"]["verifiers"] = ["lint", {"use": "decontamination", "with": {"benchmarks": [str(missing)]}}]
    done = run_cli("config", "check", str(write_yaml(tmp_path / "c.yaml", config)))
    assert done.returncode != 0
    assert f"benchmark folder {missing} does not exist" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_relative_benchmark_folder_fails_with_its_path(tmp_path: Path) -> None:
    checker = instantiate(DecontaminationVerifier, {"benchmarks": ["nowhere"]}, tmp_path)
    ctx = stage_context(tmp_path)
    with pytest.raises(TermigenError, match=f"{tmp_path / 'nowhere'} does not exist"):
        checker.verify(Item(id="t", kind="task", data={"task": near_copy().model_dump()}), ctx)  # type: ignore[attr-defined]


# --- the hashed index against plain sets of token tuples --------------------------------------------------------


def tuple_grams(record: TaskRecord, instruction_n: int = 8, code_n: int = 10) -> dict[str, set[tuple[str, ...]]]:
    """The channels' n-grams as tuples of tokens: what the hashes stand for, with no hashing at all."""

    def code(texts) -> set[tuple[str, ...]]:  # type: ignore[no-untyped-def]
        out: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = _TOKEN.findall(_COMMENT.sub("", text))
            out.update(tuple(tokens[i : i + code_n]) for i in range(len(tokens) - code_n + 1))
        return out

    words = _WORD.findall(record.instruction.lower())
    return {
        "instruction": {tuple(words[i : i + instruction_n]) for i in range(len(words) - instruction_n + 1)},
        "tests": code(record.tests.values()),
        "files": code([*record.environment.values(), record.solution]),
    }


def plain_index(benchmark_records: list[TaskRecord], max_df: float = 0.05) -> list[dict[str, set[tuple[str, ...]]]]:
    """Each benchmark task's n-grams kept by the ``max_df`` rule, as Python sets of tuples."""
    prints = [tuple_grams(r) for r in benchmark_records]
    limit = max(3, int(max_df * len(prints)))
    df = {channel: Counter(g for fp in prints for g in fp[channel]) for channel in CHANNELS}
    return [{c: {g for g in fp[c] if df[c][g] <= limit} for c in CHANNELS} for fp in prints]


def plain_scores(kept: list[dict[str, set[tuple[str, ...]]]], record: TaskRecord, min_ngrams: int = 5) -> dict[int, dict[str, float]]:
    """Containment per channel as the module docstring defines it, computed on Python sets."""
    mine = tuple_grams(record)
    found: dict[int, dict[str, float]] = {}
    for channel in CHANNELS:
        for task, grams in enumerate(kept):
            shared = len(mine[channel] & grams[channel])
            smaller = min(len(mine[channel]), len(grams[channel]))
            if shared and smaller >= min_ngrams:
                found.setdefault(task, {})[channel] = min(1.0, shared / smaller)
    return found


def test_the_index_scores_exactly_what_plain_sets_of_token_tuples_score(benchmark) -> None:
    """Hashing, document frequency, the CSR postings and the lookup change nothing: same tasks, same scores."""
    root, _ = benchmark
    checker = verifier(root)
    index = checker.index()
    benchmark_records = [record for record, _ in import_tasks(root, TaskImportConfig(path=root)).records]
    assert [f"{root.name}/{r.id}" for r in benchmark_records] == index.names
    sentences = INSTRUCTION.replace("\n", " ").split(". ")
    loose = TaskRecord(id="gen-2", title="t", category="x", instruction=sentences[0] + ". Then do something else with the data entirely.")
    cases = [near_copy(), loose, *quickstart_tasks(), *benchmark_records[:4]]
    kept = plain_index(benchmark_records)
    compared = 0
    for record in cases:
        expected = plain_scores(kept, record)
        assert index.scores(Fingerprint.of(record, checker.config), 5) == expected, record.id
        compared += len(expected)
    assert compared >= 6  # the near-copy, the paraphrase and the four benchmark tasks each matched something


HASH_SCRIPT = """
import json, sys
from termigen_plugins.verifiers.decontaminate import code_ngrams, word_ngrams
text = json.load(sys.stdin)
print(json.dumps({"words": word_ngrams(text["instruction"], 8).tolist(), "code": code_ngrams([text["test"]], 10).tolist()}))
"""


def test_the_hashes_are_the_same_in_another_process() -> None:
    """No salted ``hash()``: processes with different hash seeds give the same n-gram hashes (the cache relies on it)."""
    here = {"words": word_ngrams(INSTRUCTION, 8).tolist(), "code": code_ngrams([TEST], 10).tolist()}
    assert len(here["words"]) > 50 and len(here["code"]) > 100
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", HASH_SCRIPT], input=json.dumps({"instruction": INSTRUCTION, "test": TEST}),
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        assert json.loads(done.stdout) == here


def test_an_ngram_never_spans_two_files() -> None:
    first, second = "alpha beta gamma delta", "epsilon zeta eta theta"
    apart = code_ngrams([first, second], 3)
    assert len(apart) == 4  # two 3-grams in each file, none across the boundary
    assert set(code_ngrams([f"{first} {second}"], 3).tolist()) > set(apart.tolist())


# --- the cache of built indexes ------------------------------------------------------------------------------------


@pytest.fixture
def small_benchmark(tmp_path: Path) -> Path:
    """A benchmark this test may change: three of the authors' tasks and the planted one."""
    root = tmp_path / "bench"
    root.mkdir()
    extract_authors_tasks(root, count=3)
    write_planted(root)
    return root


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """The benchmark folders the task importer reads (it is still the real importer)."""
    calls: list[Path] = []
    real = task_import.import_tasks

    def counting(root, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(root)
        return real(root, *args, **kwargs)

    monkeypatch.setattr(task_import, "import_tasks", counting)
    return calls


def cache_files(home: Path) -> list[str]:
    folder = home / "cache" / "decontamination"
    return sorted(p.suffix for p in folder.iterdir()) if folder.is_dir() else []


def test_the_second_run_loads_the_cached_index_without_reading_the_tasks(small_benchmark: Path, termigen_home: Path, monkeypatch) -> None:
    first = verifier(small_benchmark)
    built = first.index()
    assert not built.from_cache
    assert cache_files(termigen_home) == [".json", ".npz"]  # under TERMIGEN_HOME, no temporary file left behind

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the benchmark was read again")

    monkeypatch.setattr(task_import, "import_tasks", refuse)
    second = verifier(small_benchmark)
    loaded = second.index()
    assert loaded.from_cache and loaded.names == built.names and loaded.skipped == built.skipped
    assert second.check(near_copy()) == first.check(near_copy())
    assert second.check(near_copy())[0].severity == "error"


def test_other_ngram_settings_are_another_cache_entry(small_benchmark: Path, termigen_home: Path, reads: list[Path]) -> None:
    verifier(small_benchmark).index()
    verifier(small_benchmark, code_ngram=12).index()
    assert verifier(small_benchmark, threshold=0.9).index().from_cache  # thresholds apply at lookup, not in the index
    assert len(reads) == 2 and cache_files(termigen_home) == [".json", ".json", ".npz", ".npz"]


def touch(task: Path) -> None:
    stat = (task / "instruction.md").stat()
    os.utime(task / "instruction.md", ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def edit(task: Path) -> None:
    (task / "instruction.md").write_text("Count the words of every file under /data and print the total, nothing else.\n")


def add(task: Path) -> None:
    shutil.copytree(task, task.parent / "latency-p95-report-copy")


def remove(task: Path) -> None:
    (task / "tests" / "test_outputs.py").unlink()


@pytest.mark.parametrize("change", [touch, edit, add, remove], ids=lambda f: f.__name__)
def test_a_changed_benchmark_file_invalidates_the_cache(small_benchmark: Path, reads: list[Path], change) -> None:
    before = verifier(small_benchmark)
    assert before.check(near_copy())[0].path.endswith("latency-p95-report")
    verifier(small_benchmark).index()
    assert len(reads) == 1  # the second run was served from the cache

    change(small_benchmark / "latency-p95-report")
    after = verifier(small_benchmark)
    index = after.index()
    assert not index.from_cache and len(reads) == 2
    top = after.check(near_copy())
    if change is edit:  # the instruction no longer matches; the copied test still does
        assert "instruction" not in top[0].message and "tests" in top[0].message
    elif change is add:
        assert len(index.names) == len(before.index().names) + 1
        assert {f.path for f in top if f.severity == "error"} == {f"bench/latency-p95-report{s}" for s in ("", "-copy")}
    elif change is remove:
        assert "tests" not in top[0].message and "instruction" in top[0].message
    else:
        assert top == before.check(near_copy())
    assert verifier(small_benchmark).index().from_cache and len(reads) == 2  # and the new entry is used next time


def garbage(path: Path) -> None:
    path.write_bytes(b"not a zip archive at all" * 10)


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bad_json(path: Path) -> None:
    path.with_suffix(".json").write_text("{ half a JSON")


def mismatched_arrays(path: Path) -> None:
    """A well-formed archive whose arrays do not fit together (a task number past the end)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    tasks = arrays["tests_tasks"]
    arrays["tests_tasks"] = np.full_like(tasks, np.iinfo(tasks.dtype).max)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("damage", [garbage, truncated, bad_json, mismatched_arrays], ids=lambda f: f.__name__)
def test_a_corrupt_cache_entry_is_rebuilt_with_a_warning(small_benchmark: Path, termigen_home: Path, reads: list[Path], caplog, damage) -> None:
    expected = verifier(small_benchmark).check(near_copy())
    (entry,) = (termigen_home / "cache" / "decontamination").glob("*.npz")
    damage(entry)
    with caplog.at_level(logging.WARNING, logger="termigen.decontamination"):
        again = verifier(small_benchmark)
        assert again.check(near_copy()) == expected
    assert not again.index().from_cache and len(reads) == 2
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot be read" in warning.getMessage() and "rebuilding it" in warning.getMessage()
    assert verifier(small_benchmark).index().from_cache  # the rebuilt entry replaced the damaged one


def test_an_unwritable_cache_folder_is_a_warning_and_the_check_still_runs(small_benchmark: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("TERMIGEN_HOME", str(blocker))
    assert IndexCache.folder().is_relative_to(blocker)
    with caplog.at_level(logging.WARNING, logger="termigen.decontamination"):
        findings = verifier(small_benchmark).check(near_copy())
    assert findings[0].severity == "error"
    assert any("could not cache the benchmark index" in r.getMessage() for r in caplog.records)


WRITER_SCRIPT = """
import sys
from pathlib import Path
from termigen_plugins.verifiers.decontaminate import BenchmarkIndex, DecontaminationConfig, IndexCache
root = Path(sys.argv[1])
config = DecontaminationConfig(benchmarks=[root])
cache = IndexCache.for_benchmarks([root], config)
key = cache.key([root])
index = BenchmarkIndex.build([root], config)
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    cache.save(key, index)
"""


def test_a_run_reading_the_cache_while_another_rewrites_it_never_sees_half_an_entry(small_benchmark: Path, caplog) -> None:
    """Entries are replaced by rename: a reader gets the old entry or the new one, never a torn file (which would warn)."""
    config = verifier(small_benchmark).config
    verifier(small_benchmark).index()
    cache = IndexCache.for_benchmarks([small_benchmark], config)
    key = cache.key([small_benchmark])
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(small_benchmark), "400"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        loads = 0
        with caplog.at_level(logging.INFO, logger="termigen.decontamination"):
            while writer.poll() is None:
                assert cache.load(key) is not None
                loads += 1
    finally:
        writer.kill() if writer.poll() is None else None
        writer.wait()
    assert writer.returncode == 0 and loads > 0
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert not [p for p in cache.arrays_path.parent.iterdir() if p.suffix == ".tmp"]
