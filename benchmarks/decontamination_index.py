"""The decontamination verifier's benchmark index: reading the tasks vs building, caching and loading the index.

A benchmark, not a test: it prints the figures and never fails on numbers.
Over N benchmark tasks -- the TermiGen authors' Harbor tasks
(``/tmp/tbenv/environments_harbor``, the first ``--limit`` of them copied to a
temporary folder), or, when those are absent, N synthetic Harbor task folders
written here -- it measures, in one process and against a fresh
``TERMIGEN_HOME`` (an empty index cache):

1. reading only: the task importer over the folders (``import_tasks``, what
   any index must do at least once), after one untimed warm-up read so every
   figure sees the same page cache -- the baseline;
2. the cold index: ``BenchmarkIndex.load_or_build`` with an empty cache (read,
   hash the n-grams, index, write the cache entry);
3. the cached load: the same call again (stat every file for the key, load
   the ``.npz``);
4. a check: ``DecontaminationVerifier.check`` of ``--checks`` tasks of the
   benchmark itself (each one an error against its own folder), per task;
5. ``np.unique`` against the module's sort-based ``sorted_distinct`` on the
   files channel's n-grams (why the module does not use plain ``np.unique``).

Ratios: build/read, cached/read, cold/cached. Before this index (Python
tuples, ``Counter``, dict of lists, no cache) the authors' 3,566 tasks took
~314 s on every run.

    .venv/bin/python benchmarks/decontamination_index.py [--limit 300] [--tasks DIR] [--checks 50]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

AUTHORS_TASKS = Path("/tmp/tbenv/environments_harbor")
WORDS = ("the file service report count value write read each line must output config data log server user path "
         "parse sort compute filter table json csv header field number error status request response cache").split()


def write_synthetic(dest: Path, count: int) -> None:
    """``count`` Harbor task folders of seeded random text (instruction, tests, Dockerfile, data, solution)."""
    rng = random.Random(12)
    for n in range(count):
        task = dest / f"synthetic-{n:05d}"
        for area in ("environment", "tests", "solution"):
            (task / area).mkdir(parents=True)
        sentence = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731 - a local shorthand
        (task / "task.toml").write_text('version = "1.0"\n\n[verifier]\ntimeout_sec = 120.0\n\n[agent]\ntimeout_sec = 600.0\n')
        (task / "instruction.md").write_text(". ".join(sentence(rng.randint(8, 20)) for _ in range(12)) + f" Task {n}.\n")
        (task / "environment" / "Dockerfile").write_text(f"FROM python:3.11-slim\nWORKDIR /app\nCOPY data.csv /app/data_{n}.csv\n")
        (task / "environment" / "data.csv").write_text("\n".join(",".join(str(rng.randint(0, 999)) for _ in range(6)) for _ in range(200)))
        tests = [f"def test_{rng.choice(WORDS)}_{k}():\n    assert {rng.choice(WORDS)}({rng.randint(0, 99)}) == {rng.randint(0, 999)}\n"
                 for k in range(30)]
        (task / "tests" / "test_outputs.py").write_text("import json\n\n" + "\n".join(tests))
        (task / "tests" / "test.sh").write_text("#!/bin/bash\npip install pytest\npytest /tests/test_outputs.py\n")
        (task / "solution" / "solve.sh").write_text(f"#!/bin/bash\n{sentence(30)}\n")


def timed(action):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=Path, default=AUTHORS_TASKS, help="a folder of Harbor task folders (default: the authors' tasks)")
    parser.add_argument("--limit", type=int, default=300, help="how many tasks (0: all of --tasks)")
    parser.add_argument("--checks", type=int, default=50, help="how many benchmark tasks to check against the index")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="termigen-bench-decon-") as tmp:
        os.environ["TERMIGEN_HOME"] = str(Path(tmp) / "home")  # an empty index cache, the user's stays untouched
        from termigen_plugins.seed_sources.task_import import TaskImportConfig, import_tasks
        from termigen_plugins.verifiers.decontaminate import BenchmarkIndex, DecontaminationVerifier, sorted_distinct

        if args.tasks.is_dir():
            names = sorted(p.name for p in args.tasks.iterdir() if p.is_dir())
            if args.limit and args.limit < len(names):
                root = Path(tmp) / "benchmark"
                for name in names[: args.limit]:
                    shutil.copytree(args.tasks / name, root / name, symlinks=True)
            else:
                root = args.tasks
            source = f"{args.tasks} ({len(names)} tasks)"
        else:
            root = Path(tmp) / "benchmark"
            write_synthetic(root, args.limit or 300)
            source = "synthetic Harbor task folders"

        verifier = DecontaminationVerifier(DecontaminationVerifier.Config(benchmarks=[root]))

        def read():  # type: ignore[no-untyped-def]
            return import_tasks(root, TaskImportConfig(path=root), keep=lambda data: hashlib.sha256(data).hexdigest())

        read()  # warm-up: the page cache is the same for every figure below
        imported, read_s = timed(read)
        cold, cold_s = timed(lambda: BenchmarkIndex.load_or_build([root], verifier.config))
        cached, cached_s = timed(lambda: BenchmarkIndex.load_or_build([root], verifier.config))
        assert not cold.from_cache and cached.from_cache and cached.names == cold.names

        records = [record for record, _ in imported.records[: args.checks]]
        verifier._index = cached  # noqa: SLF001 - check against the loaded index, as a run's second item would
        found, check_s = timed(lambda: [verifier.check(record) for record in records])
        matched_self = sum(1 for record, findings in zip(records, found) if findings and findings[0].path.endswith(f"/{record.id}"))

        hashes = np.random.default_rng(0).permutation(cold.channels["files"].grams)  # in the order n-grams are hashed
        _, unique_s = timed(lambda: np.unique(hashes))
        _, distinct_s = timed(lambda: sorted_distinct(hashes))

        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "home").rglob("*") if p.is_file())
        kept = {c: len(part.grams) for c, part in cold.channels.items()}
        print(f"benchmark: {source}; indexed {len(cold.names)} task(s), {len(cold.skipped)} skipped; kept n-grams {kept}")
        print(f"reading only (import_tasks, baseline): {read_s:8.2f} s")
        print(f"cold index (read + hash + index + write cache): {cold_s:8.2f} s   build/read  = {cold_s / read_s:6.2f}x")
        print(f"cached load (stat every file + load .npz):      {cached_s:8.2f} s   cached/read = {cached_s / read_s:6.3f}x   "
              f"cold/cached = {cold_s / cached_s:6.1f}x   (cache entry {cache_bytes / 1e6:.1f} MB)")
        print(f"check: {1000 * check_s / max(1, len(records)):.2f} ms per task over {len(records)} task(s); "
              f"{matched_self} matched their own folder first")
        print(f"distinct n-grams of {len(hashes):,} hashes: np.unique {unique_s:.3f} s, sorted_distinct {distinct_s:.3f} s "
              f"(np.unique/sorted_distinct = {unique_s / distinct_s:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
