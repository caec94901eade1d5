"""Rebuilding an unchanged build context: first build vs cached rebuild.

A benchmark, not a test: it prints the figures and never fails on numbers.
Three builds of one context (``FROM termigen/base:bookworm``, a COPY and two
RUN steps, a fresh nonce so no earlier run helps):

1. first build -- every step runs;
2. rebuild through termigen's build index (the executor's normal path): the
   content hash matches, the image is only re-tagged, no build step runs;
3. rebuild with an empty index -- what the engine's own layer cache alone
   gives (it still sends the context and walks every step).

Goal (issue 3): the cached rebuild runs no build step and takes under 1 s.
Images and the temporary build index are removed afterwards.

    .venv/bin/python benchmarks/build_cache.py [--engine podman]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["docker", "podman"], default="docker")
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--image", default="termigen/base:bookworm")
    args = parser.parse_args()

    from termigen_plugins.executors.build import BuildIndex
    from termigen_plugins.executors.docker_executor import DockerExecutor
    from termigen_plugins.executors.podman_executor import PodmanExecutor

    cls = PodmanExecutor if args.engine == "podman" else DockerExecutor
    executor = cls(cls.Config(base_url=args.base_url) if args.base_url else None)
    executor.check()
    tags = [f"termigen-bench/cache:{uuid.uuid4().hex[:10]}" for _ in range(3)]
    with tempfile.TemporaryDirectory(prefix="termigen-bench-") as tmp:
        os.environ["TERMIGEN_HOME"] = str(Path(tmp) / "home")  # keep the user's build index out of it
        context = Path(tmp) / "ctx"
        context.mkdir()
        (context / "nonce.txt").write_text(uuid.uuid4().hex)
        (context / "Dockerfile").write_text(
            f"FROM {args.image}\nCOPY nonce.txt /nonce.txt\n"
            "RUN echo step-one > /one && sleep 1\nRUN echo step-two > /two\n"
        )
        try:
            first = executor.build(str(context), tags[0], timeout_s=600)
            assert first.ok, first.error
            cached = executor.build(str(context), tags[1], timeout_s=600)
            assert cached.ok, cached.error
            engine_only = executor.builder().build(context, tags[2], 600, BuildIndex(Path(tmp) / "empty.db"))
            assert engine_only.ok, engine_only.error
        finally:
            for tag in tags:
                try:
                    executor.client.images.remove(tag)
                except Exception:  # noqa: BLE001
                    pass

    def steps(log: str) -> int:
        return sum(1 for line in log.splitlines() if line.lower().startswith("step "))

    print(f"engine: {args.engine} ({executor.address})")
    print(f"{'build':<34}{'seconds':>10}{'steps run':>11}{'vs first':>10}")
    for label, result in (("first build", first), ("cached rebuild (termigen index)", cached),
                          ("rebuild, engine layer cache only", engine_only)):
        print(f"{label:<34}{result.duration_s:>10.3f}{steps(result.log):>11}"
              f"{first.duration_s / max(result.duration_s, 1e-9):>9.0f}x")
    verdict = "met" if cached.cached and steps(cached.log) == 0 and cached.duration_s < 1 else "NOT met"
    print(f"\ngoal (cached rebuild runs no build step, < 1 s): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
