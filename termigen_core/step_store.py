"""The run store as a step sees it when it runs away from the driver.

The run has one writer: the driver, which owns ``run.db``. A step that runs on
another machine (an engine's worker) gets a :class:`StepBuffer` in place of the
:class:`~termigen_core.store.RunStore`: it answers the reads a step makes
(stored LLM answers of the step's own scope, which the driver sent with the
step; artifacts, through a reader the engine provides; the spend so far) and
keeps every write (LLM calls, container commands, artifacts, log lines) in a
:class:`StepRecords` that travels back with the step's outcome. The driver then
writes them with :func:`apply_records`, before it records the outcome, so a
resume replays the step's answers exactly as after a local step.

Only the store methods stages and the LLM router use are offered; a source
stage (which records outcomes of its own) always runs on the driver.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .llm import LLMRequest, LLMResponse
    from .sandbox import CommandResult
    from .store import RunStore

log = logging.getLogger("termigen")


@dataclass
class StepRecords:
    """Everything a remote step would have written to the run store, in order of kind."""

    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    #: (bytes, item_id, stage_index, name) per stored artifact
    artifacts: list[tuple[bytes, str | None, int | None, str | None]] = field(default_factory=list)
    #: what the router told the ``termigen_llm_call`` hook, replayed on the driver
    llm_events: list[dict[str, Any]] = field(default_factory=list)
    #: (level, message) of the step's log lines, logged again on the driver (run.log)
    log_lines: list[tuple[int, str]] = field(default_factory=list)
    #: (item id, stage name, "open"/"close", image) of the step's sandboxes, for the driver's listeners
    sandbox_events: list[tuple[str, str, str, str]] = field(default_factory=list)


class StepBuffer:
    """A stand-in for the run store during one remote step (see the module docstring)."""

    def __init__(
        self,
        *,
        answers: dict[tuple[str, int], LLMResponse],
        scope: str,
        spent_usd: float,
        read_remote_artifact: Callable[[str], bytes],
    ) -> None:
        self.records = StepRecords()
        self._answers = answers
        self._scope = scope
        self._spent = spent_usd
        self._read_remote = read_remote_artifact
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    # -- LLM calls (the router) ------------------------------------------------

    def find_llm_response(self, scope: str, cache_key: str, occurrence: int) -> LLMResponse | None:
        if scope != self._scope:
            return None
        found = self._answers.get((cache_key, occurrence))
        return replace(found) if found is not None else None

    def record_llm_call(self, *, request: LLMRequest, **fields: Any) -> None:
        # the request's history is every earlier request of the scope: not stored, and heavy to ship
        with self._lock:
            self.records.llm_calls.append({"request": replace(request, history=()), **fields})

    def total_llm_cost(self) -> float:
        """The spend when the step was sent plus this step's own paid calls.

        Other steps in flight elsewhere are not counted: a budget can be overshot by
        the calls of the steps running at that moment, as on one machine.
        """
        with self._lock:
            own = sum(
                (call["response"].cost_usd or 0.0)
                for call in self.records.llm_calls
                if call.get("response") is not None and call.get("source") == "backend"
            )
        return self._spent + own

    # -- commands and artifacts (sandboxes, stages) ------------------------------

    def record_command(self, *, scope: str, stage: str, sandbox: str, result: CommandResult) -> None:
        with self._lock:
            self.records.commands.append({"scope": scope, "stage": stage, "sandbox": sandbox, "result": result})

    def put_artifact(self, data: bytes, *, item_id: str | None = None, stage_index: int | None = None, name: str | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._blobs[digest] = data
            self.records.artifacts.append((data, item_id, stage_index, name))
        return digest

    def read_artifact(self, digest: str) -> bytes:
        with self._lock:
            known = self._blobs.get(digest)
        if known is not None:
            return known
        data = self._read_remote(digest)
        with self._lock:
            self._blobs[digest] = data
        return data

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"RunStore.{name} is not available to a step that runs away from the driver "
            "(source stages, which record outcomes themselves, always run on the driver)"
        )


class StepLogCapture(logging.Handler):
    """Keeps the ``termigen`` log lines of the step in progress, for the driver's run.log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.current: StepRecords | None = None

    def emit(self, record: logging.LogRecord) -> None:
        target = self.current
        if target is not None:
            target.log_lines.append((record.levelno, record.getMessage()))


def apply_records(
    store: RunStore,
    records: StepRecords,
    *,
    emit_llm_call: Callable[[dict[str, Any]], None],
    call_stats: Counter[str],
    emit_sandbox_event: Callable[[str, str, str, str], None] | None = None,
) -> None:
    """Write what a remote step brought back, as the step would have on the driver, and count its
    calls in ``call_stats`` (the driver router's ``stats``: paid, replayed, user_cache)."""
    for data, item_id, stage_index, name in records.artifacts:
        store.put_artifact(data, item_id=item_id, stage_index=stage_index, name=name)
    from_user_cache = 0
    for call in records.llm_calls:
        store.record_llm_call(**call)
        if call.get("status") == "ok":
            source = call.get("source")
            call_stats["paid" if source == "backend" else str(source)] += 1
            from_user_cache += source == "user_cache"
    replayed = sum(1 for event in records.llm_events if event.get("cached")) - from_user_cache
    if replayed > 0:
        call_stats["replayed"] += replayed
    for command in records.commands:
        store.record_command(**command)
    for level, message in records.log_lines:
        log.log(level, "%s", message)
    for event in records.llm_events:
        emit_llm_call(event)
    if emit_sandbox_event is not None:
        for item_id, stage_name, what, image in records.sandbox_events:
            emit_sandbox_event(item_id, stage_name, what, image)


class StoredAnswers:
    """Reads the answered LLM calls of one scope from ``run.db``, for a step sent elsewhere.

    A read-only connection of its own: the store's writer is never blocked, and the
    driver is still the only writer.
    """

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._db = sqlite3.connect(f"file:{Path(store.path).resolve()}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def of_scope(self, scope: str) -> dict[tuple[str, int], LLMResponse]:
        with self._lock:
            keys = self._db.execute(
                "SELECT DISTINCT cache_key, occurrence FROM llm_calls WHERE scope = ? AND status = 'ok'", (scope,)
            ).fetchall()
        answers: dict[tuple[str, int], LLMResponse] = {}
        for cache_key, occurrence in keys:
            found = self._store.find_llm_response(scope, cache_key, occurrence)
            if found is not None:
                answers[(cache_key, occurrence)] = found
        return answers

    def close(self) -> None:
        with self._lock:
            self._db.close()
