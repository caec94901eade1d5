"""browse.html on the quickstart's real run, in a real headless Chromium: the list, its search and
filters, a task page, a trajectory page, and model-written text that tries to be markup.

Expected values come from the run's store (``run.db``) read here, never from numbers written
into the test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import ROOT, prune_run_images, run_cli
from termigen_core.items import Item
from termigen_core.records import TrajectoryRecord
from termigen_core.status import StepStatus
from termigen_core.store import SOURCE_ITEM, RunStore
from termigen_plugins.exporters.sft_format import step_weight
from termigen_plugins.viewer.browse_page import write_browse_html

#: the run-end pages (report.html, browse.html), which the suite's other runs skip
PAGES = {"TERMIGEN_HTML_PAGES": "1"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOSTILE_COMMAND = "echo '</script><script>alert(1)</script>'"
HOSTILE_OUTPUT = "<img src=x onerror=\"window.__pwned=1;alert(2)\">\n\x1b[31mred\x1b[0m done"
HOSTILE_THOUGHT = "<b>bold?</b> & <!-- comment --> \u2028 line separator"
HOSTILE_TITLE = "<script>alert(3)</script> Hostile title"
PLANTED_TASK = "hostile-00000001"
PLANTED_TRAJECTORY = f"{PLANTED_TASK}.0"
PLANTED_PASS_RATIO = 0.25


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The README's quickstart, run once for the module (real Docker, scripted model); its images removed after."""
    work = tmp_path_factory.mktemp("quickstart")
    shutil.copy(ROOT / "examples" / "quickstart.yaml", work / "quickstart.yaml")
    shutil.copy(ROOT / "examples" / "quickstart.script.yaml", work / "quickstart.script.yaml")
    run_dir = work / "run"
    result = run_cli("run", str(work / "quickstart.yaml"), "--out", str(run_dir), timeout=1200, env=PAGES)
    try:
        assert result.returncode == 0, result.stderr[-4000:]
        yield run_dir
    finally:
        prune_run_images(run_dir)


# --- the store, read independently of the page's own records -----------------------------


def store_rows(run_dir: Path) -> list[dict[str, Any]]:
    store = RunStore(run_dir)
    try:
        return store.stage_rows()
    finally:
        store.close()


def produced(rows: list[dict[str, Any]]) -> dict[str, Item]:
    """Every item some step produced, as the last step that produced it left it."""
    out: dict[str, Item] = {}
    for row in sorted(rows, key=lambda r: r["stage_index"]):
        if row["status"] == StepStatus.DONE:
            for item in RunStore.outputs_of(row):
                out[item.id] = item
    return out


def all_item_ids(run_dir: Path) -> set[str]:
    rows = store_rows(run_dir)
    return {r["item_id"] for r in rows if r["item_id"] != SOURCE_ITEM} | set(produced(rows))


def trajectories(run_dir: Path) -> dict[str, TrajectoryRecord]:
    return {item_id: item.trajectory() for item_id, item in produced(store_rows(run_dir)).items() if item.has_trajectory()}


def categories(run_dir: Path) -> dict[str, str]:
    """Item id → category: from each item's seed (kept or dropped), inherited by what it became."""
    rows = store_rows(run_dir)
    root: dict[str, str] = {}
    for item in produced(rows).values():
        if "category" in item.data:
            root[item.id] = item.data["category"]
    for row in rows:
        detail = json.loads(row["detail"]) if (row["detail"] or "").startswith("{") else {}
        if isinstance(detail.get("seed"), dict):
            root[row["item_id"]] = detail["seed"]["category"]
    out = {}
    for item_id in all_item_ids(run_dir):
        lineage = item_id.split(".")[0]
        out[item_id] = root.get(item_id) or root.get(lineage, "")
    return out


def configured_train_on(run_dir: Path) -> str:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["dataset"]["train_on"]


# --- a planted item whose model-written text is hostile ------------------------------------


def plant_hostile_item(run_dir: Path, *, task_id: str = PLANTED_TASK) -> str:
    """Add a task and its trajectory to ``run_dir``'s store, with markup and ANSI codes in what
    the model wrote; returns the trajectory's item id."""
    rows = store_rows(run_dir)
    last = max(r["stage_index"] for r in rows)
    items = produced(rows)
    template = next(item for item in items.values() if item.has_trajectory())
    record = template.trajectory()
    steps = [step.model_copy(deep=True) for step in record.steps]
    steps[0].command, steps[0].output, steps[0].thought = HOSTILE_COMMAND, HOSTILE_OUTPUT, HOSTILE_THOUGHT
    trajectory = record.model_copy(update={"id": f"{task_id}.0", "task_id": task_id, "steps": steps,
                                           "pass_ratio": PLANTED_PASS_RATIO, "resolved": False})
    task = {**template.data["task"], "id": task_id, "title": HOSTILE_TITLE}
    task_item = Item(id=task_id, kind="task", data={**items[template.parent].data, "task": task})
    child = Item(id=f"{task_id}.0", kind="trajectory", parent=task_id, data={"task": task, "trajectory": trajectory.model_dump()})
    store = RunStore(run_dir)
    try:
        names = {r["stage_index"]: r["stage_name"] for r in rows}
        for index, outputs in ((last - 1, [task_item]), (last, [child])):
            store.mark_running(task_id, index, names[index])
            store.finish_stage(task_id, index, StepStatus.DONE, outputs=outputs)
    finally:
        store.close()
    return child.id


@pytest.fixture(scope="module")
def planted_run(quickstart_run, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("planted") / "run"
    shutil.copytree(quickstart_run, copy, ignore=shutil.ignore_patterns("work", "export"))
    plant_hostile_item(copy)
    write_browse_html(copy)
    return copy


@pytest.fixture(scope="module")
def browse_file(quickstart_run) -> Path:
    return write_browse_html(quickstart_run)


def visible_ids(page) -> set[str]:
    return set(page.eval_on_selector_all("#items tr.item-row:not([hidden])", "rows => rows.map(r => r.dataset.id)"))


# --- the list ------------------------------------------------------------------------------


def test_the_run_leaves_its_browser_page(page, quickstart_run):
    """Every run writes browse.html at its end (before any test here rewrites it)."""
    written = quickstart_run / "browse.html"
    assert written.is_file()
    page.open(written)
    assert visible_ids(page) == all_item_ids(quickstart_run)
    page.assert_clean()


def test_the_list_shows_every_item_of_the_store(page, quickstart_run, browse_file):
    page.open(browse_file)
    expected = all_item_ids(quickstart_run)
    assert visible_ids(page) == expected
    assert page.locator("#count").inner_text() == f"{len(expected)} of {len(expected)} items"
    rows = store_rows(quickstart_run)
    for row in rows:
        if row["status"] in (StepStatus.REJECTED, StepStatus.FAILED) and row["item_id"] != SOURCE_ITEM:
            listed = page.locator(f'#items tr[data-id="{row["item_id"]}"]')
            assert listed.get_attribute("data-status") == row["status"]
            assert row["reason"] in listed.locator(".reason").inner_text()
    assert rows and any(r["status"] == StepStatus.REJECTED for r in rows)  # the quickstart rejects a seed and a spec
    page.screenshot_to("browse-list")
    page.assert_clean()


def test_search_and_filters_change_the_rows_as_the_store_says(page, planted_run):
    page.open(planted_run / "browse.html")
    everything = all_item_ids(planted_run)
    records = trajectories(planted_run)
    cats = categories(planted_run)
    rows = store_rows(planted_run)

    page.fill("#f-search", "e11bbd33")
    assert visible_ids(page) == {i for i in everything if "e11bbd33" in i}
    reason_word = "near-duplicate"
    page.fill("#f-search", reason_word)
    assert visible_ids(page) == {r["item_id"] for r in rows if reason_word in (r["reason"] or "")}
    page.fill("#f-search", "")
    assert visible_ids(page) == everything

    for category in sorted(set(cats.values())):
        page.select_option("#f-category", category)
        assert visible_ids(page) == {i for i, c in cats.items() if c == category}, category
    page.select_option("#f-category", "")

    for status in (StepStatus.REJECTED, StepStatus.DONE):
        page.select_option("#f-status", str(status))
        shown = visible_ids(page)
        if status == StepStatus.REJECTED:
            assert shown == {r["item_id"] for r in rows if r["status"] == StepStatus.REJECTED}
        else:
            assert set(records) <= shown and not shown & {r["item_id"] for r in rows if r["status"] == StepStatus.REJECTED}
    page.select_option("#f-status", "")

    modes = sorted({s.error_mode for t in records.values() for s in t.steps if s.intent == "error" and s.error_mode})
    assert modes  # the quickstart injects errors
    for mode in modes:
        page.select_option("#f-mode", mode)
        assert visible_ids(page) == {i for i, t in records.items() if any(s.error_mode == mode and s.intent == "error" for s in t.steps)}
    page.select_option("#f-mode", "")

    page.select_option("#f-resolved", "no")
    assert visible_ids(page) == {i for i, t in records.items() if not t.resolved} == {PLANTED_TRAJECTORY}
    page.select_option("#f-resolved", "yes")
    assert visible_ids(page) == {i for i, t in records.items() if t.resolved}
    page.select_option("#f-resolved", "")

    page.fill("#f-pass-max", "0.5")
    assert visible_ids(page) == {i for i, t in records.items() if t.pass_ratio <= 0.5}
    page.fill("#f-pass-max", "")
    page.fill("#f-pass-min", "0.5")
    assert visible_ids(page) == {i for i, t in records.items() if t.pass_ratio >= 0.5}

    page.select_option("#f-category", cats[PLANTED_TRAJECTORY])  # filters combine
    assert visible_ids(page) == {i for i, t in records.items() if t.pass_ratio >= 0.5 and cats[i] == cats[PLANTED_TRAJECTORY]}
    page.screenshot_to("browse-list-filtered")
    page.assert_clean()


def test_a_run_bigger_than_a_page_of_rows_shows_every_item_on_request(page, tmp_path):
    from support.synthetic_run import make_synthetic_run

    run_dir = make_synthetic_run(tmp_path / "big", items=650, trajectories=60, seed=3).run_dir
    page.open(write_browse_html(run_dir))
    expected = all_item_ids(run_dir)
    first = visible_ids(page)
    assert first < expected
    assert page.locator("#count").inner_text() == f"{len(expected)} of {len(expected)} items (the first {len(first)} shown)"
    while page.locator("#more").is_visible():
        page.click("#more")
    assert visible_ids(page) == expected
    failed = {r["item_id"] for r in store_rows(run_dir) if r["status"] == StepStatus.FAILED and r["item_id"] != SOURCE_ITEM}
    assert failed  # the synthetic run fails some steps, infrastructure ones among them
    page.select_option("#f-status", "failed")
    assert visible_ids(page) == failed
    page.screenshot_to("browse-big-run-failed")
    page.assert_clean()


# --- a trajectory --------------------------------------------------------------------------


def test_trajectory_pages_mark_injected_errors_recoveries_and_weights(page, quickstart_run, browse_file):
    train_on = configured_train_on(quickstart_run)
    records = trajectories(quickstart_run)
    assert records
    page.open(browse_file)
    for item_id, record in records.items():
        page.goto(f"{browse_file.as_uri()}#traj/{item_id}")
        assert page.locator("#trajectory").get_attribute("data-id") == item_id
        assert page.locator("#train-on").inner_text() == train_on
        assert page.locator("#pass-ratio").inner_text() == f"{record.pass_ratio:.2f}"
        cards = page.locator("article.step")
        assert cards.count() == len(record.steps)
        for step in record.steps:
            card = page.locator(f'article.step[data-step="{step.index}"]')
            injected = card.locator(".badge.injected")
            if step.intent == "error":
                assert injected.count() == 1 and injected.get_attribute("data-mode") == step.error_mode
                assert step.error_mode in injected.inner_text()
            else:
                assert injected.count() == 0
            recovery = card.locator(".badge.recovery")
            if step.recovers_from is not None:
                assert recovery.inner_text() == f"recovers from step {step.recovers_from + 1}"
            else:
                assert recovery.count() == 0
            assert card.locator(".badge.weight").get_attribute("data-weight") == str(step_weight(step, train_on))
            assert card.locator(".critic li").count() == len(step.critic)
            if step.command and step.action != "finish":
                assert card.locator("pre.command").inner_text() == step.command
        exports = page.locator("#exports li")
        sft = [e for e in json.loads((quickstart_run / "summary.json").read_text())["exports"] if "train_on" in e]
        assert sorted(exports.evaluate_all("li => li.map(x => x.dataset.exporter)")) == sorted(e["exporter"] for e in sft)
    richest = max(records, key=lambda i: len({s.error_mode for s in records[i].steps if s.error_mode}))
    page.goto(f"{browse_file.as_uri()}#traj/{richest}")
    page.click("#next")
    assert page.locator("#position").inner_text() == f"step 2 of {len(records[richest].steps)}"
    assert page.locator("article.step.current").get_attribute("data-step") == "1"
    page.keyboard.press("ArrowRight")
    assert page.locator("article.step.current").get_attribute("data-step") == "2"
    page.screenshot_to("browse-trajectory")
    page.assert_clean()


# --- a task --------------------------------------------------------------------------------


def test_task_pages_show_the_dockerfile_tests_solution_and_evidence(page, quickstart_run, browse_file):
    items = produced(store_rows(quickstart_run))
    tasks = {i: item.task() for i, item in items.items() if item.kind == "task"}
    assert tasks
    page.open(browse_file)
    for item_id, task in tasks.items():
        page.goto(f"{browse_file.as_uri()}#task/{item_id}")
        assert page.locator("#task h1").inner_text() == task.title
        assert page.locator("#dockerfile pre").inner_text() == task.environment["Dockerfile"]
        for path, text in task.tests.items():
            assert page.locator(f'#tests details[data-path="{path}"] pre').inner_text() == text
        assert page.locator("#solution pre").inner_text() == task.solution
        assert page.locator("#validation details.check").count() == len(task.validation.checks)
        assert page.locator("#build").count() == 1
        trajectories_of = [i for i, it in items.items() if it.parent == item_id]
        assert sorted(page.locator("#trajectories a").all_inner_texts()) == sorted(trajectories_of)
    repaired = max(tasks, key=lambda i: tasks[i].build.attempts)
    page.goto(f"{browse_file.as_uri()}#task/{repaired}")
    for error in tasks[repaired].build.errors:
        assert error.strip().splitlines()[0] in page.locator("#build .errors").inner_text()
    page.screenshot_to("browse-task")
    page.assert_clean()


def test_a_rejected_item_shows_why(page, quickstart_run, browse_file):
    rejected = [r for r in store_rows(quickstart_run) if r["status"] == StepStatus.REJECTED]
    assert rejected
    page.open(browse_file)
    for row in rejected:
        page.goto(f"{browse_file.as_uri()}#task/{row['item_id']}")
        assert page.locator("#reason").inner_text() == row["reason"]
        assert page.locator(f'#history tr[data-stage="{row["stage_name"]}"]').inner_text().count("rejected") == 1
    page.goto(f"{browse_file.as_uri()}#traj/no-such-item")
    assert page.locator("#missing h1").inner_text() == "No such item"
    page.assert_clean()


# --- hostile text --------------------------------------------------------------------------


def test_hostile_model_text_renders_as_text_and_runs_nothing(page, planted_run):
    html = (planted_run / "browse.html").read_text(encoding="utf-8")
    assert "</script><script>alert(1)" not in html and "<img src=x" not in html
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.open(planted_run / "browse.html")
    assert page.locator(f'#items tr[data-id="{PLANTED_TASK}"] td.title').inner_text() == HOSTILE_TITLE
    page.goto(f"{(planted_run / 'browse.html').as_uri()}#traj/{PLANTED_TRAJECTORY}")
    first = page.locator('article.step[data-step="0"]')
    assert first.locator("pre.command").inner_text() == HOSTILE_COMMAND
    output = first.locator("pre.output").inner_text()
    assert output.startswith('<img src=x onerror="window.__pwned=1;alert(2)">')
    assert "\\x1b[31mred\\x1b[0m done" in output  # ANSI codes shown, not interpreted
    assert "<b>bold?</b> & <!-- comment -->" in first.locator(".thought").inner_text()
    assert page.locator("img, b, #app script").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    page.goto(f"{(planted_run / 'browse.html').as_uri()}#task/{PLANTED_TASK}")
    assert page.locator("#task h1").inner_text() == HOSTILE_TITLE
    page.goto(f"{(planted_run / 'browse.html').as_uri()}#traj/{PLANTED_TRAJECTORY}")
    assert dialogs == []
    page.screenshot_to("browse-hostile")
    page.assert_clean()
