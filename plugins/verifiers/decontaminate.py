"""The ``decontamination`` verifier: a task must not be a copy of a benchmark task it will be evaluated on.

Training data that contains (or nearly contains) the tasks of a benchmark a
team evaluates on makes the benchmark's score worthless. This verifier reads
local folders of benchmark tasks (Harbor / TB2 or TB1 task folders, e.g. a
checkout of terminal-bench) through the task importer's own reader, once per
run, and compares every task against them by n-gram overlap in three channels:

- ``instruction``: word 8-grams (lower-cased words, punctuation dropped). Eight
  words in a row are almost never shared by two independently written task
  statements, yet survive light edits: renaming a path or changing a number
  breaks only the 8 grams that span it. (The same length the ``leaks``
  verifier uses for "quotes the private text", and the common n in LLM
  contamination studies.)
- ``tests``: code-token 10-grams over the test files (identifiers, numbers,
  string literals, operators; whitespace, comments and layout ignored), so a
  re-indented or re-commented copy of a test still matches, and 10 tokens is a
  short statement (``assert result . returncode == 0 , result . stderr``).
- ``files``: the same code-token 10-grams over the environment's files and the
  solution (data files and scripts copied from the benchmark). An n-gram never
  spans two files.

The score of a channel is containment, ``|A ∩ B| / min(|A|, |B|)``, not
Jaccard: a benchmark task embedded in a longer instruction, or trimmed down,
is still a copy, and Jaccard would dilute it by the extra text. A channel
with fewer than ``min_ngrams`` n-grams on either side scores 0 (a two-line
instruction shares one 8-gram by chance far too often). The task's score
against a benchmark task is its highest channel; at ``threshold`` or above it
is an ``error`` (the ``verify`` stage rejects the task), between
``warn_threshold`` and ``threshold`` a ``warning``; each finding names the
benchmark task and the per-channel scores.

Boilerplate is not evidence: every Harbor task's ``test.sh`` installs the
same runner, and many Dockerfiles share their first lines. An n-gram found in
more than ``max_df`` of the benchmark's tasks (and in at least 3) is dropped
from the index, so only what is particular to a task can make a match.

How n-grams are hashed, and why with numpy: a benchmark of 3,500 tasks holds
over ten million n-grams, and hashing each as a Python tuple, counting them in
a ``Counter`` and appending them to a dict of lists took five minutes. Each
distinct token instead gets a 64-bit id (the first 8 bytes of its BLAKE2b
digest, computed once per distinct token of a build or of a checked task), and an n-gram's hash is a
polynomial over its tokens' ids, computed for a whole channel at once as
uint64 array arithmetic (wrapping modulo 2**64). The hashes depend on the
text alone, never on Python's per-process salted ``hash()``, so an index
written by one process means the same in another. Two different n-grams
share a hash with a chance of about 2**-64, far below any score's resolution.

The index, per channel, is three arrays (compressed sparse rows): the sorted
distinct n-grams kept, where each one's benchmark tasks start, and the task
numbers; plus each task's count of kept n-grams. Document frequency is one
``np.unique(..., return_counts=True)`` over every task's distinct n-grams.
A lookup is one ``np.searchsorted`` of the task's n-grams and one
``np.bincount`` of the tasks they lead to, so checking a task costs time
mostly in its own size, hardly in the size of the benchmark.

The built index is cached in termigen's user cache folder
(``<cache>/decontamination``; ``TERMIGEN_HOME`` moves it like every other
user-level file), because the benchmark rarely changes between runs while
reading and hashing it (about a minute for the TermiGen authors' 3,566 tasks)
is most of a short run's time. One slot per (benchmark folders,
n-gram settings, ``max_df``), so a changed benchmark replaces its entry
instead of piling up new ones. The entry is valid only for the key it was
built for: a hash of the index format, termigen's version (the importer
may read a folder differently), the settings, and every file's and
folder's relative path, size, mode and modification time (ns) under the
folders, so an edited, touched, added or removed benchmark file means a
rebuild. The arrays are an ``.npz`` read with ``allow_pickle=False`` (a cache
never runs code), stored with each n-gram's task count instead of offsets
and in the smallest unsigned types that hold them (137 MB for the authors'
tasks instead of 250), and the task names and skipped folders a small JSON; both
carry the key, both are written to a temporary file and renamed into place,
so a run never reads a half-written entry or a pair from two builds. An
unreadable or corrupt entry is logged as a warning and rebuilt, never an
error: a cache can only save time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
from pydantic import Field, model_validator

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, Finding, Verifier
from termigen_core.errors import ConfigIssue, TermigenError
from termigen_core.records import TaskRecord
from termigen_core.userdirs import user_dirs

if TYPE_CHECKING:
    from termigen_core.components import ComponentRegistry
    from termigen_core.context import StageContext
    from termigen_core.items import Item

log = logging.getLogger("termigen.decontamination")

CHANNELS = ("instruction", "tests", "files")
#: Bump when the hashing or the index layout changes: older cache entries then stop matching.
INDEX_FORMAT = 1
_WORD = re.compile(r"[a-z0-9]+")
#: Code tokens: string literals whole, identifiers/numbers, then any other non-space character.
_TOKEN = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S")
_COMMENT = re.compile(r"(?m)^\s*#.*$")
#: The polynomial's base: odd (invertible modulo 2**64) and 3 modulo 4, so swapping two tokens changes the hash.
_BASE = np.uint64(0x9E3779B97F4A7C17)
_NO_GRAMS = np.empty(0, dtype=np.uint64)


class TokenIds(dict[str, bytes]):
    """Token → stable 64-bit id (8 bytes of BLAKE2b), each distinct token digested once however often it occurs.

    The ids are kept as bytes, so a token list becomes an array by one
    ``b"".join`` (twice as fast as converting Python ints one by one).
    """

    def __missing__(self, token: str) -> bytes:
        digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        self[token] = digest
        return digest

    def of(self, tokens: list[str]) -> np.ndarray:
        return np.frombuffer(b"".join(map(self.__getitem__, tokens)), dtype="<u8").astype(np.uint64, copy=False)


def ngram_hashes(pieces: list[list[str]], n: int, ids: TokenIds) -> np.ndarray:
    """Sorted distinct hashes of the token n-grams of every piece (an n-gram never spans two pieces)."""
    pieces = [p for p in pieces if len(p) >= n]
    if not pieces:
        return _NO_GRAMS
    tokens = ids.of([t for piece in pieces for t in piece])
    windows = len(tokens) - n + 1
    grams = tokens[:windows].copy()
    for offset in range(1, n):
        grams *= _BASE
        grams += tokens[offset : offset + windows]
    if len(pieces) > 1:
        piece_of = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
        grams = grams[piece_of[:windows] == piece_of[n - 1 :]]
    return sorted_distinct(grams)


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting: numpy 2.3+ answers a plain ``np.unique`` with a hash table that is
    20-35x slower than a sort on random 64-bit hashes (benchmarks/decontamination_index.py prints both)."""
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def word_ngrams(text: str, n: int, ids: TokenIds | None = None) -> np.ndarray:
    return ngram_hashes([_WORD.findall(text.lower())], n, TokenIds() if ids is None else ids)


def code_ngrams(files: Iterable[str], n: int, ids: TokenIds | None = None) -> np.ndarray:
    return ngram_hashes([_TOKEN.findall(_COMMENT.sub("", text)) for text in files], n, TokenIds() if ids is None else ids)


class DecontaminationConfig(ComponentConfig):
    benchmarks: list[Path] = Field(min_length=1, description="folders of benchmark task folders (Harbor/TB2 or TB1), or single task folders")
    threshold: float = Field(default=0.5, gt=0.0, le=1.0, description="overlap at or above which a task is an error (rejected by verify)")
    warn_threshold: float = Field(default=0.2, gt=0.0, le=1.0, description="overlap at or above which a task gets a warning")
    instruction_ngram: int = Field(default=8, ge=2, le=50, description="words per instruction n-gram")
    code_ngram: int = Field(default=10, ge=2, le=100, description="code tokens per n-gram of tests and files")
    min_ngrams: int = Field(default=5, ge=1, description="a channel with fewer n-grams than this (either side) scores 0")
    max_df: float = Field(default=0.05, gt=0.0, le=1.0, description="drop n-grams found in more than this share of benchmark tasks (boilerplate)")

    @model_validator(mode="after")
    def _ordered(self) -> "DecontaminationConfig":
        if self.warn_threshold > self.threshold:
            raise ValueError(f"warn_threshold ({self.warn_threshold}) is above threshold ({self.threshold})")
        return self

    def index_settings(self) -> dict[str, Any]:
        """What the index depends on (thresholds and ``min_ngrams`` only apply at lookup)."""
        return {"format": INDEX_FORMAT, "instruction_ngram": self.instruction_ngram, "code_ngram": self.code_ngram, "max_df": self.max_df}


def folder_problem(path: Path) -> str | None:
    if not path.exists():
        return f"benchmark folder {path} does not exist"
    if not path.is_dir():
        return f"benchmark path {path} is not a folder"
    return None


@dataclass
class Fingerprint:
    """A task's n-grams, per channel a sorted array of distinct uint64 hashes."""

    grams: dict[str, np.ndarray]

    @classmethod
    def of(cls, record: TaskRecord, config: DecontaminationConfig, ids: TokenIds | None = None) -> "Fingerprint":
        ids = TokenIds() if ids is None else ids  # (an empty TokenIds is falsy: ``ids or ...`` would drop a shared one)
        return cls({
            "instruction": word_ngrams(record.instruction, config.instruction_ngram, ids),
            "tests": code_ngrams(record.tests.values(), config.code_ngram, ids),
            "files": code_ngrams([*record.environment.values(), record.solution], config.code_ngram, ids),
        })


@dataclass
class ChannelIndex:
    """One channel's inverted index as compressed sparse rows: n-gram ``grams[i]`` is in tasks ``tasks[offsets[i]:offsets[i+1]]``."""

    grams: np.ndarray  # uint64, sorted, distinct
    offsets: np.ndarray  # int64, len(grams) + 1
    tasks: np.ndarray  # task numbers, the smallest unsigned type that holds them
    sizes: np.ndarray  # int64, per task: how many of its n-grams were kept

    @classmethod
    def build(cls, per_task: list[np.ndarray], limit: int) -> "ChannelIndex":
        """Index each task's distinct n-grams, dropping those in more than ``limit`` tasks."""
        counts = np.fromiter(map(len, per_task), dtype=np.int64, count=len(per_task))
        grams = np.concatenate(per_task) if per_task else _NO_GRAMS
        tasks = np.repeat(np.arange(len(per_task), dtype=task_number_type(len(per_task))), counts)
        order = np.argsort(grams, kind="stable")  # stable: each n-gram's tasks stay in ascending order
        grams, tasks = grams[order], tasks[order]
        distinct, document_frequency = np.unique(grams, return_counts=True)
        kept = document_frequency <= limit
        postings = tasks[np.repeat(kept, document_frequency)]
        offsets = np.zeros(int(kept.sum()) + 1, dtype=np.int64)
        np.cumsum(document_frequency[kept], dtype=np.int64, out=offsets[1:])
        return cls(distinct[kept], offsets, postings, np.bincount(postings, minlength=len(per_task)).astype(np.int64))

    def shared(self, query: np.ndarray) -> np.ndarray:
        """Per benchmark task, how many of ``query``'s (distinct) n-grams it holds."""
        where = np.searchsorted(self.grams, query)
        found = where < len(self.grams)
        found[found] = self.grams[where[found]] == query[found]
        rows = where[found]
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        firsts = np.cumsum(lengths) - lengths  # where each row's tasks start in the gathered array
        gathered = np.arange(int(lengths.sum())) + np.repeat(starts - firsts, lengths)
        return np.bincount(self.tasks[gathered], minlength=len(self.sizes))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The stored form: tasks per n-gram instead of offsets, both in the smallest type that holds them (under half the bytes)."""
        per_gram = np.diff(self.offsets)
        return {"grams": self.grams, "counts": per_gram.astype(np.min_scalar_type(int(per_gram.max(initial=0)))),
                "tasks": self.tasks, "sizes": self.sizes}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, task_count: int) -> "ChannelIndex":
        """The index back from :meth:`to_arrays` (names after ``prefix``); ValueError unless the arrays fit together.

        A cache entry is checked before it is trusted: a lookup past an
        array's end would be an error in the middle of a run.
        """
        grams, counts, tasks, sizes = (arrays[prefix + part] for part in ("grams", "counts", "tasks", "sizes"))
        fits = (grams.dtype == np.uint64 and grams.ndim == counts.ndim == tasks.ndim == sizes.ndim == 1
                and counts.dtype.kind == "u" and tasks.dtype.kind == "u" and sizes.dtype == np.int64
                and len(counts) == len(grams) and len(sizes) == task_count
                and bool(np.all(grams[1:] > grams[:-1])) and bool(np.all(counts > 0))
                and int(counts.sum(dtype=np.int64)) == len(tasks) and int(tasks.max(initial=0)) < max(task_count, 1))
        if not fits:
            raise ValueError("its arrays do not fit together")
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, dtype=np.int64, out=offsets[1:])  # dtype: accumulating small ints into int64 is 10x slower without it
        return cls(grams, offsets, tasks, sizes)


def task_number_type(task_count: int) -> np.dtype:
    """uint8, uint16 or uint32: a benchmark of 3,500 tasks needs 2 bytes per posting, not 8."""
    return np.min_scalar_type(max(task_count - 1, 0))


@dataclass
class BenchmarkIndex:
    """Benchmark tasks' n-grams: per channel an inverted index with each task's count of kept n-grams."""

    names: list[str] = field(default_factory=list)  # "<benchmark folder name>/<task id>"
    channels: dict[str, ChannelIndex] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (task folder, reason)
    from_cache: bool = False

    @classmethod
    def build(cls, roots: list[Path], config: DecontaminationConfig) -> "BenchmarkIndex":
        """Read every benchmark task and index it (no cache: :meth:`load_or_build` is what runs use)."""
        from termigen_plugins.seed_sources.task_import import TaskImportConfig, import_tasks

        index = cls()
        prints: list[Fingerprint] = []
        ids = TokenIds()
        for root in roots:
            check_folder(root)
            # binary files are only hashed (the importer's ``keep``), never held in memory
            result = import_tasks(root, TaskImportConfig(path=root), keep=lambda data: hashlib.sha256(data).hexdigest())
            index.skipped += [(folder, reason) for _, folder, reason in result.skipped]
            for record, _ in result.records:
                index.names.append(f"{root.name}/{record.id}")
                prints.append(Fingerprint.of(record, config, ids))
        limit = max(3, int(config.max_df * len(prints)))
        index.channels = {c: ChannelIndex.build([fp.grams[c] for fp in prints], limit) for c in CHANNELS}
        return index

    @classmethod
    def load_or_build(cls, roots: list[Path], config: DecontaminationConfig) -> "BenchmarkIndex":
        """The index from the user cache if the benchmark folders are unchanged, else built and cached."""
        for root in roots:
            check_folder(root)
        cache = IndexCache.for_benchmarks(roots, config)
        key = cache.key(roots)
        index = cache.load(key)
        if index is None:
            index = cls.build(roots, config)
            cache.save(key, index)
        return index

    def scores(self, fp: Fingerprint, min_ngrams: int) -> dict[int, dict[str, float]]:
        """Benchmark task number → channel → containment, for every task sharing any n-gram."""
        found: dict[int, dict[str, float]] = {}
        for channel in CHANNELS:
            mine = fp.grams[channel]
            if len(mine) < min_ngrams:
                continue  # the smaller side is below min_ngrams for every benchmark task
            index = self.channels[channel]
            shared = index.shared(mine)
            tasks = np.flatnonzero(shared)
            smaller = np.minimum(len(mine), index.sizes[tasks])
            for task, count, least in zip(tasks.tolist(), shared[tasks].tolist(), smaller.tolist()):
                if least >= min_ngrams:
                    found.setdefault(task, {})[channel] = min(1.0, count / least)
        return found


def check_folder(root: Path) -> None:
    problem = folder_problem(root)
    if problem:
        raise TermigenError(f"decontamination: {problem}")


def tree_state(root: Path) -> Iterator[str]:
    """One line per file and folder under ``root`` (relative path, type, size, mode, mtime in ns), in a fixed order.

    Symbolic links are described, never followed (the link's target text is
    part of its line). A folder that cannot be listed, or an entry removed
    while the folder is walked, is a line too: the key then differs from the
    finished state's, so the next run rebuilds.
    """
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            yield f"{prefix}\0unreadable\0{exc.errno}"
            continue
        for entry in entries:
            rel = prefix + entry.name
            try:
                stat = entry.stat(follow_symlinks=False)
                target = os.readlink(entry.path) if entry.is_symlink() else None
            except OSError as exc:  # removed while we looked: the key differs from the finished state's
                yield f"{rel}\0gone\0{exc.errno}"
                continue
            if target is not None:
                yield f"{rel}\0link\0{target}"
            elif entry.is_dir(follow_symlinks=False):
                yield f"{rel}\0dir\0{stat.st_mode}"
                pending.append((Path(entry.path), rel + "/"))
            else:
                yield f"{rel}\0file\0{stat.st_size}\0{stat.st_mode}\0{stat.st_mtime_ns}"


def termigen_version() -> str:
    try:
        return importlib.metadata.version("termigen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class IndexCache:
    """One slot of the user-level cache of built benchmark indexes: ``<slot>.npz`` (arrays) and ``<slot>.json`` (names)."""

    arrays_path: Path
    meta_path: Path
    settings: dict[str, Any]

    @classmethod
    def folder(cls) -> Path:
        return user_dirs().cache_dir / "decontamination"

    @classmethod
    def for_benchmarks(cls, roots: list[Path], config: DecontaminationConfig) -> "IndexCache":
        settings = {**config.index_settings(), "roots": [str(root.resolve()) for root in roots]}
        slot = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        return cls(cls.folder() / f"{slot}.npz", cls.folder() / f"{slot}.json", settings)

    def key(self, roots: list[Path]) -> str:
        """The hash of the settings and the state of every file under the benchmark folders."""
        digest = hashlib.sha256(json.dumps({**self.settings, "termigen": termigen_version()}, sort_keys=True).encode())
        for number, root in enumerate(roots):
            digest.update(f"\1root {number}\n".encode())
            for line in tree_state(root):
                digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()

    def load(self, key: str) -> BenchmarkIndex | None:
        """The cached index built for ``key``; None if there is none, it is stale, or it cannot be read (with a warning)."""
        if not (self.meta_path.exists() and self.arrays_path.exists()):
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != key:
                log.info("decontamination: the benchmark folders changed since %s was built; rebuilding it", self.arrays_path)
                return None
            names = [str(name) for name in meta["names"]]
            with np.load(self.arrays_path, allow_pickle=False) as arrays:
                if arrays["key"].tobytes().decode() != key:
                    return None  # another run is replacing this slot; its JSON and arrays are from different builds
                stored = {name: arrays[name] for name in arrays.files}
            channels = {c: ChannelIndex.from_arrays(stored, f"{c}_", len(names)) for c in CHANNELS}
            skipped = [(str(folder), str(reason)) for folder, reason in meta["skipped"]]
        except Exception as exc:  # noqa: BLE001 - a cache can only save time: whatever is wrong with it, rebuild
            log.warning("decontamination: the cached benchmark index %s cannot be read (%s: %s); rebuilding it",
                        self.arrays_path, type(exc).__name__, exc)
            return None
        return BenchmarkIndex(names=names, channels=channels, skipped=skipped, from_cache=True)

    def save(self, key: str, index: BenchmarkIndex) -> None:
        """Write the entry atomically (temporary file, then rename); a failure is a warning, the run goes on."""
        arrays: dict[str, np.ndarray] = {"key": np.frombuffer(key.encode(), dtype=np.uint8)}
        for channel, part in index.channels.items():
            arrays.update({f"{channel}_{name}": array for name, array in part.to_arrays().items()})
        meta = {"key": key, **self.settings, "names": index.names, "skipped": index.skipped}
        try:
            self.arrays_path.parent.mkdir(parents=True, exist_ok=True)
            self._replace(self.arrays_path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]
            self._replace(self.meta_path, lambda handle: handle.write(json.dumps(meta).encode()))
        except OSError as exc:
            log.warning("decontamination: could not cache the benchmark index in %s (%s); the next run rebuilds it",
                        self.arrays_path.parent, exc)

    @staticmethod
    def _replace(path: Path, write: Any) -> None:
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
        try:
            with handle:
                write(handle)
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise


class DecontaminationVerifier(Verifier):
    """Flags tasks whose instruction, tests or files overlap a local benchmark task (n-gram containment)."""

    name = "decontamination"
    description = "Flags tasks that overlap local benchmark task folders by n-grams, naming the benchmark task."
    Config = DecontaminationConfig

    config: DecontaminationConfig

    def __init__(self, config: ComponentConfig | None = None) -> None:
        super().__init__(config)
        self._index: BenchmarkIndex | None = None
        self._lock = threading.Lock()

    @classmethod
    def check_config(cls, config: ComponentConfig, registry: "ComponentRegistry") -> list[ConfigIssue]:
        """A missing benchmark folder is a config error, before any work (relative paths are checked when the index is built)."""
        assert isinstance(config, DecontaminationConfig)
        return [
            ConfigIssue(f"benchmarks[{n}]", problem)
            for n, path in enumerate(config.benchmarks)
            if path.is_absolute() and (problem := folder_problem(path))
        ]

    def index(self, ctx: "StageContext | None" = None) -> BenchmarkIndex:
        """The benchmark index, loaded or built on first use and shared by every item (the component lives for the run)."""
        with self._lock:
            if self._index is None:
                roots = [ctx.resolve_path(p) if ctx is not None else p for p in self.config.benchmarks]
                self._index = BenchmarkIndex.load_or_build(roots, self.config)
                if ctx is not None:
                    ctx.log("decontamination: %s %d benchmark task(s), %d skipped", "loaded the cached index of" if self._index.from_cache else "indexed",
                            len(self._index.names), len(self._index.skipped))
            return self._index

    def check(self, record: TaskRecord, ctx: "StageContext | None" = None) -> list[Finding]:
        index = self.index(ctx)
        matches = index.scores(Fingerprint.of(record, self.config), self.config.min_ngrams)
        findings: list[Finding] = []
        ranked = sorted(matches.items(), key=lambda kv: (-max(kv[1].values()), index.names[kv[0]]))
        for task, channels in ranked:
            score = max(channels.values())
            if score < self.config.warn_threshold:
                break
            severity = "error" if score >= self.config.threshold else "warning"
            detail = ", ".join(f"{c} {channels[c]:.2f}" for c in CHANNELS if c in channels)
            findings.append(Finding(severity, f"overlaps benchmark task {index.names[task]} (score {score:.2f}: {detail})", index.names[task]))
        return findings

    def verify(self, item: "Item", ctx: "StageContext") -> list[Finding]:
        if "task" not in item.data:
            return []
        return self.check(item.task(), ctx)


@hookimpl
def register_verifiers() -> list[type[Verifier]]:
    return [DecontaminationVerifier]
