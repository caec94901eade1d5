"""The executor contract, run against both real engines: Docker and Podman.

Every test takes the module-scoped ``engine`` fixture, parametrized over
``docker`` and ``podman``. Mocks would hide exactly what matters here (exec
streams, process groups, cgroup limits, tar copies, builders), so the tests
need the engines: Docker skips when no daemon answers; Podman uses its API
socket (``CONTAINER_HOST`` or /run/termigen-podman.sock), starts a private
``podman system service`` for the session when none answers, and skips --
saying why -- only when that cannot be done. Every container carries a run
label unique to the module and is removed at the end; every image tag is
unique and removed. Nothing asserts on wall-clock time (join timeouts are
hang guards, not measurements).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from helpers import TEST_PLUGIN, default_sigint, run_cli, write_yaml
from termigen_core.errors import TermigenError
from termigen_core.sandbox import LABEL_MANAGED, LABEL_RUN, SandboxPathError, SandboxSpec

pytestmark = pytest.mark.docker

BASE = "termigen/base:bookworm"
PODMAN_SOCKET = "unix:///run/termigen-podman.sock"


# --- engines -------------------------------------------------------------------------------


def _answers(url: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def podman_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Podman API socket: the configured one, else a private service for this session."""
    pytest.importorskip("docker")
    configured = os.environ.get("CONTAINER_HOST") or PODMAN_SOCKET
    if _answers(configured):
        yield configured
        return
    if not shutil.which("podman"):
        pytest.skip("podman is not installed and no Podman API socket answers "
                    "(scripts/setup-engine.sh --podman installs and starts it)")
    folder = tmp_path_factory.mktemp("podman-service")
    url = f"unix://{folder}/podman.sock"
    log_path = folder / "service.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(["podman", "system", "service", "--time=0", url],
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not _answers(url):
            time.sleep(0.2)
        if not _answers(url):
            tail = log_path.read_text(errors="replace")[-1500:]
            pytest.skip(f"{configured} does not answer and `podman system service` could not be started: {tail}")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


@dataclass
class Engine:
    """One engine under test: how to reach it, a raw client for checks, executors for it."""

    name: str
    url: str | None
    client: Any
    run_id: str

    def executor(self, **options: Any) -> Any:
        from termigen_plugins.executors.docker_executor import DockerExecutor
        from termigen_plugins.executors.podman_executor import PodmanExecutor

        cls = PodmanExecutor if self.name == "podman" else DockerExecutor
        if self.url and "base_url" not in options:
            options["base_url"] = self.url
        return cls(cls.Config(**options))

    def containers(self, run_id: str) -> list[dict[str, Any]]:
        """Containers of a run, as the engine lists them (no per-container inspect that could race)."""
        return self.client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})

    def env(self) -> dict[str, str]:
        """Environment for subprocesses, so `termigen` reaches the same engine."""
        return {"CONTAINER_HOST": self.url} if self.name == "podman" and self.url else {}


@pytest.fixture(scope="module", params=["docker", "podman"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    docker = pytest.importorskip("docker")
    if request.param == "podman":
        url: str | None = request.getfixturevalue("podman_url")
        client = docker.DockerClient(base_url=url, timeout=120)
    else:
        url = None
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"no Docker engine reachable ({exc}); start one with scripts/setup-engine.sh")
    from termigen_plugins.executors.images import bootstrap_images

    home = tmp_path_factory.mktemp("bootstrap-home")
    with pytest.MonkeyPatch.context() as mp:
        if "TERMIGEN_HOME" not in os.environ:
            mp.setenv("TERMIGEN_HOME", str(home))
        try:
            bootstrap_images(engine=request.param)  # a no-op when present; Podman copies Docker's
        except TermigenError as exc:
            pytest.skip(f"the base images are missing on {request.param} and cannot be made: {exc}")
    value = Engine(request.param, url, client, f"contract-{request.param}-{uuid.uuid4().hex[:10]}")
    yield value
    for container in value.containers(value.run_id):
        client.api.remove_container(container["Id"], force=True)
    client.close()


@pytest.fixture()
def executor(engine: Engine) -> Any:
    return engine.executor()


@pytest.fixture()
def spec(engine: Engine) -> SandboxSpec:
    return SandboxSpec(image=BASE, labels={LABEL_MANAGED: "1", LABEL_RUN: engine.run_id})


@pytest.fixture()
def box(executor: Any, spec: SandboxSpec) -> Iterator[Any]:
    sandbox = executor.open(spec)
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture()
def tags(engine: Engine) -> Iterator[list[str]]:
    """Collects image tags a test creates; removes them (and their images) afterwards."""
    created: list[str] = []
    yield created
    ids = set()
    for tag in created:
        try:
            ids.add(engine.client.images.get(tag).id)
            engine.client.images.remove(tag)
        except Exception:  # noqa: BLE001 - never built
            pass
    for image_id in ids:
        try:
            engine.client.images.remove(image_id)
        except Exception:  # noqa: BLE001 - already gone with its last tag
            pass


def unique_tag(name: str) -> str:
    return f"termigen-test/{name}:{uuid.uuid4().hex[:10]}"


def count_processes(box: Any, cmdline_prefix: str) -> int:
    """Processes in the sandbox whose command line starts with ``cmdline_prefix`` (no procps needed)."""
    script = ("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done 2>/dev/null"
              f" | grep -c '^{cmdline_prefix}' || true")
    return int(box.run(script, timeout_s=30).output.split()[-1])


# --- the persistent shell ----------------------------------------------------------------------


def test_check_ok(executor: Any) -> None:
    executor.check()


def test_run_echo(box: Any) -> None:
    result = box.run("echo hi", timeout_s=30)
    assert result.exit_code == 0 and result.ok and not result.timed_out and not result.shell_restarted
    assert result.output == "hi\n"


def test_failing_command_reports_code_and_stderr(box: Any) -> None:
    result = box.run("echo oops >&2; (exit 7)", timeout_s=30)
    assert result.exit_code == 7 and not result.ok
    assert result.output == "oops\n"


def test_starts_in_workdir_with_env(executor: Any, spec: SandboxSpec) -> None:
    with executor.open(replace(spec, workdir="/srv/work", env={"GREETING": "hello"})) as sandbox:
        result = sandbox.run('pwd; echo "$GREETING"', timeout_s=30)
    assert result.output == "/srv/work\nhello\n"


def test_shell_state_persists_between_commands(box: Any) -> None:
    setup = box.run("cd /tmp && export COLOR=blue; shout() { echo \"${1^^}\"; }; declare -A m=([k]=v); "
                    "alias ll='echo aliased'; N=41", timeout_s=30)
    assert setup.ok, setup.output
    result = box.run('pwd; echo "$COLOR"; shout hey; echo "${m[k]}"; echo $((N + 1))', timeout_s=30)
    assert result.output == "/tmp\nblue\nHEY\nv\n42\n"
    box.run("false", timeout_s=30)
    assert box.run("echo $?", timeout_s=30).output == "1\n"  # like a terminal: $? of the previous command


def test_output_order_of_stdout_and_stderr_is_kept(box: Any) -> None:
    result = box.run("for i in 1 2 3; do echo out$i; echo err$i >&2; done", timeout_s=30)
    assert result.output == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"
    assert result.stderr is None


def test_separate_stderr_when_asked(executor: Any, spec: SandboxSpec) -> None:
    with executor.open(replace(spec, merge_stderr=False)) as sandbox:
        result = sandbox.run("echo out; echo err >&2; echo more", timeout_s=30)
        assert (result.output, result.stderr) == ("out\nmore\n", "err\n")
        again = sandbox.run("echo second", timeout_s=30)
        assert (again.output, again.stderr) == ("second\n", "")


def test_timeout_kills_the_command_and_keeps_the_shell(box: Any) -> None:
    box.run("cd /tmp; export KEEP=yes", timeout_s=30)
    result = box.run("echo started; sleep 300; echo never", timeout_s=1)
    assert result.timed_out and not result.ok and not result.shell_restarted
    assert result.output.startswith("started\n") and "never" not in result.output
    assert "timed out after 1s" in result.output
    after = box.run('pwd; echo "$KEEP"', timeout_s=30)
    assert after.output == "/tmp\nyes\n"
    assert count_processes(box, "sleep 300") == 0


def test_timeout_kills_the_whole_process_group(box: Any) -> None:
    result = box.run("bash -c 'sleep 300 & sleep 301 & wait'", timeout_s=1)
    assert result.timed_out
    assert count_processes(box, "sleep 30[01]") == 0


def test_background_jobs_of_earlier_commands_survive_a_timeout(box: Any) -> None:
    """Like Ctrl-C in a terminal: the foreground command dies, the server started before lives on."""
    assert box.run("sleep 600 & echo $! > /tmp/server.pid", timeout_s=30).ok
    assert box.run("sleep 300", timeout_s=1).timed_out
    assert box.run('kill -0 "$(cat /tmp/server.pid)" && echo alive', timeout_s=30).output == "alive\n"


def test_a_loop_of_builtins_is_stopped_and_the_shell_keeps_its_state(box: Any) -> None:
    box.run("export KEEP=1", timeout_s=30)
    result = box.run("f() { while :; do :; done; }; f; echo never", timeout_s=1)
    assert result.timed_out and not result.shell_restarted and "never" not in result.output
    after = box.run('echo "[$KEEP]"', timeout_s=30)
    assert after.output == "[1]\n" and after.ok


def test_a_shell_that_cannot_be_stopped_is_restarted(box: Any) -> None:
    """The user disarmed the abort (``trap '' USR1``): the shell itself is killed and replaced."""
    box.run("export LOST=1", timeout_s=30)
    result = box.run("trap '' USR1; while :; do :; done", timeout_s=1)
    assert result.timed_out and result.shell_restarted and result.exit_code == 137
    assert "new shell" in result.output
    after = box.run('echo "[$LOST]"', timeout_s=30)
    assert after.output == "[]\n" and after.ok and not after.shell_restarted


def test_exit_typed_into_the_shell_restarts_it(box: Any) -> None:
    box.run("cd /tmp", timeout_s=30)
    result = box.run("echo bye; exit 3", timeout_s=30)
    assert result.shell_restarted and result.exit_code == 3
    assert result.output.startswith("bye\n") and "shell exited" in result.output
    after = box.run("pwd", timeout_s=30)
    assert after.output == "/app\n" and not after.shell_restarted


def test_a_killed_shell_is_restarted(box: Any) -> None:
    result = box.run("kill -9 $$", timeout_s=30)
    assert result.shell_restarted
    assert box.run("echo back", timeout_s=30).output == "back\n"


def test_shell_death_between_commands_is_reported_on_the_next_one(box: Any) -> None:
    box.run("sleep 1 && kill -9 $$ &", timeout_s=30)
    time.sleep(2)
    result = box.run("echo next", timeout_s=30)
    assert result.shell_restarted and result.ok
    assert result.output.startswith("next\n") or "next\n" in result.output


def test_a_command_reading_stdin_gets_eof(box: Any) -> None:
    result = box.run("cat; read -r line; echo read=$?; python3 -c 'input()' 2>/dev/null; echo done", timeout_s=30)
    assert result.output == "read=1\ndone\n" and not result.timed_out


def test_syntax_errors_do_not_desynchronise_the_session(box: Any) -> None:
    for broken in ("echo 'unterminated", "if true; then", "cat <<EOF\nno end", "}", "echo \\"):
        result = box.run(broken, timeout_s=30)
        assert not result.timed_out, broken
        assert box.run("echo in-sync", timeout_s=30).output == "in-sync\n", broken


def test_xtrace_does_not_leak_the_protocol(box: Any) -> None:
    result = box.run("set -x; echo traced", timeout_s=30)
    assert "traced" in result.output and "__tg" not in result.output and "\x1e" not in result.output
    after = box.run("set +x", timeout_s=30)
    assert "\x1e" not in after.output
    assert box.run("echo clean", timeout_s=30).output == "clean\n"


def test_output_is_capped_keeping_head_and_tail(box: Any) -> None:
    result = box.run("echo START; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END", timeout_s=60)
    assert result.ok
    assert result.truncated_bytes > 1_900_000
    assert len(result.output) < 1_100_000
    assert result.output.startswith("START\n") and result.output.rstrip().endswith("END")
    assert f"[... {result.truncated_bytes} bytes of output omitted ...]" in result.output


def test_output_cap_is_configurable(engine: Engine, spec: SandboxSpec) -> None:
    with engine.executor(output_limit_bytes=10_000).open(spec) as sandbox:
        result = sandbox.run("head -c 50000 /dev/zero | tr '\\0' y", timeout_s=30)
    note = "\n[... 40000 bytes of output omitted ...]\n"
    assert result.truncated_bytes == 40_000 and result.output == "y" * 5000 + note + "y" * 5000
    executor = engine.executor()
    with executor.open(replace(spec, output_limit=2048)) as sandbox:
        assert sandbox.run("head -c 5000 /dev/zero | tr '\\0' z", timeout_s=30).truncated_bytes == 5000 - 2048


def test_endless_flood_is_capped_and_stopped(box: Any) -> None:
    result = box.run("yes flood", timeout_s=2)
    assert result.timed_out and result.truncated_bytes > 0
    assert result.output.startswith("flood\nflood\n") and "bytes of output omitted" in result.output
    assert box.run("echo calm", timeout_s=30).output == "calm\n"


def test_undecodable_and_binary_output_is_safe(box: Any) -> None:
    result = box.run(r"printf 'a\377\376b\0c'; head -c 4096 /dev/urandom >/dev/null", timeout_s=30)
    assert result.ok and result.output.startswith("a") and result.output.endswith("b\\x00c")  # a NUL is shown escaped
    assert "\ufffd" in result.output
    noisy = box.run("head -c 200000 /dev/urandom; echo; echo tail-ok", timeout_s=30)
    assert noisy.ok and noisy.output.endswith("tail-ok\n")


def test_multi_megabyte_heredoc(box: Any) -> None:
    body = "".join(f"line {i:07d} {'x' * 80}\n" for i in range(40_000))  # ~3.7 MB
    command = f"cat > /tmp/big.txt <<'TERMIGEN_EOF'\n{body}TERMIGEN_EOF\nwc -c < /tmp/big.txt; tail -n 1 /tmp/big.txt | cut -c1-12"
    result = box.run(command, timeout_s=120)
    assert result.ok, result.output[-500:]
    assert result.output == f"{len(body)}\nline 0039999\n"


def test_long_single_lines_in_and_out(box: Any) -> None:
    word = "w" * 300_000
    result = box.run(f"X={word}; echo ${{#X}}", timeout_s=60)
    assert result.output == "300000\n"
    line = box.run("head -c 500000 /dev/zero | tr '\\0' L", timeout_s=60)
    assert line.output == "L" * 500_000 and line.truncated_bytes == 0


def test_quotes_and_special_characters_survive(box: Any) -> None:
    command = "printf '%s\\n' \"it's\" '$HOME' \"a\\\"b\" 'tab\there' '\\x1e' 'ünï'"
    assert box.run(command, timeout_s=30).output == "it's\n$HOME\na\"b\ntab\there\n\\x1e\nünï\n"


def test_concurrent_callers_are_serialised(box: Any) -> None:
    """Stages share sandboxes across threads: one shell, one command at a time, each its own output."""
    results: dict[int, Any] = {}

    def work(n: int) -> None:
        results[n] = box.run(f"sleep 0.1; echo job-{n}", timeout_s=60)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert {n: r.output for n, r in results.items()} == {n: f"job-{n}\n" for n in range(4)}


def test_cancel_event_kills_the_running_command(executor: Any, spec: SandboxSpec) -> None:
    cancel = threading.Event()
    with executor.open(replace(spec, cancel=cancel)) as sandbox:
        sandbox.run("export STAYS=1", timeout_s=30)
        timer = threading.Timer(0.5, cancel.set)
        timer.start()
        result = sandbox.run("sleep 300", timeout_s=600)
        timer.join()
        assert not result.ok and "interrupted" in result.output and not result.shell_restarted
        cancel.clear()
        assert sandbox.run('echo "$STAYS"', timeout_s=30).output == "1\n"


# --- limits ----------------------------------------------------------------------------------


def _cgroup_value(box: Any, controller: str, v1: str, v2: str) -> str:
    return box.run(f"cat /sys/fs/cgroup/{controller}/{v1} 2>/dev/null || cat /sys/fs/cgroup/{v2}", timeout_s=30).output


def test_container_is_confined(engine: Engine, executor: Any, spec: SandboxSpec) -> None:
    """Checked from inside: Docker and Podman report capabilities and CPU limits differently in inspect."""
    import re

    with executor.open(replace(spec, network="none", memory_mb=512, pids_limit=128, cpus=0.5)) as sandbox:
        host = engine.client.api.inspect_container(sandbox.id)["HostConfig"]
        status = sandbox.run("cat /proc/self/status; echo PID1=$(cat /proc/1/comm)", timeout_s=30).output
        pids_max = _cgroup_value(sandbox, "pids", "pids.max", "pids.max")
        memory = _cgroup_value(sandbox, "memory", "memory.limit_in_bytes", "memory.max")
        quota = sandbox.run("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null"
                            " || cat /sys/fs/cgroup/cpu.max", timeout_s=30).output.split()
        links = sandbox.run("ls /sys/class/net", timeout_s=30).output.split()
    caps = int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16)
    assert caps & (1 << 0) and caps & (1 << 6) and caps & (1 << 7)  # CHOWN, SETGID, SETUID kept
    for dropped in (12, 13, 21, 27):  # NET_ADMIN, NET_RAW, SYS_ADMIN, MKNOD
        assert not caps & (1 << dropped), f"capability {dropped} is still effective"
    assert re.search(r"NoNewPrivs:\s*1", status)
    assert "PID1=sleep" not in status  # an init reaps and forwards signals
    assert host["Privileged"] is False
    assert pids_max.strip() == "128" and int(memory) == 512 * 1024 * 1024
    assert int(quota[0]) * 2 == int(quota[1])  # half a CPU
    assert links == ["lo"]  # network none


def test_the_executor_applies_its_configured_limits_to_a_spec_that_sets_none(engine: Engine, spec: SandboxSpec) -> None:
    """The limits live in the executor's config; a spec only overrides what it sets (see SandboxSpec)."""
    assert (spec.memory_mb, spec.cpus, spec.pids_limit, spec.network) == (None, None, None, None)
    executor = engine.executor(memory_mb=384, cpus=0.5, pids_limit=96, network="none")
    with executor.open(spec) as sandbox:
        host = engine.client.api.inspect_container(sandbox.id)["HostConfig"]
        quota = sandbox.run("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null"
                            " || cat /sys/fs/cgroup/cpu.max", timeout_s=30).output.split()
    assert host["Memory"] == 384 * 1024 * 1024 and host["MemorySwap"] == 384 * 1024 * 1024
    assert host["PidsLimit"] == 96
    assert host["NetworkMode"] == "none"
    assert int(quota[0]) * 2 == int(quota[1])  # half a CPU (checked inside: engines report it differently)
    with executor.open(replace(spec, memory_mb=256, pids_limit=200)) as sandbox:  # a spec's own limits win
        host = engine.client.api.inspect_container(sandbox.id)["HostConfig"]
    assert host["Memory"] == 256 * 1024 * 1024 and host["PidsLimit"] == 200 and host["NetworkMode"] == "none"


def test_fork_bomb_hits_the_pids_limit_and_the_sandbox_recovers(executor: Any, spec: SandboxSpec) -> None:
    with executor.open(replace(spec, pids_limit=64)) as sandbox:
        bomb = sandbox.run(":(){ :|:& };:", timeout_s=10)  # returns at once: the bomb runs in the background
        seen = [f"bomb: exit {bomb.exit_code}, restarted {bomb.shell_restarted}: {bomb.output[-300:]}"]
        # Whatever needs a fork now may starve until its timeout; the kill on timeout then clears
        # the whole sandbox (it is at its pids limit). The shell may die of a failed fork: restarted.
        for _ in range(6):
            after = sandbox.run("ls / | wc -l", timeout_s=10)
            seen.append(f"exit {after.exit_code}, timed out {after.timed_out}, "
                        f"restarted {after.shell_restarted}: {after.output[-300:]}")
            words = after.output.split()
            if after.ok and words and words[0].isdigit() and int(words[0]) > 5:
                break
        else:
            pytest.fail("the sandbox never recovered from the fork bomb:\n" + "\n".join(seen))
        events = _cgroup_value(sandbox, "pids", "pids.events", "pids.events")
        assert int(events.split()[-1]) > 0, events  # the limit was hit (and held: the kernel refused forks)
        assert sandbox.run("echo survived", timeout_s=30).output.endswith("survived\n")


def test_memory_hog_is_killed_and_the_sandbox_survives(executor: Any, spec: SandboxSpec) -> None:
    with executor.open(replace(spec, memory_mb=128)) as sandbox:
        sandbox.run("cd /tmp; export KEEP=1", timeout_s=30)
        hog = sandbox.run("tail /dev/zero", timeout_s=120)  # tail keeps an endless "line" in memory
        assert hog.exit_code == 137 and not hog.timed_out and not hog.shell_restarted, hog.output
        after = sandbox.run('pwd; echo "$KEEP"', timeout_s=30)
        assert after.output == "/tmp\n1\n"


# --- files ------------------------------------------------------------------------------------


def test_put_and_get_file(box: Any, tmp_path: Path) -> None:
    local = tmp_path / "note.txt"
    local.write_text("payload\n")
    box.put(str(local), "/tests/in/deep/note.txt")
    assert box.run("cat /tests/in/deep/note.txt; stat -c %U /tests/in/deep/note.txt", timeout_s=30).output == "payload\nroot\n"
    box.run("echo changed > /tests/in/deep/note.txt", timeout_s=30)
    back = tmp_path / "out" / "note.txt"
    box.get("/tests/in/deep/note.txt", str(back))
    assert back.read_text() == "changed\n"


def test_put_and_get_directory(box: Any, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    script = src / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    box.put(str(src), "project")  # relative: under the workdir
    assert box.run("./project/run.sh && cat project/pkg/mod.py", timeout_s=30).output == "ran\nx = 1\n"
    box.run("echo new > /app/project/pkg/added.txt", timeout_s=30)
    dest = tmp_path / "copy"
    box.get("/app/project", str(dest))
    assert (dest / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert (dest / "pkg" / "added.txt").read_text() == "new\n"
    assert os.access(dest / "run.sh", os.X_OK)


def test_put_onto_an_area_keeps_its_mode(box: Any, tmp_path: Path) -> None:
    src = tmp_path / "files"
    src.mkdir(mode=0o700)
    (src / "a.txt").write_text("a\n")
    box.put(str(src), "/tmp")
    assert box.run("stat -c %a /tmp; cat /tmp/a.txt", timeout_s=30).output == "1777\na\n"


def test_get_missing_path_raises_file_not_found(box: Any, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        box.get("/tmp/no/such/file", str(tmp_path / "x"))


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "/root/x", "/app/../etc/x", "../x", "/tmpfoo/x", "/tests/../../etc"])
def test_put_and_get_refuse_paths_outside_the_allowed_areas(box: Any, tmp_path: Path, path: str) -> None:
    local = tmp_path / "f.txt"
    local.write_text("x")
    with pytest.raises(SandboxPathError) as info:
        box.put(str(local), path)
    assert path in str(info.value) and ("outside" in str(info.value) or "'..'" in str(info.value))
    with pytest.raises(SandboxPathError):
        box.get(path, str(tmp_path / "back"))


# --- lifecycle ----------------------------------------------------------------------------------


def test_close_removes_container_and_is_idempotent(engine: Engine, executor: Any, spec: SandboxSpec) -> None:
    import docker.errors

    sandbox = executor.open(spec)
    sandbox.run("echo warm", timeout_s=30)
    assert engine.client.containers.get(sandbox.id).status == "running"
    sandbox.close()
    with pytest.raises(docker.errors.NotFound):
        engine.client.containers.get(sandbox.id)
    sandbox.close()
    assert sandbox.run("echo late", timeout_s=30).exit_code == -1


def test_close_while_a_command_runs_ends_it_at_once(executor: Any, spec: SandboxSpec) -> None:
    sandbox = executor.open(spec)
    sandbox.run("true", timeout_s=30)
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(sandbox.run("sleep 300", timeout_s=600)), daemon=True)
    worker.start()
    time.sleep(0.5)
    sandbox.close()
    worker.join(60)  # a hang guard: without the wake-up, run() would wait for its 600 s timeout
    assert outcome, "run() did not notice the sandbox closing"
    assert outcome[0].exit_code == -1 and "closed while the command was running" in outcome[0].output


def test_prune_by_run_label(engine: Engine, executor: Any, spec: SandboxSpec) -> None:
    doomed = f"prune-{uuid.uuid4().hex[:10]}"
    leftovers = [executor.open(replace(spec, labels={**spec.labels, LABEL_RUN: doomed})) for _ in range(2)]
    survivor = executor.open(spec)
    try:
        assert executor.prune({LABEL_RUN: doomed}) == 2
        assert not engine.containers(doomed)
        assert engine.client.containers.get(survivor.id).status == "running"
    finally:
        survivor.close()
        for sandbox in leftovers:
            sandbox.close()


def test_open_missing_image_names_it(executor: Any, spec: SandboxSpec) -> None:
    with pytest.raises(TermigenError) as info:
        executor.open(replace(spec, image="termigen-test/absent:nope"))
    assert "termigen-test/absent:nope" in str(info.value)
    assert "termigen images bootstrap" in str(info.value) and "images.aliases" in str(info.value)


class _EngineProxy:
    """A unix-socket relay in front of an engine; ``stop()`` is the daemon going away mid-run."""

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(64)
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.upstream)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.server.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass


def test_engine_going_away_mid_run_is_a_clear_result_not_a_hang(engine: Engine, spec: SandboxSpec, tmp_path: Path) -> None:
    url = engine.url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not url.startswith("unix://"):
        pytest.skip(f"the relay needs a unix socket engine, not {url}")
    proxy = _EngineProxy(url[len("unix://"):], tmp_path / "engine.sock")
    executor = engine.executor(base_url=f"unix://{proxy.path}")
    sandbox = executor.open(spec)
    outcome: list[Any] = []
    try:
        assert sandbox.run("cd /tmp; echo up", timeout_s=30).output == "up\n"
        proxy.stop()

        def attempt() -> None:
            outcome.append(sandbox.run("echo anyone", timeout_s=30))
            sandbox.close()  # must not raise either: prune cleans up later
            outcome.append("closed")

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(120)  # a hang guard, not a timing assertion
        assert outcome, "run() hung after the engine went away"
        result = outcome[0]
        assert result.exit_code == -1 and not result.ok
        assert result.output.startswith("[termigen: ") and result.shell_restarted
        assert outcome[1:] == ["closed"]
    finally:
        proxy.stop()
        engine.client.api.remove_container(sandbox.id, force=True)


# --- builds ---------------------------------------------------------------------------------------


def write_context(path: Path, dockerfile: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(dockerfile)
    (path / "nonce.txt").write_text(uuid.uuid4().hex)  # a context no earlier build produced
    return path


def test_build_then_cached_rebuild(engine: Engine, executor: Any, spec: SandboxSpec, tags: list[str], tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx", f"FROM {BASE}\nCOPY nonce.txt /nonce.txt\nRUN echo built > /built\n")
    first_tag, second_tag = unique_tag("ok"), unique_tag("ok")
    tags.extend([first_tag, second_tag])
    first = executor.build(str(context), first_tag, timeout_s=300)
    assert first.ok and not first.cached, first.error
    assert "step 3/3" in first.log.lower()
    second = executor.build(str(context), second_tag, timeout_s=300)
    assert second.ok and second.cached and "step" not in second.log.lower()  # no build step ran
    assert engine.client.images.get(second_tag).id == engine.client.images.get(first_tag).id
    with executor.open(replace(spec, image=second_tag)) as sandbox:
        assert sandbox.run("cat /built", timeout_s=30).output == "built\n"


def test_build_failure_names_failing_step(executor: Any, tags: list[str], tmp_path: Path) -> None:
    context = write_context(tmp_path / "bad", f"FROM {BASE}\nRUN echo about to fail && ls /definitely-missing\n")
    tag = unique_tag("bad")
    tags.append(tag)
    result = executor.build(str(context), tag, timeout_s=300)
    assert not result.ok and not result.cached
    assert "RUN echo about to fail && ls /definitely-missing" in result.error
    assert "definitely-missing" in result.error.split("---", 1)[-1]  # the output tail is quoted too
    assert "\x1b[" not in result.error
    assert "about to fail" in result.log


def test_build_from_missing_image_names_it(executor: Any, tmp_path: Path) -> None:
    context = write_context(tmp_path / "missing", "FROM termigen-test/no-such-base:1\nRUN true\n")
    result = executor.build(str(context), unique_tag("never"), timeout_s=300)
    assert not result.ok
    assert "termigen-test/no-such-base:1" in result.error
    assert "images.aliases" in result.error and "termigen images bootstrap" in result.error
    assert result.details.get("missing_image") == "termigen-test/no-such-base:1"


def test_build_with_an_aliased_from_line(executor: Any, tags: list[str], tmp_path: Path) -> None:
    """The base-image policy: a task written for an unpullable image builds on the local stand-in."""
    from termigen_core.context import ImagePolicy

    policy = ImagePolicy(aliases={"ghcr.io/laude-institute/t-bench/*": BASE})
    dockerfile = "FROM ghcr.io/laude-institute/t-bench/ubuntu-24-04:20250624\nRUN echo aliased > /a\n"
    context = write_context(tmp_path / "aliased", policy.rewrite_dockerfile(dockerfile))
    tag = unique_tag("aliased")
    tags.append(tag)
    result = executor.build(str(context), tag, timeout_s=300)
    assert result.ok, result.error


def _working_containers(engine: Engine) -> set[str]:
    """Podman's builder containers (outside ``podman ps``); empty for Docker."""
    if engine.name != "podman":
        return set()
    api = engine.client.api
    listed = api.get(api.base_url + "/v4.0.0/libpod/containers/json", params={"all": "true", "external": "true"}).json()
    return {c["Id"] for c in listed if any("working-container" in n for n in c.get("Names") or [])}


def test_build_timeout_is_reported_and_leaves_nothing(engine: Engine, executor: Any, tags: list[str], tmp_path: Path) -> None:
    context = write_context(tmp_path / "slow", f"FROM {BASE}\nRUN sleep 30\n")
    tag = unique_tag("slow")
    tags.append(tag)
    before = _working_containers(engine)
    result = executor.build(str(context), tag, timeout_s=3)
    assert not result.ok
    assert "timed out" in result.error and "RUN sleep 30" in result.error
    assert "termigen-build-tmp" not in result.error + result.log  # Podman's temporary base tags stay internal
    assert _working_containers(engine) <= before  # Podman: this build's working container was removed
    assert not engine.client.api.images(name="termigen-build-tmp/*")  # nor its temporary base tag


# --- whole runs: crash cleanup and Ctrl-C --------------------------------------------------------


def _shell_pipeline(tmp_path: Path, engine: Engine, command: str) -> tuple[Path, Path]:
    (tmp_path / "script.yaml").write_text('- response: "unused"\n', encoding="utf-8")
    out = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
    executor: dict[str, Any] = {"use": engine.name}
    if engine.url:
        executor["with"] = {"base_url": engine.url}
    data = {
        "version": 1,
        "run": {"out": str(out), "concurrency": 1},
        "llm": {"default": {"backend": "scripted", "script": "script.yaml"}},
        "executor": executor,
        "stages": [{"use": "count", "with": {"n": 1}}, {"use": "shell", "with": {"command": command}}],
        "exports": [],
    }
    return write_yaml(tmp_path / "pipeline.yaml", data), out


def _run_id(engine: Engine, out: Path) -> str | None:
    """The run id of the run writing to ``out``, once it has a container (ids start with the directory's name)."""
    for container in engine.client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=1"}):
        run_id = (container.get("Labels") or {}).get(LABEL_RUN, "")
        if run_id.startswith(out.name + "-"):
            return run_id
    return None


def _start_run(engine: Engine, config: Path, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, **engine.env()}
    log = (tmp_path / "run.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "termigen_core", "run", str(config), "--plugin", str(TEST_PLUGIN)],
        env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=default_sigint,
    )


def _wait_for_container(engine: Engine, out: Path, proc: subprocess.Popen, tmp_path: Path) -> str:
    """The run id, once the run's sandbox exists."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run_id = _run_id(engine, out)
        if run_id:
            return run_id
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the run never opened its sandbox:\n" + (tmp_path / "run.log").read_text(errors="replace")[-3000:])


def test_prune_after_kill_9_leaves_no_container_of_the_run(engine: Engine, tmp_path: Path) -> None:
    config, out = _shell_pipeline(tmp_path, engine, "sleep 30")
    proc = _start_run(engine, config, tmp_path)
    try:
        run_id = _wait_for_container(engine, out, proc, tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert engine.containers(run_id), "the kill left nothing to prune: the test proves nothing"
    args = ["sandbox", "prune", "--run", run_id] + (["--executor", "podman"] if engine.name == "podman" else [])
    result = run_cli(*args, env=engine.env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"removed 1 container(s) of run {run_id}" in result.stdout
    assert not engine.containers(run_id)


def test_ctrl_c_during_a_run_leaves_no_container(engine: Engine, tmp_path: Path) -> None:
    config, out = _shell_pipeline(tmp_path, engine, "sleep 6; echo finished")
    proc = _start_run(engine, config, tmp_path)
    try:
        run_id = _wait_for_container(engine, out, proc, tmp_path)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 130, log[-3000:]
    assert not engine.containers(run_id), log[-3000:]


def test_bash_messages_read_as_in_a_terminal(executor: Any, spec: SandboxSpec) -> None:
    """Observations become training data: bash's own errors must not name the session's wrapper."""
    with executor.open(spec) as sandbox:
        result = sandbox.run("no-such-tool-xyz --help", timeout_s=30)
    assert result.exit_code == 127
    assert result.output.strip() == "bash: no-such-tool-xyz: command not found"
