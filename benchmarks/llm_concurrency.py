"""Orchestrator throughput for model calls: many calls in flight through the real LLM path.

A benchmark, not a test: it prints figures and never fails on numbers. A loopback
OpenAI-compatible server (an asyncio one, in its own process, so it holds any number of
requests without a thread each and its CPU is not the driver's) answers every chat
completion after a fixed latency. The driver sends calls the way a run does: a thread
pool of ``llm_concurrency`` workers, each call for its own item scope through the real
``LLMRouter`` (store lookup, budget check, the ``litellm`` backend over real HTTP, the
ledger write in ``run.db``), built by ``build_services`` like ``termigen run`` builds it.

For each case it prints the achieved throughput against the ideal
(``ideal = calls / (ceil(calls / concurrency) * latency)`` calls per second) and the
orchestrator CPU per call (``time.process_time()`` delta / calls: every thread of the
driver, never the server), measured once the worker threads and their connections are
up (a run keeps them for hours); the first round, while they start, is printed too.
The first case (concurrency 32) is the baseline measured in the same process; the
others print their ratio to it. The last case sends the highest concurrency through
litellm's own route (``direct_openai: false``), the path every call took before the
direct route to self-hosted OpenAI-compatible servers existed. The process (and the server) are
pinned to 2 cores when the machine has more, like the machines the project runs on.

    .venv/bin/python benchmarks/llm_concurrency.py                 # 32 and 256 in flight, 512 calls
    .venv/bin/python benchmarks/llm_concurrency.py --profile 300   # where one call's CPU goes (cProfile)

Goal (issue 14): 256 calls in flight at >= 80 % of ideal on 2 cores against a 1 s model.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORES = 2
MODEL = "openai/bench-model"
#: A system prompt of the size the pipeline's stages send (a few KB), the same for every call.
SYSTEM = "You write terminal tasks for an agent benchmark. " + " ".join(
    f"Rule {i}: keep every file small, name paths explicitly, and make the tests deterministic." for i in range(40)
)


# --- the server (its own process) ------------------------------------------------------


def _reply(model: str, serial: int) -> bytes:
    body = {
        "id": f"chatcmpl-{serial}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"title": "a task", "ok": true}'}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940},
    }
    return json.dumps(body).encode()


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency_s: float, counter: list[int]) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = json.loads(await reader.readexactly(length)) if length else {}
            counter[0] += 1
            await asyncio.sleep(latency_s)  # the model "thinks" without holding a thread
            data = _reply(str(body.get("model", "bench-model")), counter[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(port_file: Path, latency_s: float) -> None:
    counter = [0]
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, latency_s, counter), "127.0.0.1", 0, backlog=1024, limit=1 << 22
    )
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


class ModelServer:
    """The asyncio server in a child process (inherits the driver's CPU pinning)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self._dir = tempfile.TemporaryDirectory(prefix="termigen-bench-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> ModelServer:
        port_file = Path(self._dir.name) / "port"
        self._proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file), "--latency", str(self.latency_s)])
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's model server did not start")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._dir.cleanup()


# --- the driver --------------------------------------------------------------------------


@dataclass
class Figures:
    concurrency: int
    calls: int
    latency_s: float
    wall_s: float
    cpu_s: float

    @property
    def throughput(self) -> float:
        return self.calls / self.wall_s

    @property
    def ideal(self) -> float:
        return self.calls / (math.ceil(self.calls / self.concurrency) * self.latency_s)

    @property
    def of_ideal(self) -> float:
        return self.throughput / self.ideal

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self.cpu_s / self.calls


def build_router(run_dir: Path, base_url: str, concurrency: int, *, direct: bool = True) -> Any:
    """The router exactly as ``termigen run`` builds it (``assembly.build_services``)."""
    from termigen_core.assembly import build_services, open_store
    from termigen_core.config import resolve_pipeline
    from termigen_core.plugins import build_plugin_host

    host = build_plugin_host()
    mapping = {
        "run": {"concurrency": concurrency, "llm_concurrency": concurrency},
        "llm": {
            "default": {"backend": "litellm", "model": MODEL, "max_retries": 0},
            "backends": {"litellm": {"api_base": base_url, "api_key": "sk-bench", "input_cost_per_token": 0, "output_cost_per_token": 0,
                                     "direct_openai": direct}},
        },
        "stages": [{"use": "seeds"}, {"use": "propose"}],
    }
    pipeline = resolve_pipeline(mapping, host.registry, source=run_dir / "bench.yaml")
    store, run_id = open_store(pipeline, run_dir)
    assembly = build_services(pipeline, host, run_dir, store, run_id, cancelled=threading.Event(), on_llm_call=lambda event: None)
    return assembly.router, store


def messages_for(index: int) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Seed {index}: write a task about log rotation for service number {index}. " * 8},
    ]


def drive(base_url: str, concurrency: int, calls: int, latency_s: float, *, direct: bool = True) -> tuple[Figures, Figures]:
    """(a cold first round: threads and connections start, then the measured calls on warm ones)."""
    from termigen_core.llm import CallScope

    with tempfile.TemporaryDirectory(prefix="termigen-bench-run-") as tmp:
        router, store = build_router(Path(tmp), base_url, concurrency, direct=direct)
        try:
            router.call("proposer", messages_for(-1), CallScope(key="warm-up@1", stage="propose"))  # imports

            def one(index: int) -> None:
                router.call("proposer", messages_for(index), CallScope(key=f"item-{index}@1", stage="propose"))

            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="termigen") as pool:
                cold = timed(pool, one, range(calls, calls + concurrency), concurrency, latency_s)
                warm = timed(pool, one, range(calls), concurrency, latency_s)
            paid = store.llm_call_count()
            if paid != calls + concurrency + 1:
                raise RuntimeError(f"expected {calls + concurrency + 1} recorded calls, the store has {paid}")
        finally:
            store.close()
    return cold, warm


def timed(pool: ThreadPoolExecutor, one: Any, indexes: range, concurrency: int, latency_s: float) -> Figures:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    list(pool.map(one, indexes))
    return Figures(concurrency, len(indexes), latency_s, time.perf_counter() - wall0, time.process_time() - cpu0)


def profile(base_url: str, calls: int) -> None:
    """One thread, calls back to back against a 0-latency server: where a call's CPU goes."""
    from termigen_core.llm import CallScope

    with tempfile.TemporaryDirectory(prefix="termigen-bench-run-") as tmp:
        router, store = build_router(Path(tmp), base_url, 1)
        router.call("proposer", messages_for(-1), CallScope(key="warm-up@1", stage="propose"))
        profiler = cProfile.Profile(time.thread_time)  # CPU, not waiting for the server
        cpu0 = time.process_time()
        profiler.enable()
        for index in range(calls):
            router.call("proposer", messages_for(index), CallScope(key=f"item-{index}@1", stage="propose"))
        profiler.disable()
        cpu = time.process_time() - cpu0
        store.close()
    print(f"{calls} calls in one thread: {1000 * cpu / calls:.2f} ms CPU per call (under the profiler)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
    print(out.getvalue())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue())


def pin_cores() -> str:
    available = sorted(os.sched_getaffinity(0))
    if len(available) > CORES:
        os.sched_setaffinity(0, available[:CORES])
        return f"pinned to cores {available[:CORES]}"
    return f"{len(available)} cores available"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, default=1.0, help="the model's latency in seconds (default 1)")
    parser.add_argument("--calls", type=int, default=512)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 256], help="first is the baseline")
    parser.add_argument("--no-litellm", dest="litellm", action="store_false",
                        help="skip the last case: the highest concurrency through litellm's own route, for comparison")
    parser.add_argument("--profile", type=int, metavar="CALLS", help="profile CALLS calls in one thread at 0 latency instead")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.latency))
        return
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    where = pin_cores()
    if args.profile:
        with ModelServer(0.0) as server:
            profile(server.base_url, args.profile)
        return
    print(f"llm_concurrency benchmark: {args.calls} calls, model latency {args.latency:g}s, {where}, python {sys.version.split()[0]}")
    results: list[Figures] = []
    with ModelServer(args.latency) as server:
        cases = [(c, True) for c in args.concurrency] + ([(args.concurrency[-1], False)] if args.litellm else [])
        for concurrency, direct in cases:
            cold, figures = drive(server.base_url, concurrency, args.calls, args.latency, direct=direct)
            results.append(figures)
            ratio = f"{figures.of_ideal / results[0].of_ideal:.2f}x the baseline's share of ideal" if len(results) > 1 else "baseline"
            route = "direct route" if direct else "litellm route (direct_openai: false)"
            print(
                f"concurrency {concurrency:4d}, {route}: {figures.wall_s:6.2f}s wall, {figures.throughput:6.1f} calls/s, "
                f"ideal {figures.ideal:6.1f} -> {100 * figures.of_ideal:5.1f}% of ideal; "
                f"{figures.cpu_ms_per_call:5.2f} ms CPU per call ({ratio})"
            )
            print(
                f"      first round ({concurrency} calls while threads and connections start): "
                f"{100 * cold.of_ideal:5.1f}% of ideal, {cold.cpu_ms_per_call:5.2f} ms CPU per call"
            )
        if args.litellm and len(results) > 2:
            print(f"direct vs litellm route at {args.concurrency[-1]} in flight: {results[-2].throughput / results[-1].throughput:.2f}x "
                  f"the throughput, {results[-1].cpu_ms_per_call / results[-2].cpu_ms_per_call:.1f}x less CPU per call")


if __name__ == "__main__":
    main()
