"""Prompt caching on an agent-like episode: billed input tokens and dollars, uncached vs cached.

A benchmark, not a test: it prints the figures and never fails on numbers. One
deterministic 25-turn episode (a ~2k-token system prompt, a task instruction, then per
turn an assistant action of ~80 tokens and an observation of ~250: about 8.7k tokens of
conversation, like the paper's trajectories, 25.5 turns and 8.7k tokens on average) is
sent turn by turn to the loopback Anthropic server (tests/support/anthropic_server.py),
which accounts for the prompt cache the way Anthropic's API does, twice:

1. without caching -- the baseline;
2. with caching.

Default mode: through termigen's own LLM layer, ``LLMRouter`` with the ``litellm``
backend and ``RoleSettings(model="anthropic/claude-sonnet-4-5", prompt_caching="off"``
then ``"auto")``: the backend places the ``cache_control`` breakpoints, the ledger
(``llm_calls``) gets ``cache_read_tokens`` / ``cache_write_tokens`` / ``cost_usd``.
``--manual``: litellm is called directly and the benchmark places the breakpoints itself
(the system prompt and the last two user messages), to check the server and the
arithmetic independently of the router.

Billed input tokens are the server's usage (plain input, cache writes, cache reads);
dollars use claude-sonnet-4-5's prices from litellm's bundled price map (writes 1.25x and
reads 0.1x the input price there). Goal: caching cuts the input-token dollars >= 3x.
Nothing leaves 127.0.0.1.

    .venv/bin/python benchmarks/prompt_caching.py            # termigen's router
    .venv/bin/python benchmarks/prompt_caching.py --manual   # litellm directly
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "anthropic/claude-sonnet-4-5"
PRICE_KEY = "claude-sonnet-4-5"

# --- the episode ------------------------------------------------------------------

_COMMANDS = [
    ("ls -la PATH", "list a directory with sizes, owners and modification times"),
    ("find PATH -name GLOB -size +Nk", "locate files by name and size; add -newer FILE for recent ones"),
    ("grep -rn PATTERN PATH", "search file contents recursively and print line numbers"),
    ("sed -n 'A,Bp' FILE", "print a line range of a file without opening an editor"),
    ("awk -F, '{print $N}' FILE", "pick columns out of delimited text"),
    ("sort | uniq -c | sort -rn", "count and rank repeated lines"),
    ("python3 -m pytest -q DIR", "run a test suite quietly; -x stops at the first failure"),
    ("pip list --format=freeze", "show installed Python packages and their versions"),
    ("apt-get install -y --no-install-recommends PKG", "install a Debian package (run apt-get update first)"),
    ("systemctl status UNIT", "not available in containers: inspect processes with ps instead"),
    ("ps aux --sort=-%mem | head", "list the processes using the most memory"),
    ("df -h && du -sh PATH/*", "show free disk space and the size of each entry under a path"),
    ("tar -czf OUT.tar.gz DIR", "archive and compress a directory"),
    ("gzip -k FILE", "compress a file and keep the original"),
    ("curl -s URL", "fetch a URL; there is no internet access, only local services"),
    ("jq '.key' FILE", "query JSON documents"),
    ("git log --oneline -n 20", "show recent commits of a repository"),
    ("git diff --stat", "summarise uncommitted changes"),
    ("chmod +x FILE", "make a script executable"),
    ("crontab -l", "list scheduled jobs of the current user"),
    ("journalctl", "not available: read logs under /var/log or the application's own log folder"),
    ("sqlite3 DB '.tables'", "inspect a SQLite database"),
    ("head -n 20 FILE / tail -n 50 FILE", "look at the start or end of a large file"),
    ("wc -l FILE", "count lines"),
    ("diff -u A B", "compare two files"),
]

_RULES = [
    "Run exactly one command per turn and wait for its output before deciding the next step.",
    "Never assume the content of a file you have not looked at; inspect it first.",
    "Prefer small, verifiable steps: check the state after every change that matters.",
    "When a command fails, read the error message, diagnose the cause, and fix it before moving on.",
    "Do not install packages unless the task needs them; the environment has no internet access.",
    "Keep the original data unless the task says otherwise; write outputs exactly where the task asks.",
    "Do not modify the tests or any file under /tests; they decide whether the task is done.",
    "Finish only when every requirement is met and you have checked the result with a command.",
]


def _paragraph(rng: random.Random, words: int) -> str:
    vocab = ["the", "file", "the", "service", "the", "log", "the", "archive", "the", "report", "each", "line", "every", "record", "a", "checksum", "the", "output", "the", "input", "directory", "permissions", "ownership", "the", "cron", "job", "the", "config", "the", "parser", "a", "timestamp", "the", "status", "code", "the", "build", "the", "test", "suite", "the", "package", "version", "the", "environment", "variable", "the", "script", "the", "queue", "a", "worker", "the", "database", "table", "the", "index", "the", "cache", "the", "request", "the", "response"]
    return " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "."


def system_prompt(rng: random.Random, target_tokens: int) -> str:
    from tests.support.anthropic_server import count_tokens

    parts = [
        ("You are an expert software and systems engineer working in a Linux terminal. You solve the task "
         "the user gives you by running bash commands in a persistent shell inside the task's container; the "
         "working directory is /app. Shell state (current directory, environment variables, files) carries "
         "over between commands."),
        ("## Reply format\nEach reply has a short 'Thought:' explaining what you know and what you will do "
         "next, then 'Action: bash' and the command in a ```bash fenced block, or 'Action: finish' when the "
         "task is complete."),
        "## Rules\n" + "\n".join(f"{i}. {rule}" for i, rule in enumerate(_RULES, 1)),
        "## Command reference\n" + "\n".join(f"- `{cmd}`: {what}" for cmd, what in _COMMANDS),
    ]
    n = 1
    while count_tokens({"type": "text", "text": "\n\n".join(parts)}) < target_tokens:
        parts.append(f"## Worked example {n}\n" + _paragraph(rng, 60) + "\n" + _paragraph(rng, 45))
        n += 1
    return "\n\n".join(parts)


def observation(rng: random.Random, turn: int, target_tokens: int) -> str:
    from tests.support.anthropic_server import count_tokens

    lines = [f"[exit code {rng.choice([0, 0, 0, 1, 2])}, {rng.randint(5, 900)} ms]"]
    kind = turn % 3
    while count_tokens({"type": "text", "text": "\n".join(lines)}) < target_tokens:
        if kind == 0:
            lines.append(f"-rw-r--r-- 1 root root {rng.randint(80, 99999):>6} Oct {rng.randint(1, 28):>2} "
                         f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} data_{rng.randint(0, 999):03d}.csv")
        elif kind == 1:
            lines.append(f"2024-10-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                         f"{rng.randint(0, 59):02d}Z {rng.choice(['INFO', 'WARN', 'ERROR'])} worker-{rng.randint(1, 8)} "
                         f"batch {rng.randint(1000, 9999)} took {rng.randint(3, 400)}ms status={rng.choice([200, 404, 500])}")
        else:
            lines.append(f"tests/test_task.py::test_case_{rng.randint(1, 60)} "
                         f"{rng.choice(['PASSED', 'PASSED', 'FAILED'])} [{rng.randint(1, 100):>3}%]")
    return "\n".join(lines)


def action(rng: random.Random, turn: int, target_tokens: int) -> str:
    from tests.support.anthropic_server import count_tokens

    cmd = rng.choice(_COMMANDS)[0].replace("PATH", "/app/data").replace("FILE", f"/app/out_{turn}.txt")
    text = f"Thought: {_paragraph(rng, 12)}"
    while count_tokens({"type": "text", "text": text + cmd}) < target_tokens - 8:
        text += " " + _paragraph(rng, 8)
    return f"{text}\nAction: bash\n```bash\n{cmd}\n```"


def _guidance(rng: random.Random, turn: int, target_tokens: int) -> str:
    from tests.support.anthropic_server import count_tokens

    if target_tokens <= 0:
        return ""
    text = f"[PRIVATE STEP GUIDANCE: for you alone]\nStep {turn + 1}."
    while count_tokens({"type": "text", "text": text}) < target_tokens:
        text += " " + _paragraph(rng, 10)
    return text


@dataclass
class Episode:
    system: str
    instruction: str
    actions: list[str]
    observations: list[str]
    #: Per-turn text appended to the last user message and dropped by the next request (like the
    #: trajectory collector's private step guidance); empty strings for none.
    guidance: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, turns: int, system_tokens: int, action_tokens: int, observation_tokens: int,
             guidance_tokens: int = 0, seed: int = 7) -> Episode:
        rng = random.Random(seed)
        return cls(
            guidance=[_guidance(random.Random(seed * 1000 + t), t, guidance_tokens) for t in range(turns)],
            system=system_prompt(rng, system_tokens),
            instruction="Compress every .log file in /app/logs larger than 200 bytes into /app/archive/NAME.log.gz, "
                        "remove the originals, and write a summary of the HTTP status codes found in them to "
                        "/app/status_counts.txt, one 'CODE COUNT' line per code, sorted by code. " + _paragraph(rng, 60),
            actions=[action(rng, t, action_tokens) for t in range(turns)],
            observations=[observation(rng, t, observation_tokens) for t in range(turns)],
        )

    def conversation_tokens(self) -> int:
        from tests.support.anthropic_server import count_tokens

        texts = [self.instruction, *self.actions, *self.observations]
        return sum(count_tokens({"type": "text", "text": t}) for t in texts)

    def responder(self, body: dict[str, Any]) -> str:
        """The scripted assistant: turn N's action, N = assistant messages already in the request."""
        done = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        return self.actions[min(done, len(self.actions) - 1)]

    def turns(self):
        """The messages of each request, in termigen's shape (system first)."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system},
                                          {"role": "user", "content": self.instruction}]
        for t in range(len(self.actions)):
            request = [dict(m) for m in messages]
            if self.guidance and self.guidance[t]:
                request[-1]["content"] += "\n\n" + self.guidance[t]
            yield request
            messages += [{"role": "assistant", "content": self.actions[t]}, {"role": "user", "content": self.observations[t]}]


# --- running it -------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    usages: list[dict[str, Any]] = field(default_factory=list)  # the server's, per call
    cost_usd: float = 0.0  # litellm's completion_cost (manual) or the ledger's cost_usd (router)
    ledger: dict[str, int] | None = None  # router mode: the llm_calls columns, summed
    ledger_uncached_usd: float | None = None  # router mode: the ledger's uncached_cost_usd, summed
    other_paths: list[str] = field(default_factory=list)  # anything litellm asked for besides /v1/messages
    max_breakpoints: int = 0

    def total(self, key: str) -> int:
        return sum(int(u.get(key) or 0) for u in self.usages)

    def input_dollars(self, price: dict[str, float]) -> float:
        return (self.total("input_tokens") * price["input_cost_per_token"]
                + self.total("cache_creation_input_tokens") * price["cache_creation_input_token_cost"]
                + self.total("cache_read_input_tokens") * price["cache_read_input_token_cost"])


def _breakpoints(body: dict[str, Any]) -> int:
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    blocks += system if isinstance(system, list) else []
    for m in body.get("messages", []):
        blocks += m["content"] if isinstance(m.get("content"), list) else []
    return sum(1 for b in blocks if isinstance(b, dict) and b.get("cache_control"))


def with_breakpoints(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """--manual: mark the system prompt and the last two user messages (3 of the 4 allowed)."""
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m["role"] == "user"][-2:]
    for i, m in enumerate(out):
        if m["role"] == "system" or i in users:
            out[i]["content"] = [{"type": "text", "text": m["content"], "cache_control": {"type": "ephemeral"}}]
    return out


def run_manual(litellm: Any, episode: Episode, caching: bool) -> Result:
    from tests.support.anthropic_server import AnthropicServer

    result = Result("cached (manual breakpoints)" if caching else "uncached")
    with AnthropicServer(episode.responder) as server:
        for messages in episode.turns():
            resp = litellm.completion(
                model=MODEL, api_base=server.url, api_key="sk-dummy", num_retries=0, max_retries=0,
                messages=with_breakpoints(messages) if caching else messages,
            )
            result.cost_usd += float(litellm.completion_cost(completion_response=resp))
        result.usages = server.usages
        result.max_breakpoints = max(_breakpoints(b) for b in server.requests)
        result.other_paths = [p for p in server.paths if p != "/v1/messages"]
    return result


def run_router(episode: Episode, prompt_caching: str, workdir: Path) -> Result:
    from termigen_core.llm import CallScope, LLMRouter, RoleSettings
    from termigen_core.store import RunStore
    from termigen_plugins.backends.litellm_backend import LiteLLMBackend
    from tests.support.anthropic_server import AnthropicServer

    result = Result(f'router, prompt_caching="{prompt_caching}"')
    with AnthropicServer(episode.responder) as server:
        store = RunStore(workdir / f"run-{prompt_caching}")
        try:
            router = LLMRouter(
                default=RoleSettings(backend="litellm", model=MODEL, api_base=server.url, api_key="sk-dummy",
                                     prompt_caching=prompt_caching, max_retries=0),
                roles={}, backends={"litellm": LiteLLMBackend}, store=store,
            )
            client = router.client("agent", CallScope(key="episode/trajectories", stage="trajectories"))
            for messages in episode.turns():
                client.chat(messages)
            rows = [r for r in store.llm_calls() if r["status"] == "ok"]
        finally:
            store.close()
        result.usages = server.usages
        result.max_breakpoints = max(_breakpoints(b) for b in server.requests)
        result.other_paths = [p for p in server.paths if p != "/v1/messages"]
    result.cost_usd = sum(float(r.get("cost_usd") or 0.0) for r in rows)
    if all(r.get("uncached_cost_usd") is not None for r in rows):
        result.ledger_uncached_usd = sum(float(r["uncached_cost_usd"]) for r in rows)
    result.ledger = {k: sum(int(r.get(k) or 0) for r in rows) for k in ("prompt_tokens", "cache_read_tokens", "cache_write_tokens")}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual", action="store_true", help="call litellm directly and place the breakpoints here")
    parser.add_argument("--turns", type=int, default=25)
    parser.add_argument("--system-tokens", type=int, default=2000)
    parser.add_argument("--action-tokens", type=int, default=80)
    parser.add_argument("--observation-tokens", type=int, default=250)
    parser.add_argument("--guidance-tokens", type=int, default=0,
                        help="append ~N tokens of per-turn guidance to the last user message, dropped by the next request")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the server's usage for every call")
    args = parser.parse_args()

    for name, value in (("LITELLM_LOCAL_MODEL_COST_MAP", "True"), ("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True"),
                        ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(name, value)  # offline: bundled price map and beta-header table
    sys.path.insert(0, str(REPO))
    from termigen_plugins.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    price = {k: float(v) for k, v in litellm.model_cost[PRICE_KEY].items() if k.endswith(("_cost", "_per_token"))}
    episode = Episode.make(args.turns, args.system_tokens, args.action_tokens, args.observation_tokens, args.guidance_tokens)

    if args.manual:
        baseline, cached = run_manual(litellm, episode, False), run_manual(litellm, episode, True)
        mode = "manual: litellm.completion, breakpoints on the system prompt and the last two user messages"
    else:
        from termigen_core.llm import RoleSettings

        if "prompt_caching" not in RoleSettings.model_fields:
            print("termigen's RoleSettings has no prompt_caching setting yet: run with --manual", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="termigen-bench-") as tmp:
            os.environ["TERMIGEN_HOME"] = str(Path(tmp) / "home")  # keep the user's caches out of it
            baseline, cached = run_router(episode, "off", Path(tmp)), run_router(episode, "auto", Path(tmp))
        mode = "termigen LLMRouter + litellm backend (prompt_caching off / auto)"

    from tests.support.anthropic_server import count_tokens

    print(f"mode: {mode}")
    print(f"episode: {args.turns} turns; system prompt {count_tokens({'type': 'text', 'text': episode.system})} tokens; "
          f"conversation {episode.conversation_tokens()} tokens (server count: len(JSON)/4 per block)"
          + (f"; ~{args.guidance_tokens} tokens of guidance on each request's last message" if args.guidance_tokens else ""))
    print(f"prices ({PRICE_KEY}, litellm's bundled map, $ per 1M tokens): input {price['input_cost_per_token'] * 1e6:g}, "
          f"cache write {price['cache_creation_input_token_cost'] * 1e6:g}, cache read {price['cache_read_input_token_cost'] * 1e6:g}, "
          f"output {price['output_cost_per_token'] * 1e6:g}")
    if args.verbose:
        for result in (baseline, cached):
            print(f"\n{result.label}: per call (input / cache write / cache read / output)")
            for i, u in enumerate(result.usages, 1):
                print(f"  turn {i:>2}: {u['input_tokens']:>6} {u['cache_creation_input_tokens']:>6} "
                      f"{u['cache_read_input_tokens']:>6} {u['output_tokens']:>4}")
    header = (f"\n{'run':<34}{'calls':>6}{'breakpts':>9}{'plain in':>10}{'cache wr':>10}{'cache rd':>10}"
              f"{'input $':>11}{'output $':>10}{'total $':>10}{'input $ vs':>12}")
    print(header)
    print("-" * (len(header) - 1))
    base_dollars = baseline.input_dollars(price)
    for result in (baseline, cached):
        dollars = result.input_dollars(price)
        output = result.total("output_tokens") * price["output_cost_per_token"]
        print(f"{result.label:<34}{len(result.usages):>6}{result.max_breakpoints:>9}{result.total('input_tokens'):>10}"
              f"{result.total('cache_creation_input_tokens'):>10}{result.total('cache_read_input_tokens'):>10}"
              f"{dollars:>11.4f}{output:>10.4f}{result.cost_usd:>10.4f}{base_dollars / max(dollars, 1e-12):>11.2f}x")
    for result in (baseline, cached):
        expected = result.input_dollars(price) + result.total("output_tokens") * price["output_cost_per_token"]
        if abs(result.cost_usd - expected) > 1e-9 + 1e-6 * expected:
            print(f"note: {result.label}: recorded cost ${result.cost_usd:.6f} differs from the usage priced here ${expected:.6f}")
        if result.ledger is not None:
            server_side = {"prompt_tokens": sum(result.total(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")),
                           "cache_read_tokens": result.total("cache_read_input_tokens"),
                           "cache_write_tokens": result.total("cache_creation_input_tokens")}
            agree = "agrees with" if result.ledger == server_side else "DIFFERS from"
            print(f"ledger ({result.label}): {result.ledger} -- {agree} the server's usage {server_side}")
            if result.ledger_uncached_usd is not None:
                print(f"ledger ({result.label}): cost_usd ${result.cost_usd:.4f}, uncached_cost_usd ${result.ledger_uncached_usd:.4f}")
        if result.other_paths:
            print(f"note: {result.label}: requests to other paths: {sorted(set(result.other_paths))}")
    ratio = base_dollars / max(cached.input_dollars(price), 1e-12)
    total_ratio = baseline.cost_usd / max(cached.cost_usd, 1e-12)
    print(f"\nuncached/cached: input-token dollars {ratio:.2f}x, total cost {total_ratio:.2f}x")
    print(f"goal (>= 3x fewer billed input-token dollars with caching): {'met' if ratio >= 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
