"""The ray engine on a real two-node Ray cluster on loopback, against a local run of the same config.

The cluster is started with Ray's own CLI (a head with one CPU, and a second node
with one CPU and the ``container_slots`` resource), with the flags this network
needs (FACTS.md: a HOME holding ray_bootstrap_config.yaml, usage stats and auth
off); every process it starts is found under its own temp dir and stopped by PID.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, prune_run_images, read_jsonl, run_cli

HAVE_RAY = importlib.util.find_spec("ray") is not None  # not imported here: the CLI under test imports it

if not HAVE_RAY and os.environ.get("TERMIGEN_REQUIRE_RAY") == "1":  # scripts/test.sh installs it: CI must run these
    raise RuntimeError("TERMIGEN_REQUIRE_RAY=1 but Ray is not installed: pip install -e '.[test,ray]'")
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'termigen[ray]'")

#: The engine plugin, named on the command line until it is one of the built-ins.
ENGINE_PLUGIN = "termigen_plugins.engines"


def plugin_args() -> list[str]:
    from termigen_core.plugins import BUILTIN_PLUGINS

    return [] if ENGINE_PLUGIN in BUILTIN_PLUGINS else ["--plugin", ENGINE_PLUGIN]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- processes, by PID ------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (parent, cmdline)
    return found


def _with_descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    tree = set(roots)
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalRayCluster:
    """A head node and (on demand) a node with ``container_slots``, all on this machine."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="tg-rayhome-"))
        (self.home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n", encoding="utf-8")
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tgray-"))  # short: Ray's socket paths must fit
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            # a killed node is noticed in seconds, not half a minute
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_failure_threshold": "3",
        }
        self.ray = str(Path(sys.executable).with_name("ray"))

    def _ray(self, *args: str) -> None:
        result = subprocess.run([self.ray, *args], env=self.env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def start_head(self) -> None:
        self._ray(
            "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=1",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
        )

    def start_container_node(self) -> None:
        self._ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                  "--resources", '{"container_slots": 2}')
        self._wait_for_slots(present=True)

    def kill_container_node(self) -> int:
        """SIGKILL the raylet of the node with ``container_slots`` and everything under it."""
        table = self._own_processes()
        raylets = {pid for pid, (_, cmd) in table.items() if "/raylet " in f"{cmd} " and "container_slots" in cmd}
        assert len(raylets) == 1, f"expected one container node, found raylets {raylets}"
        _kill(_with_descendants(raylets, _processes()))
        return raylets.pop()

    def _wait_for_slots(self, *, present: bool) -> None:
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(ray.cluster_resources().get('container_slots', 0))"
        )
        for _ in range(60):
            out = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True, text=True, timeout=120)
            if out.returncode == 0 and (float(out.stdout.strip().splitlines()[-1]) >= 1) == present:
                return
            time.sleep(1)
        raise AssertionError(f"the cluster never reported container_slots present={present}")

    def _own_processes(self) -> dict[int, tuple[int, str]]:
        """Processes of this cluster: those naming its temp dir or its address, and their descendants."""
        table = _processes()
        roots = {pid for pid, (_, cmd) in table.items() if str(self.temp_dir) in cmd or f":{self.port} " in f"{cmd} "}
        roots.discard(os.getpid())
        return {pid: table[pid] for pid in _with_descendants(roots, table) if pid in table}

    def stop(self) -> None:
        """Every process this cluster started, by PID (SIGTERM, then SIGKILL what is left)."""
        pids = set(self._own_processes())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(2)
        _kill(set(self._own_processes()))
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if not HAVE_RAY:
        pytest.skip("Ray is not installed: pip install 'termigen[ray]'")
    ray_cluster = LocalRayCluster()
    try:
        ray_cluster.start_head()
        ray_cluster.start_container_node()
        yield ray_cluster
    finally:
        ray_cluster.stop()


# --- the quickstart, locally and on the cluster -------------------------------------

#: Fields that differ between two runs of one config by nature: how long things took, the run's id,
#: and whether the Docker engine already had a build's layers.
VOLATILE_KEYS = {"duration_s", "command_seconds", "latency_s", "seconds", "run_id", "cached"}
#: ... and in texts: timings ("2 passed in 0.23s"), clock times (`ls -l`), the tail of a failed
#: build's log (which steps Docker had cached shapes it), and the same keys in the TOML/YAML exports.
VOLATILE_TEXT = (
    (re.compile(r"\n--- last \d+ lines of build output ---\n.*", re.DOTALL), "\n[build log]"),
    (re.compile(r"\b[A-Z][a-z]{2} +\d+ \d\d:\d\d\b"), "DATE"),
    (re.compile(r"\b(duration_s|cached)( = |: ).*"), r"\1\2X"),
    (re.compile(r"\b\d+(\.\d+)?s\b"), "Ns"),
)


def normalised(value, run_dir: Path, run_id: str):
    """``value`` without what differs by nature (above); the run's directory and id as placeholders."""
    if isinstance(value, dict):
        return {k: normalised(v, run_dir, run_id) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [normalised(v, run_dir, run_id) for v in value]
    if isinstance(value, str):
        value = value.replace(str(run_dir), "RUN_DIR").replace(run_id, "RUN_ID")
        for pattern, replacement in VOLATILE_TEXT:
            value = pattern.sub(replacement, value)
    return value


def exported(run_dir: Path) -> dict[str, object]:
    """Every exported file (JSON and JSONL parsed) and the final items, normalised, by path."""
    run_id = json.loads((run_dir / "summary.json").read_text())["run_id"]
    export = run_dir / "export"
    files: dict[str, object] = {}
    for path in sorted(p for p in export.rglob("*") if p.is_file()):
        name = str(path.relative_to(export))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            files[name] = normalised(pq.read_table(path).to_pylist(), run_dir, run_id)
        elif path.suffix == ".jsonl":
            files[name] = normalised(read_jsonl(path), run_dir, run_id)
        elif path.suffix == ".json":
            files[name] = normalised(json.loads(path.read_text(encoding="utf-8")), run_dir, run_id)
        else:
            files[name] = normalised(path.read_text(encoding="utf-8", errors="replace"), run_dir, run_id)
    return files


#: The quickstart's base image under a tag of this test module's own: its task images get tags no
#: other test (or run) shares, so nobody else's clean-up removes them while these runs use them.
PRIVATE_BASE = f"tg-ray-test/python:{uuid.uuid4().hex[:10]}"
QUICKSTART_BASE = "termigen/python:bookworm"


@pytest.fixture(scope="module")
def private_base():
    tagged = subprocess.run(["docker", "tag", QUICKSTART_BASE, PRIVATE_BASE], capture_output=True, text=True)
    if tagged.returncode != 0:
        pytest.skip(f"no {QUICKSTART_BASE} on the Docker engine (`termigen images bootstrap`): {tagged.stderr.strip()}")
    yield PRIVATE_BASE
    subprocess.run(["docker", "rmi", PRIVATE_BASE], capture_output=True)  # the tag only: the image is the base's


def differences(expected, actual, path: str = "") -> list[str]:
    """Where two normalised exports differ (empty: identical), with both values, for a readable failure."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return [d for key in sorted(set(expected) | set(actual), key=str)
                for d in differences(expected.get(key), actual.get(key), f"{path}/{key}")]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (a, b) in enumerate(zip(expected, actual)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path}: {str(expected)[:300]!r} != {str(actual)[:300]!r}"]


def quickstart_copy(tmp: Path) -> Path:
    """The quickstart in ``tmp``, building on :data:`PRIVATE_BASE` through an image alias."""
    (tmp / "quickstart.script.yaml").write_text((ROOT / "examples" / "quickstart.script.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    config = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text(encoding="utf-8"))
    config.setdefault("images", {})["aliases"] = {QUICKSTART_BASE: PRIVATE_BASE}
    (tmp / "quickstart.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return tmp / "quickstart.yaml"


def ray_run(config: Path, run_dir: Path, ray_cluster: LocalRayCluster, *extra: str, timeout: float = 900):
    return run_cli(
        "run", str(config), "--out", str(run_dir), *plugin_args(),
        "-s", "run.engine=ray", "-s", f"run.ray.address={ray_cluster.address}", *extra,
        env=ray_cluster.env, timeout=timeout,
    )


def remove_task_images(*run_dirs: Path) -> None:
    for run_dir in run_dirs:
        prune_run_images(run_dir)


@pytest.fixture(scope="module")
def local_quickstart(tmp_path_factory, private_base):
    work = tmp_path_factory.mktemp("ray-local")
    run_dir = work / "run"
    result = run_cli("run", str(quickstart_copy(work)), "--out", str(run_dir), timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    yield run_dir
    remove_task_images(run_dir)


def step_rows(run_dir: Path) -> list[dict]:
    """The run's steps; none while the run has not made its store yet."""
    db = sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT item_id, stage_index, stage_name, status, reason FROM stage_runs")]
    except sqlite3.OperationalError as exc:  # the file exists, its tables not yet
        if "no such table" in str(exc):
            return []
        raise
    finally:
        db.close()


@pytest.mark.docker
@pytest.mark.slow
@needs_ray
def test_quickstart_on_a_two_node_cluster_matches_a_local_run(cluster, local_quickstart, tmp_path):
    run_dir = tmp_path / "run"
    try:
        result = ray_run(quickstart_copy(tmp_path), run_dir, cluster)
        assert result.returncode == 0, result.stderr[-4000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        local = json.loads((local_quickstart / "summary.json").read_text())
        assert summary["status"] == "completed"
        # every step's outcome and every exported byte as on one machine
        assert [(s["stage"], s["in"], s["out"], s["rejected"], s["failed"]) for s in summary["stages"]] == \
            [(s["stage"], s["in"], s["out"], s["rejected"], s["failed"]) for s in local["stages"]]
        assert differences(exported(local_quickstart), exported(run_dir)) == []
        # the calls the workers made were written by the driver, once each, as a local run writes them
        assert summary["llm"]["paid_calls_total"] == local["llm"]["paid_calls_total"]
        assert summary["llm"]["this_invocation"] == local["llm"]["this_invocation"]
        # a run again skips everything: nothing is sent to the cluster, nothing paid
        again = ray_run(tmp_path / "quickstart.yaml", run_dir, cluster)
        assert again.returncode == 0, again.stderr[-4000:]
        assert json.loads((run_dir / "summary.json").read_text())["llm"]["this_invocation"].get("paid", 0) == 0
    finally:
        remove_task_images(run_dir)


@pytest.mark.docker
@pytest.mark.slow
@needs_ray
def test_a_redone_step_replays_its_stored_answers_on_a_worker(cluster, local_quickstart, tmp_path):
    """The state a driver killed mid-step leaves (steps `running`, their calls recorded):
    the resumed steps run on workers, replay every answer, pay for nothing."""
    run_dir = tmp_path / "run"
    config = quickstart_copy(tmp_path)
    try:
        # the images stay: a driver killed mid-step has not released them (a finished run has)
        first = ray_run(config, run_dir, cluster, "-s", "run.keep_images=true")
        assert first.returncode == 0, first.stderr[-4000:]
        db = sqlite3.connect(run_dir / "run.db")
        with db:
            redone = db.execute("UPDATE stage_runs SET status='running' WHERE stage_name='trajectories'").rowcount
        db.close()
        assert redone >= 1
        resumed = ray_run(config, run_dir, cluster, "-s", "run.keep_images=true")
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        calls = json.loads((run_dir / "summary.json").read_text())["llm"]["this_invocation"]
        # (an agent step whose observation shows a clock time, e.g. `ls -l`, is a new request after
        # the minute turns: paid again, as on one machine; everything else is replayed)
        assert calls["replayed"] > 0, calls
        assert differences(exported(local_quickstart), exported(run_dir)) == []
    finally:
        remove_task_images(run_dir)


@pytest.mark.docker
@pytest.mark.slow
@needs_ray
def test_a_worker_node_killed_mid_run_leaves_its_steps_pending_and_a_resume_completes(cluster, local_quickstart, tmp_path):
    run_dir = tmp_path / "run"
    config = quickstart_copy(tmp_path)
    command = [
        sys.executable, "-m", "termigen_core", "run", str(config), "--out", str(run_dir), *plugin_args(),
        "-s", "run.engine=ray", "-s", f"run.ray.address={cluster.address}",
        "-s", "run.ray.node_wait_s=5", "-s", "run.ray.max_retries=1",
    ]
    process = subprocess.Popen(command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait until a container step (build and later) is running: it runs on the container node
        for _ in range(600):
            if process.poll() is not None:
                break
            if (run_dir / "run.db").exists() and any(
                r["status"] == "running" and r["stage_index"] >= 3 for r in step_rows(run_dir)
            ):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before a container step started"
        cluster.kill_container_node()
        out, err = process.communicate(timeout=600)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = step_rows(run_dir)
        if process.returncode == 0:  # Ray retried the lost steps elsewhere and the run finished
            assert summary["status"] == "completed"
        else:  # the steps the node held went back to pending; nothing was marked failed for it
            assert process.returncode == 4, err[-4000:]
            assert summary["status"] == "stopped" and "container_slots" in summary["message"]
            assert any(r["status"] == "pending" for r in rows), rows
        assert not [r for r in rows if r["status"] == "failed" and "Ray" in (r["reason"] or "")], rows

        cluster.start_container_node()
        resumed = ray_run(config, run_dir, cluster)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert not [r for r in step_rows(run_dir) if r["status"] in ("pending", "running")]
        assert differences(exported(local_quickstart), exported(run_dir)) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        remove_task_images(run_dir)


# --- bad input ----------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
@needs_ray
def test_a_build_on_a_worker_honours_the_runs_disk_floor(cluster, private_base, tmp_path):
    """run.min_free_disk_gb reaches the worker that builds (the run's options travel with its services)."""
    run_dir = tmp_path / "run"
    result = ray_run(quickstart_copy(tmp_path), run_dir, cluster, "-s", "run.min_free_disk_gb=1000000", "-s", "run.disk_wait_s=2")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert result.returncode == 1 and summary["status"] == "stopped", result.stderr[-3000:]
        assert "not enough free disk for a build" in summary["message"]
        builds = [r for r in step_rows(run_dir) if r["stage_name"] == "build"]
        assert builds and all(r["status"] in ("failed", "pending") for r in builds)
        assert any("below run.min_free_disk_gb = 1e+06 GB" in (r["reason"] or "") for r in builds)
    finally:
        remove_task_images(run_dir)


def tiny_config(tmp_path: Path) -> Path:
    """A model-only pipeline (no container stage), so no engine other than Ray's is involved."""
    script = tmp_path / "script.yaml"
    script.write_text("- {role: seeder, response: '[\"count lines\"]'}\n", encoding="utf-8")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "version: 1\n"
        "llm: {default: {backend: scripted, model: s}, backends: {scripted: {script: script.yaml}}}\n"
        "stages:\n"
        "  - {use: seeds, with: {source: {use: taxonomy, with: {per_category: 1, categories: [algorithms]}}}}\n"
        "  - {use: propose, with: {max_rounds: 1}}\n",
        encoding="utf-8",
    )
    return config


def test_without_ray_installed_the_run_says_which_extra_to_install(tmp_path):
    config = tiny_config(tmp_path)
    hide_ray = (
        "import sys; sys.modules['ray'] = None; "  # `import ray` raises ImportError, as without the package
        "from termigen_core.cli import main; sys.argv = ['termigen'] + sys.argv[1:]; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_ray, "run", str(config), "--out", str(tmp_path / "run"), *plugin_args(),
         "-s", "run.engine=ray", "-s", "run.ray.address=127.0.0.1:1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "termigen[ray]" in output and "Traceback" not in output
    # nothing ran: the engine is checked before the first stage
    assert step_rows(tmp_path / "run") == []


@needs_ray
def test_an_address_nobody_answers_is_a_clear_error_before_any_step(tmp_path):
    config = tiny_config(tmp_path)
    result = run_cli(
        "run", str(config), "--out", str(tmp_path / "run"), *plugin_args(),
        "-s", "run.engine=ray", "-s", f"run.ray.address=127.0.0.1:{free_port()}", "-s", "run.ray.connect_timeout_s=5",
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:" in output and "Traceback" not in output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "stopped"
    assert step_rows(tmp_path / "run") == []


def test_an_unknown_engine_option_is_named_with_its_path(tmp_path):
    config = tiny_config(tmp_path)
    result = run_cli(
        "run", str(config), "--out", str(tmp_path / "run"), *plugin_args(), "-s", "run.engine=ray", "-s", "run.ray.adress=x:1",
        timeout=120,
    )
    assert result.returncode == 1
    assert "run.ray.adress" in result.stdout + result.stderr


@pytest.mark.docker
@needs_ray
def test_a_cluster_without_a_container_node_is_refused_before_any_step(cluster, private_base, tmp_path):
    """Container stages, but no node offers the resource they need: exit 4, nothing ran."""
    config = quickstart_copy(tmp_path)
    result = ray_run(config, tmp_path / "run", cluster, "-s", "run.ray.container_resource=no_such_slots", timeout=300)
    assert result.returncode == 4, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "no node of the Ray cluster" in output and "no_such_slots" in output and "Traceback" not in output
    assert step_rows(tmp_path / "run") == []
