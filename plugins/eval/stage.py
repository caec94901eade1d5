"""The stages of ``termigen eval``: task sets in, one scored plain-agent episode per attempt out.

``import_task_sets`` (source; the ``audit`` plugin's)
    ``import_tasks`` over several folders at once (each PATH of the command).
``eval_attempts``
    Fans each built task out into ``attempts`` items ``<task>.eval<k>``. Each
    attempt is its own item so that it has its own step in the run store: a
    resume re-runs only the attempts that never finished, and an attempt's
    model calls are scoped (and replayed) on their own.
``eval``
    One episode of the BashAgent on one attempt item, in a fresh container of the
    task's built image, with the same system prompt, action format and limits as
    the ``trajectories`` stage (:class:`~termigen_plugins.stages.trajectories.AgentOptions`)
    but none of its collection machinery: no error injection, no critic, no private
    guidance. So the model is measured exactly as the exported training data teaches
    it to act. The state the agent leaves is scored with the task's tests
    (:func:`~termigen_plugins.agent.scoring.run_tests`); the output is a
    ``trajectory`` item with ``resolved`` and ``pass_ratio`` in its meta.

An unresolved attempt is a ``done`` step (the model failed the task, which is a
result); an attempt that could not be run (the model API, the container engine)
fails as an infrastructure error and is kept apart by the report
(:mod:`.report`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, Stage
from termigen_core.errors import Reject
from termigen_core.items import Item
from termigen_core.records import TrajectoryRecord
from termigen_plugins.agent.formats import TOOLS
from termigen_plugins.agent.scoring import run_tests
from termigen_plugins.agent.tools import tools_used
from termigen_plugins.stages.trajectories import AgentOptions, build_agent

if TYPE_CHECKING:
    from termigen_core.context import StageContext

#: Separates a task id from its attempt number in an attempt item's id.
ATTEMPT_MARK = ".eval"


class EvalAttemptsConfig(ComponentConfig):
    attempts: int = Field(default=3, ge=1, le=100, description="independent episodes per task (pass@k uses all of them)")


class EvalAttemptsStage(Stage):
    """Fans a task out into its attempts, so each attempt finishes (and resumes) on its own."""

    name = "eval_attempts"
    description = "Fans each task out into `attempts` items <task>.eval<k>, one per evaluation episode."
    Config = EvalAttemptsConfig
    accepts = ("task",)
    produces = ("task",)
    config: EvalAttemptsConfig

    def process(self, item: Item, ctx: StageContext) -> list[Item]:
        return [
            Item(id=f"{item.id}{ATTEMPT_MARK}{k}", kind="task", data=item.data, parent=item.id,
                 meta={**item.meta, "eval_task": item.id, "attempt": k})
            for k in range(self.config.attempts)
        ]


class EvalConfig(AgentOptions):
    """The agent's options: the same fields, defaults and meaning as the ``trajectories`` stage's."""


class EvalStage(Stage):
    name = "eval"
    description = "One plain BashAgent episode per item (no error injection, no critic), scored by the task's tests."
    Config = EvalConfig
    accepts = ("task",)
    produces = ("trajectory",)
    roles = ("agent",)
    uses_executor = True
    uses_task_image = True
    config: EvalConfig

    def process(self, item: Item, ctx: StageContext) -> Item:
        record = item.task()
        record.require_image(self.name)
        if not record.has_tests:
            raise Reject("the task has no tests to score the attempt with")
        cfg = self.config
        llm = ctx.llm("agent")
        agent = build_agent(cfg, record, llm)
        with ctx.sandbox(record.build.image, workdir=record.workdir) as box:
            episode = agent.run(box, record.instruction, time_limit_s=cfg.agent_timeout_s or float(record.agent_timeout_s))
            card = run_tests(box, record, ctx.workdir(), cfg.test_timeout_s, read_blob=ctx.store.read_artifact)
        commands = [s.command or "" for s in episode.steps if s.action == "bash"]
        # read with defaults: a scorecard of the harness's own test script has a reward and a reason
        reward, why = getattr(card, "reward", None), getattr(card, "reason", "")
        ctx.log("attempt: %d steps (%s), %d/%d tests passed", len(episode.steps), episode.stopped, card.passed, card.total)
        trajectory = TrajectoryRecord(
            id=item.id, task_id=record.id, run_id=ctx.run_id, model=llm.model, agent_format=cfg.agent_format,
            system_prompt=agent.system_prompt, instruction=record.instruction, tools=TOOLS, steps=episode.steps,
            finished=episode.stopped == "finished", resolved=card.resolved, pass_ratio=card.pass_ratio,
            tests_passed=card.passed, tests_total=card.total, test_output_tail=card.output_tail, tools_used=tools_used(commands),
            stats={
                "steps": len(episode.steps), "commands": len(commands), "stopped": episode.stopped, "stopped_detail": episode.detail,
                "transport": agent.transport, "parse_retries": episode.parse_retries, "command_seconds": episode.command_seconds,
                "tokens": {"agent": {"prompt": episode.prompt_tokens, "completion": episode.completion_tokens}},
                "attempt": item.meta.get("attempt", 0), "test_exit_code": card.exit_code, "test_timed_out": card.timed_out,
                "reward": reward, "unresolved_reason": why,
            },
        )
        return item.with_trajectory(trajectory, kind="trajectory", resolved=card.resolved, pass_ratio=card.pass_ratio)

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        scored = [o for o in outputs if o.kind == "trajectory"]
        resolved = sum(1 for o in scored if o.meta.get("resolved"))
        return {"attempts_scored": len(scored), "resolved": resolved,
                "resolved_rate": round(resolved / len(scored), 4) if scored else None}


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [EvalAttemptsStage, EvalStage]

