"""The ``trajectories`` stage: error-correction trajectories of the BashAgent on built tasks (paper §3.3).

For each task item it runs ``per_task`` episodes, each in ONE fresh container of
the task's built image (a persistent shell: the agent's commands build on each
other), and emits one ``trajectory`` item per episode with
``data = {"task": <TaskRecord>, "trajectory": <TrajectoryRecord>}``.

Per step (see :mod:`termigen_plugins.agent.collect`): an intent is sampled
(Bernoulli(``injection_rate``) from the item's seeded RNG, so a run is
reproducible and a resume samples the same intents); on an error intent a mode
is drawn, by weight, among the enabled error modes that apply to the task; the
generator (role ``agent``) writes the step with private guidance; the critic
(role ``critic``) accepts or rejects it (rejections are regenerated with the
feedback, up to ``max_regenerations``); every candidate is checked for leaks
of the private guidance first (a leak counts as a rejection). After an error,
the next correct step is told privately to diagnose and recover. When the
critic never accepts: an injected error falls back to a correct step; a correct
step keeps its last candidate that passed the leak check (noted in the stats).
With ``critic_on_correct_steps: false`` the critic reviews injected errors only
(a correct step is taken once it passes the mechanical checks): the critic exists
to vet planned mistakes, and at a low injection rate plain steps are most of its calls.

The agent's own options (:class:`AgentOptions`) and its construction
(:func:`build_agent`) are shared with the ``eval`` stage, so a model is evaluated
with exactly the prompt and action format its training data was collected with.

After the episode the task's tests run in the same container; the trajectory
records ``resolved`` and ``pass_ratio`` and is kept either way (failed
trajectories help training; exporters filter with ``min_pass_ratio``). Only the
generator's reply is recorded (thought, command) with the agent's public system
prompt; intent, mode and critic verdicts are labels on the step.

With ``observations: simulated`` (the paper's RQ1 baseline) no container is
opened for the episode: the ``simulator`` role writes each command's output
(:mod:`termigen_plugins.executors.simulated`), and the commands are replayed in
a fresh container afterwards so the tests score what they really do.

The run report gets :func:`termigen_plugins.agent.stats.trajectory_statistics`.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from termigen_core import hookimpl
from termigen_core.components import ComponentConfig, ComponentRef, Stage, ref_field
from termigen_core.context import RecordingSandbox
from termigen_core.errors import ComponentNotFound, ConfigIssue, Reject
from termigen_core.items import Item
from termigen_core.records import TaskRecord, TrajectoryRecord
from termigen_core.suggest import did_you_mean
from termigen_plugins.agent.agent import AgentSettings, BashAgent
from termigen_plugins.agent.collect import Collector, CollectSettings, ModeSpec, Prompts
from termigen_plugins.agent.formats import TOOLS, get_format
from termigen_plugins.agent.sampling import IntentSampler, trajectory_seeds
from termigen_plugins.agent.scoring import run_tests
from termigen_plugins.agent.stats import trajectory_statistics
from termigen_plugins.agent.tools import tools_used
from termigen_plugins.error_modes import mode_applies
from termigen_plugins.executors.simulated import SimulatedSandbox, replay
from termigen_plugins.verifiers.leaks import LeakScanner

if TYPE_CHECKING:
    from termigen_core.context import StageContext
    from termigen_core.llm import LLMClient
    from termigen_core.plugins import ComponentRegistry
    from termigen_core.sandbox import Sandbox


class AgentOptions(ComponentConfig):
    """The BashAgent's settings, shared by every stage that runs it (``trajectories``, ``eval``).

    One definition, so that a model is evaluated with exactly the prompt, action
    format and limits that its training trajectories were collected with.
    """

    max_steps: int = Field(default=50, ge=1, le=1000, description="turns per episode")
    command_timeout_s: float = Field(default=60, gt=0, le=3600, description="time limit of one command")
    agent_timeout_s: float | None = Field(default=None, gt=0, description="command time per episode (default: the task's agent_timeout_s)")
    test_timeout_s: float | None = Field(default=None, gt=0, description="time limit of the test run (default: the task's)")
    agent_format: Literal["tool_calls", "hermes"] = Field(default="tool_calls", description="how the agent writes its calls")
    max_history_chars: int = Field(default=60_000, ge=2_000, description="conversation size beyond which old observations are cut")
    max_output_chars: int = Field(default=10_000, ge=200, description="output shown per command (head and tail kept)")
    prompts_dir: Path | None = Field(default=None, description="folder of replacement prompt templates (same file names)")


def build_agent(cfg: AgentOptions, record: TaskRecord, llm: LLMClient) -> BashAgent:
    """The BashAgent for one episode on ``record``, as ``cfg`` configures it."""
    return BashAgent(
        llm, get_format(cfg.agent_format),
        AgentSettings(record.workdir, cfg.max_steps, cfg.command_timeout_s, cfg.max_history_chars, cfg.max_output_chars),
        system_template=Prompts(cfg.prompts_dir).text("system.txt"),
    )


class TrajectoriesConfig(AgentOptions):
    per_task: int = Field(default=1, ge=1, le=100, description="trajectories collected per task")
    injection_rate: float = Field(default=0.2, ge=0, le=1, description="probability that a step is an injected error")
    error_modes: list[ComponentRef] | None = ref_field(
        "error_mode", default=None, description="error modes to inject: NAME or {use: NAME, with: {...}} (default: every installed one)"
    )
    mode_weights: dict[str, float] = Field(default_factory=dict, description="mode → weight, overriding the mode's own (0 disables)")
    max_regenerations: int = Field(default=3, ge=0, le=20, description="regenerations of a step the critic rejects")
    critic_on_correct_steps: bool = Field(
        default=True,
        description="ask the critic about steps that inject nothing (false: only injected errors are reviewed; "
                    "with injection_rate 0 the critic is never asked)",
    )
    min_steps_before_finish: int = Field(default=1, ge=0, description="commands required before finish is accepted")
    leak_patterns: list[str] = Field(default_factory=list, description="extra regexes that count as leaked private guidance")
    observations: Literal["real", "simulated"] = Field(
        default="real",
        description="real: commands run in the task's container; simulated: the 'simulator' role writes each output "
                    "(the paper's RQ1 baseline), and the commands are replayed in a real container to score the trajectory",
    )


class TrajectoriesStage(Stage):
    name = "trajectories"
    description = "BashAgent episodes with Generator/Critic error injection on built tasks, scored by their tests (§3.3)."
    Config = TrajectoriesConfig
    accepts = ("task",)
    produces = ("trajectory",)
    roles = ("agent", "critic")
    uses_executor = True
    uses_task_image = True

    config: TrajectoriesConfig

    @classmethod
    def roles_for(cls, config: ComponentConfig) -> tuple[str, ...]:
        """No critic role when it would never be asked (no injection, correct steps not reviewed); a simulator when simulating."""
        assert isinstance(config, TrajectoriesConfig)
        roles = cls.roles if config.injection_rate > 0 or config.critic_on_correct_steps else ("agent",)
        return (*roles, "simulator") if config.observations == "simulated" else roles

    @classmethod
    def check_config(cls, config: ComponentConfig, registry: ComponentRegistry) -> list[ConfigIssue]:
        assert isinstance(config, TrajectoriesConfig)
        # the error_modes references (names, options) are checked by the core
        installed = registry.names("error_mode")
        issues: list[ConfigIssue] = []
        named = [ref.use for ref in config.error_modes] if config.error_modes is not None else installed
        for name, weight in config.mode_weights.items():
            if name not in installed:
                issues.append(ConfigIssue(f"mode_weights.{name}", f"no error mode named {name!r}{did_you_mean(name, installed)}"))
            elif weight < 0:
                issues.append(ConfigIssue(f"mode_weights.{name}", "weights must be 0 or more"))
        if any(n not in installed for n in named):
            return issues  # the unknown name is reported with its path; the weights are moot
        weights = [config.mode_weights.get(n, _weight(registry, n)) for n in named]
        if config.injection_rate > 0 and not issues and not any(w > 0 for w in weights):
            issues.append(ConfigIssue("error_modes", "no error mode is enabled with a positive weight; set injection_rate: 0 for error-free trajectories"))
        return issues

    def process(self, item: Item, ctx: StageContext) -> list[Item]:
        record = item.task()
        record.require_image(self.name)
        if not record.has_tests:
            raise Reject("the task has no tests to score trajectories with")
        modes = self._modes(ctx, record)
        seeds = trajectory_seeds(ctx.rng, self.config.per_task)  # ctx.rng is a fresh generator per access
        children = []
        unusable: list[str] = []
        for index, seed in enumerate(seeds):
            trajectory = self._collect(item, record, ctx, modes, index, seed)
            if isinstance(trajectory, str):
                unusable.append(f"trajectory {index}: {trajectory}")
                continue
            children.append(item.child(index, kind="trajectory", data={"task": item.data["task"]}).with_trajectory(
                trajectory, trajectory_seed=seed, resolved=trajectory.resolved, pass_ratio=trajectory.pass_ratio,
            ))
        if not children:
            raise Reject("no usable trajectory: " + "; ".join(unusable), {"unusable": unusable})
        for reason in unusable:
            ctx.log("dropped %s", reason)
        return children

    def _modes(self, ctx: StageContext, record: TaskRecord) -> dict[str, tuple[ModeSpec, float]]:
        """Enabled modes that apply to this task, with their weights (weight 0 drops a mode)."""
        refs = self.config.error_modes
        if refs is None:
            refs = [ComponentRef(use=name) for name in ctx.registry.names("error_mode")]
        modes: dict[str, tuple[ModeSpec, float]] = {}
        for ref in refs:
            try:
                mode = ctx.component(ref, "error_mode")  # built once per run
            except ComponentNotFound:
                continue  # disabled since the config was checked
            weight = self.config.mode_weights.get(ref.use, getattr(mode, "weight", 1.0))
            if weight > 0 and mode_applies(type(mode), record):
                modes[ref.use] = (ModeSpec.of(mode), float(weight))
        return modes

    def _collect(self, item: Item, record: TaskRecord, ctx: StageContext, modes: dict[str, tuple[ModeSpec, float]],
                 index: int, seed: int) -> TrajectoryRecord | str:
        """One episode, scored; or why it is unusable (the agent never produced a usable action).

        Such an episode is never kept as training data: zero commands tell nothing,
        whatever the tests say about the untouched environment.
        """
        cfg = self.config
        prompts = Prompts(cfg.prompts_dir)
        agent_llm, critic_llm = ctx.llm("agent"), ctx.llm("critic")
        agent = build_agent(cfg, record, agent_llm)
        collector = Collector(
            agent, critic_llm,
            IntentSampler(random.Random(seed), cfg.injection_rate, [(n, w) for n, (_, w) in modes.items()]),
            {n: spec for n, (spec, _) in modes.items()},
            LeakScanner(ctx.registry.names("error_mode"), extra_patterns=cfg.leak_patterns),
            CollectSettings(cfg.max_regenerations, cfg.min_steps_before_finish, cfg.agent_timeout_s or float(record.agent_timeout_s),
                            cfg.critic_on_correct_steps),
            prompts,
        )
        scratch = ctx.workdir() / f"trajectory-{index}"
        simulated: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            if cfg.observations == "simulated":  # no container for the episode: the simulator answers
                box: Sandbox = stack.enter_context(RecordingSandbox(SimulatedSandbox(ctx.llm("simulator"), record), ctx))
            else:
                box = stack.enter_context(ctx.sandbox(record.build.image or "", workdir=record.workdir))
            episode = collector.run(box, record.instruction)
            if episode.stopped in ("unparseable", "no_acceptable_step") and episode.stats["commands"] == 0:
                why = "no parseable action" if episode.stopped == "unparseable" else "no step the checks and critic accepted"
                return f"{why} after {len(episode.steps)} step(s) ({episode.detail or episode.stopped})"
            if cfg.observations == "simulated":  # scored by what its commands really do (see executors.simulated)
                stack.close()
                box = stack.enter_context(ctx.sandbox(record.build.image or "", workdir=record.workdir))
                simulated = replay(box, episode.steps, cfg.command_timeout_s, cfg.max_output_chars).stats()
            card = run_tests(box, record, scratch, cfg.test_timeout_s, read_blob=ctx.store.read_artifact)
        ctx.log("trajectory %d: %d steps (%s), %d/%d tests passed", index, len(episode.steps), episode.stopped, card.passed, card.total)
        return TrajectoryRecord(
            id=f"{item.id}.{index}", task_id=record.id, run_id=ctx.run_id, model=agent_llm.model, seed=seed,
            agent_format=cfg.agent_format, system_prompt=agent.system_prompt, instruction=record.instruction,
            tools=TOOLS, steps=episode.steps, finished=episode.finished, resolved=card.resolved,
            pass_ratio=card.pass_ratio, tests_passed=card.passed, tests_total=card.total, test_output_tail=card.output_tail,
            tools_used=tools_used(s.command for s in episode.steps if s.action == "bash"),
            stats={**episode.stats, "stopped_detail": episode.detail, "critic_model": critic_llm.model, "injection_rate": cfg.injection_rate,
                   "modes_applicable": sorted(modes), "test_exit_code": card.exit_code, "test_timed_out": card.timed_out,
                   "observations": cfg.observations, **simulated},
        )

    def summarize(self, outputs: list[Item]) -> dict[str, Any]:
        trajectories = [o for o in outputs if o.kind == "trajectory"]
        return trajectory_statistics(trajectories) if trajectories else {}


def _weight(registry: ComponentRegistry, name: str) -> float:
    return float(getattr(registry.get("error_mode", name), "weight", 1.0))


@hookimpl
def register_stages() -> list[type[Stage]]:
    return [TrajectoriesStage]
