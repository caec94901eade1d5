"""Prompt templates: the one way components read them.

A template is a ``string.Template`` file (``$name`` placeholders, so the JSON
braces prompts are full of need no escaping). Components ship defaults next to
their code and let users replace any of them with a file of their own; a
replacement that is missing is a config error naming the file, before any
model call is paid for.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from .errors import ConfigError, ConfigIssue


def read_prompt(default: Path, override: Path | None = None) -> str:
    """The text of ``override`` if given, else of the built-in ``default``."""
    path = override or default
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", f"prompt template not found: {path}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue("", f"cannot read prompt template {path}: {exc}")]) from None


def load_template(default: Path, override: Path | None = None) -> Template:
    """``read_prompt`` as a ``string.Template``."""
    return Template(read_prompt(default, override))
