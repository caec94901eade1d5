"""The live display of a long run: per-stage counts, LLM spend and its rate, containers open, an ETA."""

from __future__ import annotations

from pathlib import Path

from helpers import TEST_PLUGIN, run_cli, write_yaml
from termigen_core.progress import RunProgress, format_duration
from termigen_core.status import StepStatus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_counts_steps_left_at_the_rate_of_steps_worked() -> None:
    clock = Clock()
    progress = RunProgress(clock)
    progress.stages, progress.planned_items = 3, 10  # a source and two stages: 20 steps
    assert progress.eta_s() is None  # no rate yet
    for _ in range(4):  # done in an earlier invocation: free, and no rate
        progress.step(1, StepStatus.SKIPPED)
    assert progress.first_work is None and progress.remaining_steps() == 16
    clock.now += 10
    progress.step(1, StepStatus.DONE)
    clock.now += 10
    progress.step(1, StepStatus.REJECTED)  # its stage-2 step will never run
    progress.step(1, StepStatus.DONE)
    progress.step(1, StepStatus.DONE)
    assert progress.remaining_steps() == 20 - 8 - 1
    assert progress.eta_s() == 11 / (4 / 10)  # 4 steps worked in the 10 s since the first
    progress.step(2, StepStatus.FAILED)  # at the last stage: nothing later to cancel
    assert progress.cancelled_steps == 1


def test_title_shows_spend_rate_containers_and_eta() -> None:
    clock = Clock()
    progress = RunProgress(clock)
    progress.stages, progress.planned_items = 2, 2
    clock.now += 60
    progress.llm_call(0.5)
    progress.llm_call(None)  # unpriced: counted, costs nothing known
    progress.sandboxes_open = 3
    progress.step(1, StepStatus.DONE)
    title = progress.title()
    assert "1m00s" in title and "2 LLM calls (2/min)" in title and "$0.5000 ($30.00/h)" in title
    assert "3 container(s) open" in title and "ETA" in title
    progress.step(1, StepStatus.DONE)
    assert "finishing" in progress.title()


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_forced_live_display_ends_with_the_counts_and_figures(tmp_path: Path) -> None:
    """`termigen run --progress` (the display a terminal gets) shows the stage counts and the title figures."""
    (tmp_path / "script.yaml").write_text("- role: worker\n  response: fine\n")
    config = write_yaml(tmp_path / "p.yaml", {
        "version": 1, "run": {"out": str(tmp_path / "run")},
        "stages": [{"use": "count", "with": {"n": 3}}, {"use": "ask", "with": {"fail_items": ["item-001"]}}],
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
    })
    result = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), "--progress", timeout=120)
    assert "Traceback" not in result.stderr
    shown = result.stderr
    assert "LLM calls" in shown and ("ETA" in shown or "finishing" in shown)
    assert "container(s) open" not in shown  # a run that opens no sandbox shows none
    row = next(line for line in shown.splitlines() if "│ 1 ask" in line)
    cells = [c.strip() for c in row.replace("│", "|").split("|") if c.strip()]
    assert cells[:5] == ["1 ask", "2", "0", "0", "1"]  # done, skipped, rejected, failed


def test_sandbox_events_reach_plugins_and_the_display(tmp_path: Path, docker_client) -> None:
    """Every ctx.sandbox is one open and one close event (real containers); the display counts them."""
    recorder = tmp_path / "recorder.py"
    log = tmp_path / "events.txt"
    recorder.write_text(
        "from termigen_core import hookimpl\n"
        f"LOG = {str(log)!r}\n"
        "@hookimpl\n"
        "def termigen_sandbox_event(run_id, item_id, stage_name, event, image):\n"
        "    with open(LOG, 'a') as out:\n"
        "        out.write(f'{item_id} {stage_name} {event} {image}\\n')\n"
    )
    config = write_yaml(tmp_path / "p.yaml", {
        "version": 1, "run": {"out": str(tmp_path / "run")},
        "stages": [{"use": "count", "with": {"n": 2}}, {"use": "shell"}],
    })
    result = run_cli("run", str(config), "--plugin", str(TEST_PLUGIN), "--plugin", str(recorder), "--progress", timeout=300)
    assert result.returncode == 0, result.stderr
    events = sorted(line.split()[:3] for line in log.read_text().splitlines())
    assert events == [["item-000", "shell", "close"], ["item-000", "shell", "open"],
                      ["item-001", "shell", "close"], ["item-001", "shell", "open"]]
    assert "0 container(s) open" in result.stderr  # both closed by the end, and counted
