"""Disk the quickstart's task images take after the run, with the image lifecycle on and off.

A benchmark, not a test: it prints the figures and never fails on numbers. The
quickstart (examples/quickstart.yaml, scripted model, real Docker) runs twice in
this process, each in a fresh run directory, with the image janitor registered
the way a run registers it:

1. lifecycle off (``run.keep_images=true``): every task image stays;
2. lifecycle on (the default): each image goes after the task's last stage.

After each run it sums what the run's task images still take: the bytes no other
named image shares (the image minus its base, what ``docker rmi`` would free),
and the size ``docker images`` shows. Per task = divided by the tasks the run
built. The images are removed afterwards (``images prune`` logic).

    .venv/bin/python benchmarks/image_disk.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quickstart(work: Path, run_dir: Path, *overrides: str) -> tuple[str, str]:
    """Run the quickstart with the image janitor registered; (status, run id)."""
    from termigen_core.config import load_pipeline
    from termigen_core.plugins import build_plugin_host
    from termigen_core.runner import Runner
    from termigen_plugins.executors.lifecycle import make_image_janitor

    host = build_plugin_host(entrypoints=False, environ={})
    pipeline = load_pipeline(work / "quickstart.yaml", host.registry, overrides=list(overrides))
    janitor = make_image_janitor(pipeline, host)
    run_dir.mkdir(parents=True)
    host.pm.register(janitor, name="termigen.image-janitor")
    try:
        summary = Runner(pipeline, host, run_dir).run()
    finally:
        host.pm.unregister(janitor)
    return str(summary.status), janitor.run_id


def left_behind(client, run_dir: Path, run_id: str) -> tuple[int, int, int]:
    """(tasks built, bytes only the run's remaining images take, their displayed size)."""
    from termigen_core.store import RunStore
    from termigen_plugins.executors.lifecycle import exclusive_sizes, recorded_task_tags, run_task_tags

    store = RunStore(run_dir)
    try:
        built = recorded_task_tags(store)
    finally:
        store.close()
    images = set(run_task_tags(client, run_id, built).values())
    exclusive = sum(exclusive_sizes(client, images).values())
    shown = sum(int(client.images.get(i).attrs.get("Size") or 0) for i in images)
    return len(built), exclusive, shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    import docker

    from termigen_core.store import RunStore
    from termigen_plugins.executors.lifecycle import human_bytes, prune_run_images, recorded_task_tags

    client = docker.from_env(timeout=120)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="termigen-bench-disk-") as tmp:
        os.environ["TERMIGEN_HOME"] = str(Path(tmp) / "home")  # the user's build index stays out of it
        work = Path(tmp)
        for name in ("quickstart.yaml", "quickstart.script.yaml"):
            shutil.copy(ROOT / "examples" / name, work / name)
        for label, overrides in (("lifecycle off (keep_images)", ("run.keep_images=true",)), ("lifecycle on", ())):
            run_dir = work / label.split()[1]
            status, run_id = run_quickstart(work, run_dir, *overrides)
            try:
                rows[label] = (status, *left_behind(client, run_dir, run_id))
            finally:
                store = RunStore(run_dir)
                try:
                    recorded = recorded_task_tags(store)
                finally:
                    store.close()
                prune_run_images(client, run_id, recorded)
    print("quickstart task images left after the run (bytes no other image shares / size `docker images` shows):")
    for label, (status, tasks, exclusive, shown) in rows.items():
        per_task = exclusive / tasks if tasks else 0.0
        shown_per_task = shown / tasks if tasks else 0.0
        print(f"  {label:<28} run {status}: {tasks} task(s) built; {human_bytes(per_task)}/task "
              f"(shown {human_bytes(shown_per_task)}/task)")
    off, on = rows["lifecycle off (keep_images)"], rows["lifecycle on"]
    ratio = (on[2] / on[1]) / (off[2] / off[1]) if off[1] and on[1] and off[2] else float("nan")
    shown_ratio = (on[3] / on[1]) / (off[3] / off[1]) if off[1] and on[1] and off[3] else float("nan")
    print(f"  disk per task, on / off: {ratio:.3f} (shown size: {shown_ratio:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
