"""How the BashAgent's turns are spelled: the ``tool_calls`` and ``hermes`` action formats.

Every turn is reasoning plus exactly one tool call, ``bash`` (run a command) or
``finish`` (declare the task done; completion is an explicit action, never a
phrase matched in the text). A format turns a model's reply text into an
:class:`Action` (or raises :class:`~termigen_core.errors.ParseError`, which the
agent shows the model so it can correct itself) and renders an action back to
the text the model wrote, for the conversation history.

``tool_calls``
    Native OpenAI tool calls: training data carries the reasoning as the
    assistant content and the call as a ``tool_calls`` entry against
    :data:`TOOLS`. Where the backend has native tool calling the agent sends
    :data:`TOOLS` and reads the calls (:class:`NativeToolCalls`); elsewhere the
    model is asked (:attr:`ActionFormat.transport`, never part of the recorded
    system prompt) for one JSON object::

        {"thought": "...", "tool": "bash", "arguments": {"command": "ls -la"}}
        {"thought": "...", "tool": "finish", "arguments": {"summary": "..."}}

``hermes``
    The Qwen/Hermes text format of the authors' BashAgent: the reasoning, then
    one block at the very end of the reply::

        <tool_call>
        {"name": "bash", "arguments": {"command": "ls -la"}}
        </tool_call>

    Text after the block is refused (the authors' own example trajectory leaked
    its private instruction exactly there).

:func:`observation_text` and the hermes rendering spell things exactly as the
SFT exporter does (``termigen_plugins.exporters.sft_format``), so the agent sees
at evaluation time what the training data taught.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from termigen_core.errors import ParseError
from termigen_core.llm import parse_json

#: The tool schema (OpenAI function format) recorded with every trajectory.
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": (
                "Run one bash command in the persistent shell of the task's container and return "
                "its combined stdout/stderr and exit code. State (cwd, env, files) persists between calls."
            ),
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string", "description": "the command line to run"}},
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "Declare the task complete; call it only after checking the result.",
            "parameters": {
                "type": "object",
                "properties": {"summary": {"type": "string", "description": "what was done and how it was checked"}},
                "required": [],
            },
        },
    },
]

ACTIONS = ("bash", "finish")
NO_OUTPUT = "(no output)"


@dataclass(frozen=True)
class Action:
    """One parsed turn. ``command`` is the bash command, or the finish summary (may be ``None``)."""

    thought: str
    action: str  # bash | finish
    command: str | None

    def arguments(self) -> dict[str, Any]:
        if self.action == "finish":
            return {"summary": self.command} if self.command else {}
        return {"command": self.command or ""}

    def assistant_text(self) -> str:
        """Everything the model says in this turn (what leak checks scan)."""
        return "\n".join(part for part in (self.thought, self.command or "") if part)


def observation_text(output: str, exit_code: int | None, timed_out: bool = False, duration_s: float = 0.0) -> str:
    """What the agent is shown after a command: its output, then the exit status."""
    text = output.rstrip("\n") or NO_OUTPUT
    if timed_out:
        return f"{text}\n[command timed out after {duration_s:.0f}s]"
    if exit_code is not None:
        return f"{text}\n[exit code: {exit_code}]"
    return text


def _action_from(name: Any, arguments: Any, thought: str) -> Action:
    """Validate a call's name and arguments (shared by both formats)."""
    if name not in ACTIONS:
        raise ParseError(f"unknown tool {name!r}: use \"bash\" (run a command) or \"finish\" (task complete)")
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
        try:
            # strict=False: models write raw newlines inside strings (a multi-line command)
            arguments = json.loads(arguments, strict=False) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ParseError(f"the arguments are not valid JSON: {exc.msg}") from exc
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ParseError("\"arguments\" must be a JSON object")
    if name == "bash":
        command = arguments.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ParseError("the bash call needs a non-empty string argument \"command\"")
        return Action(thought, "bash", command.strip("\n"))
    summary = arguments.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise ParseError("the finish argument \"summary\" must be a string")
    return Action(thought, "finish", summary.strip() if summary and summary.strip() else None)


class ActionFormat:
    """Parses and renders one spelling of the agent's turns."""

    name: ClassVar[str] = ""
    #: Appended to the public system prompt: how the agent writes a call (part of what training teaches).
    public_instructions: ClassVar[str] = ""
    #: Appended only while collecting over a text-only LLM interface (never recorded).
    transport: ClassVar[str] = ""

    def parse(self, text: str) -> Action:
        raise NotImplementedError

    def render(self, action: Action) -> str:
        raise NotImplementedError


class ToolCallsFormat(ActionFormat):
    """Native tool calls, carried as one JSON object while collecting (see the module docstring)."""

    name = "tool_calls"
    public_instructions = (
        "Use the `bash` tool to run a command and the `finish` tool when the task is complete. "
        "Make exactly one tool call per reply, after your reasoning."
    )
    transport = (
        "Reply with exactly one JSON object and nothing else, in one of these two shapes:\n"
        '{"thought": "<your reasoning for this step>", "tool": "bash", "arguments": {"command": "<one bash command>"}}\n'
        '{"thought": "<your reasoning>", "tool": "finish", "arguments": {"summary": "<what was done and how it was checked>"}}'
    )

    def parse(self, text: str) -> Action:
        data = parse_json(text)
        if not isinstance(data, dict):
            raise ParseError("reply with one JSON object with the keys thought, tool and arguments")
        thought = data.get("thought", data.get("content", ""))
        if not isinstance(thought, str) or not thought.strip():
            raise ParseError("\"thought\" must be a non-empty string: explain your reasoning before the call")
        name = data.get("tool", data.get("name"))
        return _action_from(name, data.get("arguments"), thought.strip())

    def render(self, action: Action) -> str:
        return json.dumps(
            {"thought": action.thought, "tool": action.action, "arguments": action.arguments()}, ensure_ascii=False
        )


class NativeToolCalls:
    """Reads a reply's native tool calls into an :class:`Action` (a parser for ``LLMClient.ask``).

    Exactly one call is expected; the reply's text is the reasoning (models often
    write none when a call is forced, so it may be empty). A reply without a
    call is parsed as the format's text spelling, as some servers put the call there.
    """

    def __init__(self, fallback: ActionFormat) -> None:
        self.fallback = fallback

    def __call__(self, text: str) -> Action:
        return self.fallback.parse(text)

    def parse_response(self, response: Any) -> Action:
        calls = list(response.tool_calls)
        if not calls:
            try:
                return self.fallback.parse(response.text)
            except ParseError:
                raise ParseError("no tool call in the reply: call the bash tool to run a command, or finish when done") from None
        if len(calls) > 1:
            raise ParseError(f"the reply makes {len(calls)} tool calls: make exactly one per reply")
        return _action_from(calls[0].name, calls[0].arguments, (response.text or "").strip())

    @staticmethod
    def wire_call(call_id: str, action: Action) -> dict[str, Any]:
        """The ``tool_calls`` entry of an assistant message for ``action``."""
        arguments = json.dumps(action.arguments(), ensure_ascii=False)
        return {"id": call_id, "type": "function", "function": {"name": action.action, "arguments": arguments}}


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class HermesFormat(ActionFormat):
    """Reasoning, then one ``<tool_call>{json}</tool_call>`` block (Qwen/Hermes, the authors' agent)."""

    name = "hermes"
    public_instructions = (
        "To act, write your reasoning, then exactly one tool call at the end of your reply:\n"
        "<tool_call>\n"
        '{"name": "bash", "arguments": {"command": "your_command_here"}}\n'
        "</tool_call>\n"
        "When the task is complete and you have checked the result, call finish instead:\n"
        "<tool_call>\n"
        '{"name": "finish", "arguments": {"summary": "what was done and how it was checked"}}\n'
        "</tool_call>"
    )

    def parse(self, text: str) -> Action:
        calls = list(_CALL.finditer(text))
        if not calls:
            if "<tool_call>" in text:
                raise ParseError("the <tool_call> block is not closed with </tool_call>")
            raise ParseError("no <tool_call> block: end your reply with one tool call (bash or finish)")
        if len(calls) > 1:
            raise ParseError(f"found {len(calls)} <tool_call> blocks: make exactly one tool call per reply")
        call = calls[0]
        if text[call.end() :].strip():
            raise ParseError("write nothing after the </tool_call> block: put all your reasoning before it")
        try:
            payload = json.loads(call.group(1).strip())
        except json.JSONDecodeError as exc:
            raise ParseError(f"the <tool_call> block is not valid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(payload, dict) or "name" not in payload:
            raise ParseError('the <tool_call> block must hold {"name": ..., "arguments": {...}}')
        thought = text[: call.start()].strip()
        if not thought:
            raise ParseError("explain your reasoning before the <tool_call> block")
        return _action_from(payload.get("name"), payload.get("arguments"), thought)

    def render(self, action: Action) -> str:
        payload = json.dumps({"name": action.action, "arguments": action.arguments()}, ensure_ascii=False)
        call = f"<tool_call>\n{payload}\n</tool_call>"
        return f"{action.thought.strip()}\n\n{call}" if action.thought.strip() else call


FORMATS: dict[str, type[ActionFormat]] = {cls.name: cls for cls in (ToolCallsFormat, HermesFormat)}


def get_format(name: str) -> ActionFormat:
    """The format called ``name`` (``tool_calls`` or ``hermes``)."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(f"unknown agent format {name!r}; known: {', '.join(FORMATS)}") from None
