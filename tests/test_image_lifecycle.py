"""Task images over a run's life, on the real Docker engine: removed after their last stage, kept
with ``run.keep_images``, held per run, pruned by ``termigen images prune --run``; the disk guard.

Runs get the image janitor as ``termigen run`` does: the executors plugin returns it from
``termigen_run_listeners``. Every image a test makes has a name unique to it and is removed at the end.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, run_cli, write_yaml
from termigen_core import hookimpl
from termigen_core.config import load_pipeline
from termigen_core.plugins import build_plugin_host
from termigen_core.runlock import RunLock
from termigen_core.runner import Runner
from termigen_core.status import FailureKind, StepStatus
from termigen_core.store import RunStore
from termigen_plugins.executors.build import hold_tag
from termigen_plugins.executors.lifecycle import (
    ImageJanitor,
    recorded_task_tags,
    release_image,
)

pytestmark = [pytest.mark.docker]

BASE = "debian:bookworm-slim"


class JanitorCapture:
    """Finds the image janitor the executors plugin registered for the run (``termigen_run_listeners``)."""

    def __init__(self, host) -> None:
        self.host = host
        self.janitor: ImageJanitor | None = None

    @hookimpl
    def termigen_run_start(self, run_id, run_dir, config) -> None:
        self.janitor = next(p for p in self.host.pm.get_plugins() if isinstance(p, ImageJanitor))


def run_pipeline(config: Path, run_dir: Path, *overrides: str) -> tuple[dict, ImageJanitor]:
    """Run ``config`` in this process, as ``termigen run`` does (the janitor comes with the built-ins); the summary."""
    host = build_plugin_host(entrypoints=False, environ={})
    pipeline = load_pipeline(config, host.registry, overrides=list(overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    capture = JanitorCapture(host)
    host.pm.register(capture, name="test.janitor-capture")
    try:
        summary = Runner(pipeline, host, run_dir).run()
    finally:
        host.pm.unregister(capture)
    assert capture.janitor is not None, "no image janitor was registered for the run"
    return summary.as_dict(), capture.janitor


def task_tags(client, prefix: str = "") -> list[str]:
    return sorted(t for image in client.images.list(name="termigen-task/*") for t in image.tags
                  if t.startswith(f"termigen-task/{prefix}"))


def run_id_of(run_dir: Path) -> str:
    store = RunStore(run_dir)
    try:
        return str(store.get_meta("run_id"))
    finally:
        store.close()


def tags_of_run(run_dir: Path) -> set[str]:
    store = RunStore(run_dir)
    try:
        return recorded_task_tags(store)
    finally:
        store.close()


def remove_tags(client, tags) -> None:
    for tag in tags:
        try:
            client.images.remove(tag)
        except Exception:  # noqa: BLE001 - already gone
            pass


# --- the quickstart -----------------------------------------------------------------------


@pytest.fixture
def quickstart(tmp_path):
    work = tmp_path / "qs"
    work.mkdir()
    for name in ("quickstart.yaml", "quickstart.script.yaml"):
        shutil.copy(ROOT / "examples" / name, work / name)
    return work / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_removes_its_task_images_after_their_last_stage(quickstart, tmp_path, docker_client):
    run_dir = tmp_path / "run"
    summary, janitor = run_pipeline(quickstart, run_dir)
    made = tags_of_run(run_dir)
    try:
        assert summary["status"] == "completed", summary.get("message")
        assert len(made) == 3  # the three tasks that built
        failed = failed_tags(run_dir)  # a failed step keeps its image: a resume retries it there
        run_id = run_id_of(run_dir)
        left = set(task_tags(docker_client))
        assert {hold_tag(t, run_id) for t in made} & left == {hold_tag(t, run_id) for t in failed}
        # every other image was released once its task was done; one that another process still
        # uses (a concurrent run of the same pipeline makes the same tags) is kept, with a warning
        assert {r.tag for r in janitor.removed} | {r.tag for r in janitor.kept} == made - failed
        assert janitor.removed and all(r.untagged for r in janitor.removed)
        assert all(r.kept.startswith(("in use", "held by another run")) for r in janitor.kept)
        for removal in janitor.removed:  # a name still there is another run's image (built again since)
            if removal.tag in left:
                assert docker_client.images.get(removal.tag).id != removal.image_id, f"{removal.tag} was left behind"
        # the exports do not need the images: each Harbor task holds its build context
        for folder in (run_dir / "export" / "harbor").iterdir():
            assert (folder / "environment" / "Dockerfile").read_text().startswith("FROM ")
        # a resume retries what failed and skips the rest; then nothing of the run is left
        summary, _ = run_pipeline(quickstart, run_dir)
        assert summary["status"] == "completed"
        if not failed_tags(run_dir):
            left = set(task_tags(docker_client))
            assert not {hold_tag(t, run_id) for t in made} & left
    finally:
        release_all(docker_client, made, run_dir)


def failed_tags(run_dir: Path) -> set[str]:
    """The task images of the items with a failed step in ``run_dir``."""
    store = RunStore(run_dir)
    try:
        failed = {r["item_id"] for r in store.stage_rows(StepStatus.FAILED)}
        return {item.task().build.image for row in store.stage_rows(StepStatus.DONE) if row["item_id"] in failed
                for item in store.outputs_of(row) if item.has_task() and item.task().build.image}
    finally:
        store.close()


def release_all(client, tags, run_dir: Path) -> None:
    """Remove the test's images the way a run does: never one another run holds or uses."""
    run_id = run_id_of(run_dir)
    for tag in tags:
        release_image(client, tag, run_id)


@pytest.mark.slow
def test_keep_images_keeps_them_and_images_prune_removes_them(quickstart, tmp_path, docker_client):
    run_dir = tmp_path / "run"
    summary, janitor = run_pipeline(quickstart, run_dir, "run.keep_images=true")
    made = tags_of_run(run_dir)
    run_id = run_id_of(run_dir)
    try:
        assert summary["status"] == "completed", summary.get("message")
        assert janitor.removed == []
        left = set(task_tags(docker_client))
        assert made <= left
        assert {hold_tag(t, run_id) for t in made} <= left  # held by this run
        kept_ids = {t: docker_client.images.get(hold_tag(t, run_id)).id for t in made}

        with RunLock(run_dir):  # a run still going on is refused, by directory and by id
            for target in (str(run_dir), run_id):
                refused = run_cli("images", "prune", "--run", target)
                assert refused.returncode != 0
                assert "still going on" in refused.stderr and "Traceback" not in refused.stderr
        assert made <= set(task_tags(docker_client))

        pruned = run_cli("images", "prune", "--run", run_id)
        assert pruned.returncode == 0, pruned.stderr
        assert f"run {run_id} ({run_dir.resolve()}): removed " in pruned.stdout
        removed = {t for t in made if f"removed {t} (" in pruned.stdout}
        # what another run holds or uses right now (a concurrent run of the same pipeline) is kept, and says so
        assert removed | {t for t in made if f"kept {t}: " in pruned.stdout} == made and removed
        freed = re.search(r"deleted from the engine, ([0-9.]+) (B|kB|MB|GB) freed", pruned.stdout)
        deleted = [t for t in removed if f"removed {t} (image deleted)" in pruned.stdout]
        # the space is counted for images that went (one still named elsewhere frees nothing)
        assert freed and (float(freed[1]) > 0) == bool(deleted), pruned.stdout
        left = set(task_tags(docker_client))
        assert not {hold_tag(t, run_id) for t in made} & left
        for tag in removed & left:  # made again since, by another run
            assert docker_client.images.get(tag).id != kept_ids[tag], f"{tag} was left behind"

        again = run_cli("images", "prune", "--run", str(run_dir))
        assert again.returncode == 0 and "removed 0 task image(s)" in again.stdout
    finally:
        release_all(docker_client, made, run_dir)


def test_images_prune_refuses_what_is_not_a_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("images", "prune", "--run", str(empty))
    assert result.returncode == 2 and "not a run directory" in result.stderr
    result = run_cli("images", "prune", "--run", str(tmp_path / "missing" / "run"))
    assert result.returncode == 2 and "no such run directory" in result.stderr


# --- holds: images shared between runs --------------------------------------------------------


@pytest.fixture
def tiny_image(docker_client, tmp_path):
    """A tiny image (a file on the base) under a task tag unique to the test; removed afterwards."""
    name = f"termigen-task/lifecycle-{uuid.uuid4().hex[:8]}:0123456789ab"
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo {uuid.uuid4().hex} > /marker\n")
    image, _ = docker_client.images.build(path=str(context), tag=name, rm=True)
    yield name
    for tag in docker_client.images.get(image.id).tags if _exists(docker_client, image.id) else []:
        docker_client.images.remove(tag)


def _exists(client, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_an_image_another_run_holds_stays_until_that_run_releases_it(docker_client, tiny_image):
    from termigen_plugins.executors.lifecycle import hold_image

    assert hold_image(docker_client, tiny_image, "run-a") and hold_image(docker_client, tiny_image, "run-b")
    first = release_image(docker_client, tiny_image, "run-a")
    assert first.kept.startswith("held by another run") and _exists(docker_client, tiny_image)
    assert not _exists(docker_client, hold_tag(tiny_image, "run-a"))
    second = release_image(docker_client, tiny_image, "run-b")
    assert (second.kept, second.untagged, second.deleted) == ("", True, True)
    assert not _exists(docker_client, tiny_image)
    assert release_image(docker_client, tiny_image, "run-b").untagged is False  # gone: nothing to do


@pytest.fixture
def podman_client():
    """The Podman API socket termigen's podman executor uses, or a skip saying it does not answer."""
    from termigen_plugins.executors.podman_executor import PodmanExecutor

    executor = PodmanExecutor()
    try:
        executor.check()
    except Exception as exc:  # noqa: BLE001 - no Podman service here
        pytest.skip(f"no Podman API socket answers ({exc}); scripts/setup-engine.sh --podman starts one")
    return executor.client


def test_holds_work_on_podman_whose_names_carry_a_registry(podman_client):
    """Podman lists local names as docker.io/... or localhost/...: holds are recognised all the same."""
    from termigen_plugins.executors.lifecycle import hold_image, run_task_tags

    name = f"termigen-task/lifecycle-{uuid.uuid4().hex[:8]}:0123456789ab"
    podman_client.api.tag("termigen/base:bookworm", *name.split(":"))
    try:
        assert hold_image(podman_client, name, "run-a") and hold_image(podman_client, name, "run-b")
        assert name in run_task_tags(podman_client, "run-a")
        assert release_image(podman_client, name, "run-a").kept.startswith("held by another run")
        assert release_image(podman_client, name, "run-b").untagged
        assert not [t for i in podman_client.images.list() for t in i.tags if name.split(":")[0] in t]
    finally:
        for ref in (name, hold_tag(name, "run-a"), hold_tag(name, "run-b")):
            try:
                podman_client.api.remove_image(ref, noprune=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def test_an_image_a_container_uses_is_kept_with_a_reason(docker_client, tiny_image):
    container = docker_client.containers.create(tiny_image, command=["true"])
    try:
        outcome = release_image(docker_client, tiny_image, "run-a")
        assert outcome.kept.startswith("in use") and "container" in outcome.kept
        assert _exists(docker_client, tiny_image)
    finally:
        container.remove(force=True)


# --- the disk guard ----------------------------------------------------------------------------


def harbor_task(root: Path, name: str, dockerfile: str) -> Path:
    folder = root / name
    (folder / "environment").mkdir(parents=True)
    (folder / "tests").mkdir()
    (folder / "solution").mkdir()
    (folder / "task.toml").write_text('version = "1.0"\n[verifier]\ntimeout_sec = 60\n[agent]\ntimeout_sec = 60\n')
    (folder / "instruction.md").write_text("Write hello to /app/out.txt.\n")
    (folder / "environment" / "Dockerfile").write_text(dockerfile)
    (folder / "tests" / "test.sh").write_text(
        "#!/bin/bash\nmkdir -p /logs/verifier\n"
        "if grep -q hello /app/out.txt; then echo 1; else echo 0; fi > /logs/verifier/reward.txt\n")
    (folder / "solution" / "solve.sh").write_text("#!/bin/bash\necho hello > /app/out.txt\n")
    return folder


@pytest.fixture
def build_pipeline(tmp_path, docker_client):
    """import → build (one attempt) → audit over one tiny task named uniquely; its images removed after."""
    prefix = f"disk{uuid.uuid4().hex[:8]}"

    def make(dockerfile: str) -> Path:
        tasks = tmp_path / "tasks"
        harbor_task(tasks, f"{prefix}-task", dockerfile)
        return write_yaml(tmp_path / "pipeline.yaml", {
            "version": 1,
            "run": {"max_failed_fraction": 1.0},
            "stages": [
                {"use": "import_task_sets", "with": {"paths": [str(tasks)]}},
                {"use": "build", "with": {"max_attempts": 1}},
                {"use": "audit", "with": {"repeats": 1, "verifiers": []}},
            ],
        })

    make.prefix = prefix  # type: ignore[attr-defined]
    yield make
    remove_tags(docker_client, task_tags(docker_client, prefix))


def failure_of(run_dir: Path, stage: int) -> dict:
    store = RunStore(run_dir)
    try:
        return next(r for r in store.stage_rows(StepStatus.FAILED) if r["stage_index"] == stage)
    finally:
        store.close()


def test_below_the_disk_floor_builds_wait_then_fail_as_infrastructure_and_resume(build_pipeline, tmp_path, docker_client, caplog):
    caplog.set_level(logging.INFO, logger="termigen")
    config = build_pipeline(f"FROM {BASE}\nWORKDIR /app\nRUN echo ok > /app/ready\n")
    run_dir = tmp_path / "run"
    summary, _ = run_pipeline(config, run_dir, "run.min_free_disk_gb=1000000", "run.disk_wait_s=2")
    assert summary["status"] == "stopped" and summary["exit_code"] == 1
    assert "not enough free disk for a build" in summary["message"]
    failed = failure_of(run_dir, 1)
    assert failed["failure_kind"] == FailureKind.INFRASTRUCTURE
    assert "below run.min_free_disk_gb = 1e+06 GB" in failed["reason"] and "re-run the same command" in failed["reason"]
    assert "waiting for disk: " in caplog.text and "floor 1e+06 GB" in caplog.text
    assert task_tags(docker_client, build_pipeline.prefix) == []  # nothing was built
    # the item is not lost: with the floor off, the resume builds and audits it
    summary, _ = run_pipeline(config, run_dir, "run.min_free_disk_gb=0")
    assert summary["status"] == "completed", summary.get("message")
    store = RunStore(run_dir)
    try:
        assert [r["status"] for r in store.stage_rows() if r["stage_index"] == 1] == [StepStatus.DONE]
    finally:
        store.close()


def test_waiting_for_disk_says_so_and_gives_up_after_the_wait(tmp_path):
    from termigen_core.errors import InfrastructureError
    from termigen_plugins.executors.lifecycle import LifecycleSettings, wait_for_disk

    said: list[str] = []
    naps: list[float] = []
    settings = LifecycleSettings(min_free_disk_gb=1e6, disk_wait_s=1.0)
    with pytest.raises(InfrastructureError) as caught:
        wait_for_disk(object(), settings, tmp_path, say=lambda fmt, *a: said.append(fmt % a), sleep=naps.append)
    assert caught.value.stops_run
    assert said and said[0].startswith("waiting for disk: ") and "floor 1e+06 GB" in said[0]
    assert all(n == 0.5 for n in naps)  # re-checked every disk_wait_s / 10 (at least 0.5 s)
    wait_for_disk(object(), LifecycleSettings(min_free_disk_gb=0), tmp_path, say=said.append)  # 0: never waits


def test_a_disk_that_fills_during_a_build_stops_the_run_as_infrastructure(build_pipeline, tmp_path):
    # /dev/shm of a build step is 64 MB: writing more fails the way a full disk does
    config = build_pipeline(f"FROM {BASE}\nRUN dd if=/dev/zero of=/dev/shm/fill bs=1M count=100\n")
    run_dir = tmp_path / "run"
    summary, _ = run_pipeline(config, run_dir)
    assert summary["status"] == "stopped", json.dumps(summary)[:2000]
    failed = failure_of(run_dir, 1)
    assert failed["failure_kind"] == FailureKind.INFRASTRUCTURE
    assert "the build ran out of disk space" in failed["reason"] and "No space left on device" in failed["reason"]


# --- the janitor's bookkeeping: fan-out, rejection, failure --------------------------------------


def test_a_fanned_out_image_goes_after_its_last_user_and_a_failed_step_keeps_one(docker_client, tiny_image, tmp_path):
    """build (1) → attempts (2, fans out) → eval (3, the last stage in the image), fed as a run feeds them."""
    from termigen_core.items import Item
    from termigen_plugins.executors.lifecycle import LifecycleSettings

    run_dir = tmp_path / "run"
    store = RunStore(run_dir)
    import docker

    janitor = ImageJanitor(last_consumer=3, settings=LifecycleSettings(), client_factory=docker.from_env)
    janitor.termigen_run_start(run_id="run-x", run_dir=str(run_dir), config={})
    task = {"task": {"build": {"image": tiny_image}}}

    def step(index: int, item: Item, status: str, outputs: list[Item] = ()) -> None:
        store.mark_running(item.id, index, f"s{index}")
        store.finish_stage(item.id, index, status, outputs=list(outputs))
        janitor.termigen_item_event(run_id="run-x", stage_index=index, stage_name=f"s{index}", item=item,
                                    status=status, reason=None)

    try:
        parent = Item(id="t", kind="task", data=task)
        step(1, Item(id="t", kind="task"), StepStatus.DONE, [parent])
        assert _exists(docker_client, hold_tag(tiny_image, "run-x"))  # held as soon as it was built
        children = [parent.child(i, kind="attempt", data=task) for i in range(2)]
        step(2, parent, StepStatus.DONE, children)
        step(3, children[0], StepStatus.DONE)
        janitor.drain()
        assert _exists(docker_client, tiny_image)  # the second attempt still needs it
        step(3, children[1], StepStatus.FAILED)
        janitor.drain()
        assert _exists(docker_client, tiny_image)  # a failed step keeps it for the resume
        step(3, children[1], StepStatus.REJECTED)
        janitor.drain()
        assert not _exists(docker_client, tiny_image) and not _exists(docker_client, hold_tag(tiny_image, "run-x"))
        assert [(r.tag, r.deleted) for r in janitor.removed] == [(tiny_image, True)]
    finally:
        janitor.close()
        store.close()
