"""The run store: one SQLite database (WAL) per run directory.

It is the run's memory. Every (item, stage) outcome, every LLM call (request
hash, response, tokens, cost, latency), every container command and every
artifact (content-addressed files under ``artifacts/``) is written as it
happens, one short transaction each, so ``kill -9`` loses at most the work in
flight. Re-running on the same directory reads it back: finished stages are
skipped and answered LLM calls are served from here instead of being paid again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .items import Item
from .status import FINISHED, FailureKind, StepStatus

if TYPE_CHECKING:
    from .llm import LLMRequest, LLMResponse
    from .sandbox import CommandResult

SCHEMA_VERSION = 1
SOURCE_ITEM = "__source__"  # the (pseudo) input item of a source stage's first draw


def source_row_sql(column: str = "item_id") -> str:
    """SQL that is true for a source stage's step of any draw (``__source__``, ``__source__#2``...)."""
    return f"({column} = '{SOURCE_ITEM}' OR {column} GLOB '{SOURCE_ITEM}#*')"


_IS_SOURCE = source_row_sql()
#: SQL: a part of draw ``?`` of a source stage (draw 0: no ``#n`` suffix; draw n: ``...#n``)
_OF_DRAW = "((? = 0 AND instr(item_id, '#') = 0) OR item_id GLOB ('*#' || ?))"


def source_item(draw: int = 0) -> str:
    """The pseudo input item of a source stage's draw ``draw`` (a campaign asks it again: ``run.target``)."""
    return SOURCE_ITEM if draw == 0 else f"{SOURCE_ITEM}#{draw}"


def is_source_item(item_id: str) -> bool:
    """Whether ``item_id`` is a source stage's pseudo item (of any draw), not a real item."""
    return item_id == SOURCE_ITEM or item_id.startswith(SOURCE_ITEM + "#")


def draw_of(item_id: str) -> int:
    """The draw a source stage's pseudo item, or a part recorded by it (``category:x#3``), belongs to."""
    head, sep, tail = item_id.rpartition("#")
    return int(tail) if sep and head and tail.isdigit() else 0


def part_id(name: str, draw: int) -> str:
    """The id under which a source stage records one part of draw ``draw`` (e.g. a taxonomy category)."""
    return name if draw == 0 else f"{name}#{draw}"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, status TEXT, argv TEXT
);
CREATE TABLE IF NOT EXISTS stage_runs (
    item_id TEXT NOT NULL, stage_index INTEGER NOT NULL, stage_name TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT, detail TEXT, outputs TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL,
    PRIMARY KEY (item_id, stage_index)
);
CREATE TABLE IF NOT EXISTS llm_calls (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, stage TEXT, role TEXT, backend TEXT, model TEXT,
    cache_key TEXT NOT NULL, occurrence INTEGER NOT NULL, status TEXT NOT NULL, source TEXT,
    request TEXT, response TEXT, prompt_tokens INTEGER DEFAULT 0, completion_tokens INTEGER DEFAULT 0,
    cost_usd REAL DEFAULT 0, latency_s REAL DEFAULT 0, error TEXT, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS llm_lookup ON llm_calls (scope, cache_key, occurrence, status);
-- llm_calls columns added after schema version 1 are in _LLM_CALL_COLUMNS (added on open)
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY, scope TEXT, stage TEXT, sandbox TEXT, command TEXT NOT NULL,
    exit_code INTEGER, timed_out INTEGER, duration_s REAL, output TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS item_artifacts (
    item_id TEXT NOT NULL, stage_index INTEGER NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (item_id, stage_index, name)
);
"""

#: Ledger columns added to ``llm_calls`` since the first schema; an older run.db gains them on open.
#: ``cost_usd`` is NULL when the model's price is unknown (never a silent 0).
_LLM_CALL_COLUMNS = {
    "cache_read_tokens": "INTEGER DEFAULT 0",
    "cache_write_tokens": "INTEGER DEFAULT 0",
    "uncached_cost_usd": "REAL",
    "structured_mode": "TEXT",
    "tool_calls": "TEXT",
    "finish_reason": "TEXT",
    "notes": "TEXT",
}

#: Stored command output is capped; the full output is the caller's business.
MAX_STORED_OUTPUT = 64 * 1024

#: Columns added to ``stage_runs`` after the first release: run.db files made before get them
#: with ``ALTER TABLE ... ADD COLUMN`` when opened (existing rows read NULL).
_STAGE_RUNS_ADDED_COLUMNS = (
    # why a step failed: "infrastructure" (model API, container engine, disk, network) or "task"
    ("failure_kind", "TEXT"),
)

#: ``stage_runs.failure_kind`` values (:class:`~termigen_core.status.FailureKind`).
FAILURE_INFRASTRUCTURE = FailureKind.INFRASTRUCTURE
FAILURE_TASK = FailureKind.TASK


class RunStore:
    """Thread-safe access to ``<run_dir>/run.db`` and ``<run_dir>/artifacts/``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "run.db"
        self.artifact_dir = self.run_dir / "artifacts"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss can drop the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._add_missing_columns("llm_calls", _LLM_CALL_COLUMNS)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self._migrate_stage_runs()

    def _migrate_stage_runs(self) -> None:
        """Add the ``stage_runs`` columns a run.db made by an older termigen lacks."""
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(stage_runs)")}
        for name, decl in _STAGE_RUNS_ADDED_COLUMNS:
            if name not in present:
                try:
                    self._db.execute(f"ALTER TABLE stage_runs ADD COLUMN {name} {decl}")
                except sqlite3.OperationalError as exc:  # another process opening the same run.db added it first
                    if "duplicate column" not in str(exc).lower():
                        raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _add_missing_columns(self, table: str, columns: dict[str, str]) -> None:
        """Bring an older run.db up to date: add the columns it lacks (data is kept)."""
        present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    # -- helpers --------------------------------------------------------------

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- meta ------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def start_invocation(self, argv: list[str]) -> int:
        cur = self._execute("INSERT INTO invocations(started, status, argv) VALUES (?, 'running', ?)", (time.time(), json.dumps(argv)))
        return int(cur.lastrowid or 0)

    def finish_invocation(self, invocation_id: int, status: str) -> None:
        self._execute("UPDATE invocations SET finished = ?, status = ? WHERE id = ?", (time.time(), status, invocation_id))

    def mark_abandoned_invocations(self) -> None:
        """Invocations still 'running' were killed (kill -9, power loss): say so."""
        self._execute("UPDATE invocations SET status='killed' WHERE status='running'")

    def invocations(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM invocations ORDER BY id")]

    # -- stage runs ------------------------------------------------------------

    def stage_run(self, item_id: str, stage_index: int) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM stage_runs WHERE item_id = ? AND stage_index = ?", (item_id, stage_index))
        return dict(rows[0]) if rows else None

    def mark_running(self, item_id: str, stage_index: int, stage_name: str) -> None:
        self._execute(
            """INSERT INTO stage_runs(item_id, stage_index, stage_name, status, attempts, started)
               VALUES (?, ?, ?, 'running', 1, ?)
               ON CONFLICT(item_id, stage_index) DO UPDATE SET
                 status='running', attempts=attempts+1, started=excluded.started, reason=NULL, detail=NULL,
                 failure_kind=NULL""",
            (item_id, stage_index, stage_name, time.time()),
        )

    def finish_stage(
        self,
        item_id: str,
        stage_index: int,
        status: StepStatus | str,
        *,
        outputs: list[Item] | None = None,
        reason: str | None = None,
        detail: str | None = None,
        failure_kind: str | None = None,
    ) -> None:
        """Record a step's outcome; a ``failed`` one says whether it was ``infrastructure`` or ``task``."""
        payload = json.dumps([o.model_dump(mode="json") for o in outputs]) if outputs is not None else None
        self._execute(
            "UPDATE stage_runs SET status=?, outputs=?, reason=?, detail=?, finished=?, failure_kind=? WHERE item_id=? AND stage_index=?",
            (status, payload, reason, detail, time.time(), failure_kind if status == StepStatus.FAILED else None, item_id, stage_index),
        )

    def record_outcome(
        self,
        item_id: str,
        stage_index: int,
        stage_name: str,
        status: StepStatus | str,
        reason: str,
        detail: str | None = None,
        *,
        failure_kind: str | None = None,
    ) -> None:
        """Record an outcome for an item that never ran as a step (a seed dropped as a duplicate,
        a taxonomy category whose seeding failed). A ``failed`` one is retried on resume: the
        runner re-runs a source stage that left failed parts behind."""
        now = time.time()
        self._execute(
            """INSERT OR REPLACE INTO stage_runs(item_id, stage_index, stage_name, status, reason, detail, attempts, started, finished, failure_kind)
               VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)""",
            (item_id, stage_index, stage_name, status, reason, detail, now, now, failure_kind if status == StepStatus.FAILED else None),
        )

    def failed_parts(self, stage_index: int, draw: int = 0) -> list[dict[str, Any]]:
        """``failed`` outcomes recorded at a source stage for parts of one draw's work (not the stage itself)."""
        rows = self._query(
            f"SELECT * FROM stage_runs WHERE stage_index = ? AND status = 'failed' AND NOT {_IS_SOURCE} AND {_OF_DRAW} "
            "ORDER BY item_id",
            (stage_index, draw, draw),
        )
        return [dict(r) for r in rows]

    def forget_failed_parts(self, stage_index: int, *, before: float, draw: int = 0) -> int:
        """After a source stage's draw ran again: drop its failed parts not recorded again since ``before``."""
        cur = self._execute(
            f"DELETE FROM stage_runs WHERE stage_index = ? AND status = 'failed' AND NOT {_IS_SOURCE} AND {_OF_DRAW} "
            "AND COALESCE(finished, 0) < ?",
            (stage_index, draw, draw, before),
        )
        return int(cur.rowcount or 0)

    def source_draws(self, stage_index: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """Every recorded draw of a source stage, as (draw number, row), in draw order."""
        rows = self._query(f"SELECT * FROM stage_runs WHERE stage_index = ? AND {_IS_SOURCE}", (stage_index,))
        return sorted(((draw_of(r["item_id"]), dict(r)) for r in rows), key=lambda pair: pair[0])

    def source_outputs(self, stage_index: int = 0, *, before_draw: int | None = None) -> list[Item]:
        """The items of a source stage's finished draws (those before ``before_draw`` if given), in draw order."""
        items: list[Item] = []
        for draw, row in self.source_draws(stage_index):
            if before_draw is not None and draw >= before_draw:
                break
            if row["status"] == StepStatus.DONE:
                items += self.outputs_of(row)
        return items

    def reset_stage(self, item_id: str, stage_index: int) -> None:
        """Forget an unfinished attempt (e.g. stopped by the budget) so a resume redoes it."""
        self._execute("UPDATE stage_runs SET status='pending', finished=? WHERE item_id=? AND stage_index=?", (time.time(), item_id, stage_index))

    @staticmethod
    def outputs_of(row: dict[str, Any]) -> list[Item]:
        return [Item.model_validate(o) for o in json.loads(row["outputs"] or "[]")]

    def stage_counts(self) -> list[dict[str, Any]]:
        """Items per stage and status; ``failed`` ones split by ``failure_kind`` (NULL: recorded before it existed).

        A source stage's finished step counts the items it produced (one step
        that imported 11 tasks is 11 items done, not 1); every other row is one item.
        """
        return [
            dict(r)
            for r in self._query(
                f"""SELECT stage_index, stage_name, status, failure_kind,
                          SUM(CASE WHEN {_IS_SOURCE} AND status = 'done' THEN json_array_length(COALESCE(outputs, '[]')) ELSE 1 END) AS n
                   FROM stage_runs
                   GROUP BY stage_index, stage_name, status, failure_kind ORDER BY stage_index, status, failure_kind"""
            )
        ]

    def stage_report(self) -> list[dict[str, Any]]:
        """Per stage: items in, items out, and items by status (the run report's core).

        ``failed`` is split into ``failed_infrastructure`` (the model API, the container
        engine, the disk: an outage, not a verdict on the task) and ``failed_task`` (the
        rest, including failures recorded before run.db kept the distinction).
        """
        rows = self._query(
            f"""SELECT stage_index, stage_name, status, COUNT(*) AS n,
                      SUM(CASE WHEN {_IS_SOURCE} THEN 0 ELSE 1 END) AS items,
                      SUM(CASE WHEN NOT {_IS_SOURCE} AND failure_kind = 'infrastructure' THEN 1 ELSE 0 END) AS infra,
                      SUM(CASE WHEN {_IS_SOURCE} THEN json_array_length(COALESCE(outputs, '[]')) ELSE 0 END) AS produced,
                      COALESCE(SUM(json_array_length(COALESCE(outputs, '[]'))), 0) AS outs
               FROM stage_runs GROUP BY stage_index, stage_name, status ORDER BY stage_index"""
        )
        report: dict[int, dict[str, Any]] = {}
        for row in rows:
            entry = report.setdefault(
                row["stage_index"],
                {"index": row["stage_index"], "stage": row["stage_name"], "in": 0, "out": 0,
                 "done": 0, "rejected": 0, "failed": 0, "pending": 0, "failed_infrastructure": 0, "failed_task": 0},
            )
            status = row["status"] if row["status"] in FINISHED else StepStatus.PENDING
            entry[status] += row["items"]
            if status == StepStatus.DONE:
                entry[status] += row["produced"]  # a source step's items count as done, not the step
            if status == StepStatus.FAILED:
                entry["failed_infrastructure"] += row["infra"]
                entry["failed_task"] += row["items"] - row["infra"]
            # a source stage's "in" is what it produced (kept or rejected), not its pseudo-input
            entry["in"] += row["items"] + row["produced"]
            entry["out"] += row["outs"]
        return [report[k] for k in sorted(report)]

    def llm_usage_by_stage(self) -> dict[str, dict[str, Any]]:
        """Paid calls, tokens and cost per stage name."""
        rows = self._query(
            """SELECT stage, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt_tokens,
                      SUM(completion_tokens) AS completion_tokens, ROUND(SUM(cost_usd), 6) AS cost_usd
               FROM llm_calls WHERE status='ok' AND source='backend' GROUP BY stage"""
        )
        return {r["stage"]: dict(r) for r in rows}

    def item_outcomes(self) -> list[dict[str, Any]]:
        """Every finished step of a real item (not a source stage's pseudo-item): id, status, failure kind."""
        rows = self._query(
            "SELECT item_id, stage_index, status, failure_kind FROM stage_runs "
            f"WHERE NOT {_IS_SOURCE} AND status IN ('done', 'rejected', 'failed') ORDER BY item_id, stage_index"
        )
        return [dict(r) for r in rows]

    def stage_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is None:
            rows = self._query("SELECT * FROM stage_runs ORDER BY stage_index, item_id")
        else:
            rows = self._query("SELECT * FROM stage_runs WHERE status = ? ORDER BY stage_index, item_id", (status,))
        return [dict(r) for r in rows]

    # -- LLM calls -------------------------------------------------------------

    def find_llm_response(self, scope: str, cache_key: str, occurrence: int) -> LLMResponse | None:
        from .llm import LLMResponse, ToolCall

        rows = self._query(
            "SELECT * FROM llm_calls WHERE scope=? AND cache_key=? AND occurrence=? AND status='ok' ORDER BY id LIMIT 1",
            (scope, cache_key, occurrence),
        )
        if not rows:
            return None
        row = rows[0]
        return LLMResponse(
            text=row["response"] or "",
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cost_usd=row["cost_usd"],
            model=row["model"] or "",
            finish_reason=row["finish_reason"] or "",
            cached=True,
            latency_s=0.0,
            tool_calls=[ToolCall(**call) for call in json.loads(row["tool_calls"] or "[]")],
            cache_read_tokens=row["cache_read_tokens"] or 0,
            cache_write_tokens=row["cache_write_tokens"] or 0,
            structured_mode=row["structured_mode"] or "",
        )

    def record_llm_call(
        self,
        *,
        scope: str,
        stage: str,
        role: str,
        backend: str,
        request: LLMRequest,
        cache_key: str,
        occurrence: int,
        response: LLMResponse | None,
        status: str,
        source: str,
        error: str | None = None,
        latency_s: float | None = None,
    ) -> None:
        paid = response is not None and source == "backend"
        cost = response.cost_usd if paid else 0.0
        uncached = response.uncached_cost_usd if paid else None
        self._execute(
            """INSERT INTO llm_calls(scope, stage, role, backend, model, cache_key, occurrence, status, source,
                 request, response, prompt_tokens, completion_tokens, cost_usd, latency_s, error, created,
                 cache_read_tokens, cache_write_tokens, uncached_cost_usd, structured_mode, tool_calls, finish_reason, notes)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                scope, stage, role, backend, (response.model if response and response.model else request.model),
                cache_key, occurrence, status, source,
                json.dumps(_request_record(request), ensure_ascii=False),
                response.text if response else None,
                response.prompt_tokens if response else 0,
                response.completion_tokens if response else 0,
                cost,
                latency_s if latency_s is not None else (response.latency_s if response else 0.0),
                error, time.time(),
                response.cache_read_tokens if response else 0,
                response.cache_write_tokens if response else 0,
                uncached,
                (response.structured_mode or request.structured_output) if response else request.structured_output,
                json.dumps([c.as_dict() for c in response.tool_calls]) if response and response.tool_calls else None,
                response.finish_reason if response else None,
                "; ".join(response.notes) if response and response.notes else None,
            ),
        )

    def total_llm_cost(self) -> float:
        """Known spend (calls of unpriced models are counted by :meth:`unpriced_call_count`)."""
        return float(self._query("SELECT COALESCE(SUM(cost_usd), 0) AS c FROM llm_calls")[0]["c"])

    def unpriced_call_count(self) -> int:
        """Paid calls whose price is unknown (their cost is not in :meth:`total_llm_cost`)."""
        return int(self._query(
            "SELECT COUNT(*) AS n FROM llm_calls WHERE status='ok' AND source='backend' AND cost_usd IS NULL"
        )[0]["n"])

    def cache_savings(self) -> dict[str, Any]:
        """Prompt-cache figures over paid calls: tokens read/written and the spend saved."""
        row = self._query(
            """SELECT COALESCE(SUM(cache_read_tokens), 0) AS read, COALESCE(SUM(cache_write_tokens), 0) AS written,
                      COALESCE(SUM(prompt_tokens), 0) AS prompt,
                      COALESCE(SUM(CASE WHEN uncached_cost_usd IS NOT NULL AND cost_usd IS NOT NULL
                                        THEN uncached_cost_usd - cost_usd ELSE 0 END), 0) AS saved
               FROM llm_calls WHERE status='ok' AND source='backend'"""
        )[0]
        return {"prompt_tokens": row["prompt"], "cache_read_tokens": row["read"], "cache_write_tokens": row["written"],
                "saved_usd": round(float(row["saved"]), 6)}

    def llm_call_count(self, *, source: str | None = "backend", status: str | None = "ok") -> int:
        sql, params = "SELECT COUNT(*) AS n FROM llm_calls WHERE 1=1", []
        if source:
            sql += " AND source = ?"
            params.append(source)
        if status:
            sql += " AND status = ?"
            params.append(status)
        return int(self._query(sql, tuple(params))[0]["n"])

    def llm_usage(self) -> list[dict[str, Any]]:
        """Tokens, cost and calls per stage and role (paid calls only)."""
        return [
            dict(r)
            for r in self._query(
                """SELECT stage, role, model, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt_tokens,
                          SUM(completion_tokens) AS completion_tokens, ROUND(SUM(cost_usd), 6) AS cost_usd,
                          SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END) AS unpriced_calls,
                          SUM(cache_read_tokens) AS cache_read_tokens, SUM(cache_write_tokens) AS cache_write_tokens,
                          GROUP_CONCAT(DISTINCT structured_mode) AS structured_modes,
                          ROUND(AVG(latency_s), 4) AS mean_latency_s
                   FROM llm_calls WHERE status='ok' AND source='backend'
                   GROUP BY stage, role, model ORDER BY stage, role"""
            )
        ]

    def llm_calls(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM llm_calls ORDER BY id")]

    # -- container commands ----------------------------------------------------

    def record_command(self, *, scope: str, stage: str, sandbox: str, result: CommandResult) -> None:
        output = result.output
        if len(output) > MAX_STORED_OUTPUT:
            half = MAX_STORED_OUTPUT // 2
            output = output[:half] + f"\n[... {len(output) - MAX_STORED_OUTPUT} characters not stored ...]\n" + output[-half:]
        self._execute(
            "INSERT INTO commands(scope, stage, sandbox, command, exit_code, timed_out, duration_s, output, created) VALUES (?,?,?,?,?,?,?,?,?)",
            (scope, stage, sandbox, result.command, result.exit_code, int(result.timed_out), result.duration_s, output, time.time()),
        )

    def commands(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("SELECT * FROM commands ORDER BY id")]

    # -- artifacts ---------------------------------------------------------------

    def put_artifact(self, data: bytes, *, item_id: str | None = None, stage_index: int | None = None, name: str | None = None) -> str:
        """Store bytes content-addressed (written atomically); return the sha256."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.artifact_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        self._execute("INSERT OR IGNORE INTO artifacts(sha256, size, created) VALUES (?, ?, ?)", (digest, len(data), time.time()))
        if item_id is not None and stage_index is not None and name is not None:
            self._execute(
                "INSERT OR REPLACE INTO item_artifacts(item_id, stage_index, name, sha256) VALUES (?, ?, ?, ?)",
                (item_id, stage_index, name, digest),
            )
        return digest

    def artifact_path(self, digest: str) -> Path:
        return self.artifact_dir / digest[:2] / digest

    def read_artifact(self, digest: str) -> bytes:
        return self.artifact_path(digest).read_bytes()

    def item_artifacts(self, item_id: str) -> Iterator[tuple[int, str, str]]:
        for row in self._query("SELECT stage_index, name, sha256 FROM item_artifacts WHERE item_id=? ORDER BY stage_index, name", (item_id,)):
            yield row["stage_index"], row["name"], row["sha256"]


def _request_record(request: LLMRequest) -> dict[str, Any]:
    """What the ledger keeps of a request (never secrets: backends hold those)."""
    record: dict[str, Any] = {"messages": request.messages, "temperature": request.temperature, "max_tokens": request.max_tokens}
    if request.response_schema is not None:
        record["response_schema"] = request.response_schema
        record["structured_output"] = request.structured_output
    if request.tools is not None:
        record["tools"] = list(request.tools)
        record["tool_choice"] = request.tool_choice
    return record
