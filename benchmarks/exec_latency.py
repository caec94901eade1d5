"""Command round trips in one container: persistent shell vs ``docker exec`` vs the SDK's ``exec_run``.

A benchmark, not a test: it prints a table and never fails on numbers. All
three methods hit the *same* container, opened through the executor (so with
its limits, init and labels), for three commands:

* ``true`` -- a shell builtin: the session's pure protocol cost;
* ``/bin/true`` -- a small program: adds one fork+exec inside the container;
* ``1 MB`` -- ``head -c 1000000 /dev/zero | tr '\\0' x``: output throughput.

``docker exec`` and ``exec_run`` start a new process per command, so for them
``true`` and ``/bin/true`` are the same exec of ``/bin/true``; the 1 MB command
runs as ``bash -c``. Goal (issue 3): the session's median for ``true`` is at
most 5 ms and at least 10x faster than ``docker exec``.

    .venv/bin/python benchmarks/exec_latency.py                 # Docker
    .venv/bin/python benchmarks/exec_latency.py --engine podman # Podman's socket (CLI: podman exec)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

MB_COMMAND = "head -c 1000000 /dev/zero | tr '\\0' x"


def measure(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["docker", "podman"], default="docker")
    parser.add_argument("--base-url", default=None, help="engine address (default: the executor's)")
    parser.add_argument("--image", default="termigen/base:bookworm")
    parser.add_argument("-n", type=int, default=200, help="runs per cell for the session (others: n/4)")
    args = parser.parse_args()

    from termigen_core.sandbox import LABEL_RUN, SandboxSpec
    from termigen_plugins.executors.docker_executor import DockerExecutor
    from termigen_plugins.executors.podman_executor import PodmanExecutor

    cls = PodmanExecutor if args.engine == "podman" else DockerExecutor
    executor = cls(cls.Config(base_url=args.base_url) if args.base_url else None)
    executor.check()
    cli = shutil.which(args.engine)
    cli_prefix = [cli] if cli else None
    if cli and args.engine == "docker" and args.base_url:
        cli_prefix = [cli, "-H", args.base_url]
    if cli and args.engine == "podman":
        cli_prefix = [cli, "--url", executor.address]

    cli_label = f"{args.engine} exec (CLI)"
    spec = SandboxSpec(image=args.image, labels={LABEL_RUN: f"bench-{uuid.uuid4().hex[:8]}"})
    n_slow = max(10, args.n // 4)
    rows: dict[str, dict[str, float]] = {}
    with executor.open(spec) as box:
        container = executor.client.containers.get(box.id)
        first = box.run("true", timeout_s=60)  # starts the session (not measured)
        assert first.ok, first.output
        cases = {"true": ["true"], "/bin/true": ["/bin/true"], "1 MB": ["bash", "-c", MB_COMMAND]}
        for label, argv in cases.items():
            command = MB_COMMAND if label == "1 MB" else label
            n = args.n if label != "1 MB" else n_slow
            row: dict[str, float] = {}
            result = box.run(command, timeout_s=60)
            assert result.ok and (label != "1 MB" or len(result.output) == 1_000_000), result.output[:200]
            row["session"] = statistics.median(measure(lambda command=command: box.run(command, timeout_s=60), n))
            if cli_prefix:
                row[cli_label] = statistics.median(measure(
                    lambda argv=argv: subprocess.run([*cli_prefix, "exec", box.id, *argv], capture_output=True, check=True), n_slow))
            row["SDK exec_run"] = statistics.median(measure(lambda argv=argv: container.exec_run(argv), n_slow))
            rows[label] = row

    methods = ["session", cli_label, "SDK exec_run"]
    print(f"engine: {args.engine} ({executor.address}), image {args.image}; medians, n={args.n} "
          f"(session) / {n_slow} (others)")
    header = f"{'command':<11}" + "".join(f"{m:>20}" for m in methods) + f"{'CLI/session':>15}{'exec_run/session':>18}"
    print(header)
    print("-" * len(header))
    for label, row in rows.items():
        cells = "".join(f"{row[m] * 1000:>17.2f} ms" if m in row else f"{'n/a':>20}" for m in methods)
        ratio_cli = f"{row[cli_label] / row['session']:>14.1f}x" if cli_label in row else f"{'n/a':>15}"
        ratio_sdk = f"{row['SDK exec_run'] / row['session']:>17.1f}x"
        print(f"{label:<11}{cells}{ratio_cli}{ratio_sdk}")
    session_true = rows["true"]["session"] * 1000
    cli_true = rows["true"].get(cli_label)
    verdict = "met" if session_true <= 5 and (cli_true is None or cli_true * 1000 / session_true >= 10) else "NOT met"
    print(f"\ngoal (session `true` <= 5 ms and >= 10x faster than {args.engine} exec): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
