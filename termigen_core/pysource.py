"""Parsing Python source that models wrote, safely from many threads.

CPython 3.11 (before 3.11.9) and early 3.12 keep the AST converter's recursion-depth
counter per interpreter, not per thread, so two threads parsing at once can fail with
``SystemError: AST constructor recursion depth mismatch`` (CPython gh-106905): seen here
when several items' test files were checked at the same time. Parsing is milliseconds;
one lock around it costs nothing measurable and removes the race on every version.
"""

from __future__ import annotations

import ast
import threading
from types import CodeType

_PARSE_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse`` under the process-wide parse lock (raises ``SyntaxError`` as it does)."""
    with _PARSE_LOCK:
        return ast.parse(source, filename=filename)


def compile_module(tree: ast.Module, filename: str) -> CodeType:
    """``compile`` of a parsed module under the same lock (it converts the AST back)."""
    with _PARSE_LOCK:
        return compile(tree, filename, "exec")
