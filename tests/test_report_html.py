"""report.html, opened as a person would: the quickstart's real run in headless Chromium, and runs with little or no data.

The quickstart runs once for the module (real Docker, scripted model). The page must be one
self-contained file (nothing fetched from the network), load with no console error, show every
section, and show the numbers the run store holds; runs stopped early, empty runs, a live run
(its lock held by another process) and a large synthetic run must render too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from support.synthetic_run import make_synthetic_run

from helpers import ROOT, read_jsonl, run_cli
from termigen_core.errors import TermigenError
from termigen_core.llm import PARSE_RETRY_PREFIX
from termigen_core.status import StepStatus
from termigen_core.store import RunStore
from termigen_plugins.viewer.report_page import write_report_html
from termigen_plugins.viewer.stats import reason_pattern
from termigen_plugins.viewer.tool_domains import OTHER, domain_of

#: the run-end pages (report.html, browse.html), which the suite's other runs skip
PAGES = {"TERMIGEN_HTML_PAGES": "1"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SECTIONS = ("funnel", "rejections", "llm", "tasks", "trajectories", "tools", "taxonomy")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, docker_client):
    """The README's quickstart, run once for the module.

    Its task images are released with `termigen images prune --run`, which keeps an image another
    run still holds: the quickstart's task tags are content-addressed, so a concurrent quickstart
    (another test module) builds the very same tags, and a forced `docker rmi` would pull them from
    under it.
    """
    work = tmp_path_factory.mktemp("report-quickstart")
    for name in ("quickstart.yaml", "quickstart.script.yaml"):
        shutil.copy(ROOT / "examples" / name, work / name)
    run_dir = work / "run"
    result = run_cli("run", str(work / "quickstart.yaml"), "--out", str(run_dir), timeout=1200, env=PAGES)
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        yield run_dir
    finally:
        release_images(run_dir)


def release_images(run_dir: Path) -> None:
    """Remove the task images a finished run built, unless another run still holds them."""
    if (run_dir / "run.db").exists():
        run_cli("images", "prune", "--run", str(run_dir), timeout=300)


class _References(HTMLParser):
    """Every element and every attribute that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "poster", "srcset", "data") and value:
                self.urls.append((tag, name, value))


def references(html: str) -> _References:
    parser = _References()
    parser.feed(html)
    return parser


def number(text: str) -> int:
    return int(text.strip().replace(",", ""))


def trajectories_in(run_dir: Path) -> set[str]:
    """Ids of the trajectories the run's finished steps produced, read from every done step's outputs."""
    store = RunStore(run_dir)
    try:
        return {item.id for row in store.stage_rows(StepStatus.DONE) for item in store.outputs_of(row) if item.has_trajectory()}
    finally:
        store.close()


def reasks_in(store: RunStore) -> int:
    """Paid calls that re-ask for a malformed reply, read from the ledger's requests one by one."""
    count = 0
    for call in store.llm_calls():
        if call["status"] != "ok" or call["source"] != "backend":
            continue
        last = json.loads(call["request"])["messages"][-1]["content"]
        count += isinstance(last, str) and last.startswith(PARSE_RETRY_PREFIX)
    return count


# --- the quickstart's run -------------------------------------------------------------------


def test_the_report_is_one_self_contained_file(quickstart_run):
    path = write_report_html(quickstart_run)
    assert path == quickstart_run / "report.html"
    html = path.read_text(encoding="utf-8")
    found = references(html)
    assert "script" not in found.tags and "link" not in found.tags and "iframe" not in found.tags
    for tag, attribute, url in found.urls:
        assert url.startswith(("#", "browse.html")), f"<{tag} {attribute}={url!r}> points outside the page"
    assert "@import" not in html and "@font-face" not in html
    assert not re.findall(r"url\((?!#)", html), "a url() that is not a reference inside the page"
    assert html.count('<svg role="img"') >= 10  # the plots are inline SVG
    assert not list(quickstart_run.glob(".report-*.tmp")), "the atomic write left its temporary file"


def test_the_report_shows_the_stores_numbers_in_chromium(quickstart_run, page):
    write_report_html(quickstart_run)
    page.open(quickstart_run / "report.html")
    for section in SECTIONS:
        assert page.locator(f"section#{section} h2").count() == 1, f"section {section} is missing"
    store = RunStore(quickstart_run)
    try:
        stage_report = store.stage_report()
        paid_calls = store.llm_call_count()
        reasks = reasks_in(store)
        rejected = store.stage_rows(StepStatus.REJECTED)
    finally:
        store.close()
    for entry in stage_report:
        row = page.locator(f'#funnel-table tr[data-stage="{entry["stage"]}"]')
        for column in ("in", "out", "done", "rejected", "failed_infrastructure", "failed_task", "pending"):
            assert number(row.locator(f'td[data-col="{column}"]').inner_text()) == entry[column], (entry["stage"], column)
    assert number(page.locator("#llm-paid-calls").inner_text()) == paid_calls
    assert number(page.locator("#llm-reasks").inner_text()) == reasks == 1  # the README's one re-asked malformed spec
    assert number(page.locator("#card-rejected b").inner_text()) == len(rejected) == 2
    reasons = page.locator("#reasons-table").inner_text()
    assert "near-duplicate of seed" in reasons and "spec below min_score N after N rounds" in reasons
    assert number(page.locator("#card-build-repaired b").inner_text()) == 1  # the first task's Dockerfile is repaired

    trajectories = [t["data"]["trajectory"] for t in read_jsonl(quickstart_run / "export" / "trajectories.jsonl")]
    assert number(page.locator("#traj-count").inner_text()) == len(trajectories)
    assert number(page.locator("#traj-resolved").inner_text()) == sum(t["resolved"] for t in trajectories)
    errors = [s for t in trajectories for s in t["steps"] if s["intent"] == "error"]
    assert number(page.locator("#traj-errors").inner_text()) == len(errors)
    tools = {tool for t in trajectories for tool in t["tools_used"]}
    assert number(page.locator("#tools-distinct").inner_text()) == len(tools)
    table = page.locator("#trajectory-table")
    for trajectory in trajectories:
        assert table.locator(f'a[href="browse.html#traj/{trajectory["id"]}"]').count() == 1
        assert table.locator(f'a[href="browse.html#task/{trajectory["task_id"]}"]').count() == 1
    covered = {row.get_attribute("data-category") for row in page.locator("#categories-table tbody tr").all()}
    assert covered == {"data_processing", "system_admin", "algorithms"}  # the quickstart's three categories
    assert page.locator("#not-covered li").count() == 8  # the built-in taxonomy's other eight
    assert page.locator("svg.plot").count() >= 10
    page.screenshot_to("report-quickstart")
    page.assert_clean()


def test_every_tool_of_the_quickstart_has_a_domain(quickstart_run):
    trajectories = [t["data"]["trajectory"] for t in read_jsonl(quickstart_run / "export" / "trajectories.jsonl")]
    tools = {tool for t in trajectories for tool in t["tools_used"]}
    assert tools and {tool: domain_of(tool) for tool in tools if domain_of(tool) == OTHER} == {}


def test_the_report_of_a_live_run_is_written(quickstart_run, tmp_path, page):
    """Another process holds the run lock (a run going on): the report is still written, and says it is a snapshot."""
    live = tmp_path / "live"
    shutil.copytree(quickstart_run, live, ignore=shutil.ignore_patterns("export", "work", "artifacts"))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom termigen_core.runlock import RunLock\n"
         "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('locked', flush=True); time.sleep(120)", str(live)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        write_report_html(live)
        page.open(live / "report.html")
        assert page.locator("#live-badge").count() == 1
        assert number(page.locator("#traj-count").inner_text()) == len(trajectories_in(live))
        page.assert_clean()
        if (ROOT / "plugins" / "viewer" / "browse_page.py").exists():
            result = run_cli("report", str(live))
            assert result.returncode == 0, result.stderr
            assert f"wrote {live.resolve() / 'report.html'}" in result.stdout
    finally:
        holder.terminate()
        holder.wait(timeout=30)


# --- runs with little or no data ----------------------------------------------------------------


def test_a_run_stopped_after_two_stages_renders(tmp_path, page):
    """Only seeds and propose (no container, no trajectory): every later section says it has no data."""
    config = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    config["stages"] = config["stages"][:2]
    config["exports"] = []
    (tmp_path / "two-stages.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    shutil.copy(ROOT / "examples" / "quickstart.script.yaml", tmp_path / "quickstart.script.yaml")
    result = run_cli("run", str(tmp_path / "two-stages.yaml"), "--out", str(tmp_path / "run"), timeout=600, env=PAGES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    write_report_html(tmp_path / "run")
    page.open(tmp_path / "run" / "report.html")
    assert page.locator("#funnel-table tbody tr").count() == 2
    assert "no trajectories in this run" in page.locator("section#trajectories").inner_text()
    assert "no task was built" in page.locator("section#tasks").inner_text()
    assert number(page.locator("#llm-paid-calls").inner_text()) > 0
    page.screenshot_to("report-stopped-after-two-stages")
    page.assert_clean()


def test_an_empty_run_renders(tmp_path, page):
    RunStore(tmp_path / "empty").close()
    write_report_html(tmp_path / "empty")
    page.open(tmp_path / "empty" / "report.html")
    text = page.locator("main").inner_text()
    for message in ("no items in this run yet", "no rejected or failed items", "no LLM calls in this run", "no trajectories in this run"):
        assert message in text
    page.screenshot_to("report-empty-run")
    page.assert_clean()


def test_a_folder_that_is_not_a_run_is_refused_clearly(tmp_path):
    with pytest.raises(TermigenError, match="not a run directory"):
        write_report_html(tmp_path)
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and "is not a run directory" in result.stderr and "Traceback" not in result.stderr


def test_a_large_synthetic_run_renders_with_capped_tables(tmp_path, page):
    made = make_synthetic_run(tmp_path / "big", items=400, trajectories=150, seed=3)
    store = RunStore(made.run_dir)
    try:
        failed_or_rejected = len(store.stage_rows(StepStatus.REJECTED)) + len(store.stage_rows(StepStatus.FAILED))
        stage_report = store.stage_report()
    finally:
        store.close()
    write_report_html(made.run_dir)
    page.open(made.run_dir / "report.html")
    assert number(page.locator("#traj-count").inner_text()) == made.trajectories == 150
    assert page.locator("#trajectory-table tbody tr").count() == 50  # the rest are in browse.html
    cards = sum(number(page.locator(f"#{card} b").inner_text()) for card in ("card-rejected", "card-failed-infra", "card-failed-task"))
    assert cards == failed_or_rejected
    last = stage_report[-1]
    assert number(page.locator(f'#funnel-table tr[data-stage="{last["stage"]}"] td[data-col="pending"]').inner_text()) == last["pending"]
    assert page.locator("#reasons-table tbody tr").count() < failed_or_rejected  # reasons are grouped, not listed one by one
    page.screenshot_to("report-synthetic-400")
    page.assert_clean()


def test_run_data_is_shown_as_text_never_as_markup(tmp_path, page):
    """A reason or category holding markup (a model wrote it) is escaped: no script runs, the text is shown."""
    made = make_synthetic_run(tmp_path / "run", items=30, trajectories=5, seed=1)
    store = RunStore(made.run_dir)
    try:
        store.record_outcome("evil-1", 1, "propose", StepStatus.REJECTED, "<script>window.pwned = 1</script> $x$ & <b>bold</b>")
    finally:
        store.close()
    write_report_html(made.run_dir)
    page.open(made.run_dir / "report.html")
    assert page.evaluate("window.pwned") is None
    assert page.locator("script").count() == 0 and page.locator("#reasons-table b").count() == 0
    assert "<script>window.pwned = 1</script>" in page.locator("#reasons-table").inner_text()
    page.assert_clean()


def test_alike_reasons_group_together():
    assert reason_pattern("near-duplicate (similarity 0.778) of seed: Summarise HTTP codes") == reason_pattern(
        "near-duplicate (similarity 0.61) of seed: Parse cron lines") == "near-duplicate of seed"
    assert reason_pattern("build failed after 3 attempts: E: Unable to locate package 'gawk-x'") == reason_pattern(
        "build failed after 2 attempts: E: Unable to locate package 'libfoo'")
    assert reason_pattern("ValueError: invalid literal for int() with base 10: 'x'").startswith("ValueError: invalid literal")
    assert reason_pattern("") == "(no reason given)"


@pytest.mark.parametrize("command", ["eval", "audit"])
def test_the_report_of_an_eval_or_audit_run_renders(quickstart_run, tmp_path, page, command):
    """Runs of other pipelines (no seeds, no error injection; an audit has no model at all) still render."""
    out = tmp_path / command
    if command == "eval":
        args = ("eval", str(quickstart_run / "export" / "harbor"), "--model", "scripted-demo", "--backend", "scripted",
                "--script", str(ROOT / "examples" / "quickstart.eval.yaml"), "--agent-format", "hermes",
                "--attempts", "3", "--out", str(out), "--json")
    else:
        args = ("audit", str(quickstart_run / "export" / "harbor"), "--out", str(out), "--json", "--no-progress")
    try:
        result = run_cli(*args, timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        release_images(out)
    write_report_html(out)
    page.open(out / "report.html")
    for section in SECTIONS:
        assert page.locator(f"section#{section} h2").count() == 1
    store = RunStore(out)
    try:
        stage_report = store.stage_report()
    finally:
        store.close()
    assert page.locator("#funnel-table tbody tr").count() == len(stage_report)
    trajectories = page.locator("section#trajectories").inner_text()
    if command == "eval":  # 3 tasks, 3 attempts each; an attempt whose sandbox could not start has no trajectory
        scored = trajectories_in(out)
        assert scored, "no attempt of the eval was scored"
        assert number(page.locator("#traj-count").inner_text()) == len(scored)
        assert "no injected errors in these trajectories" in trajectories
    else:
        assert "no trajectories in this run" in trajectories and "no LLM calls in this run" in page.locator("section#llm").inner_text()
    page.screenshot_to(f"report-{command}-run")
    page.assert_clean()


def test_each_tool_is_in_one_domain_and_versions_are_looked_through():
    from collections import Counter

    from termigen_plugins.viewer.tool_domains import DOMAINS

    listed = Counter(tool for tools in DOMAINS.values() for tool in tools)
    assert [tool for tool, n in listed.items() if n > 1] == []
    assert domain_of("python3.11") == domain_of("python3") == "python"
    assert domain_of("gcc-12") == domain_of("gcc") and domain_of("pip3.11") == domain_of("pip")
    assert domain_of("some-inhouse-tool") == OTHER
