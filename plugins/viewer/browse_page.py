"""``browse.html``: one self-contained page to search a run's items and read each task and trajectory.

The page is static and works offline: the data (:mod:`.records`) is embedded as JSON in a
``<script type="application/json">`` block, and ``assets/browse.js`` / ``assets/browse.css``
are inlined, so the file can be mailed, archived or opened from disk. Hash routes pick the
view: ``#`` the list, ``#task/<item id>``, ``#traj/<item id>``.

What models wrote is hostile text: the JSON is escaped so that nothing in it can close the
block (``<``, ``>``, ``&`` and the JavaScript line separators as ``\\uXXXX``), the script
puts it into the page as text nodes only, and the page's Content-Security-Policy lets only
its own script run (by hash) and fetch nothing, so an ``<img onerror>`` that slipped through
would still do nothing.
"""

from __future__ import annotations

import base64
import hashlib
import time
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from termigen_core.fileio import atomic_write_text

from .records import BrowseData, load_browse_data

PAGE_NAME = "browse.html"
_ASSETS = "termigen_plugins.viewer.assets"

#: What could end a ``<script>`` block or be read as markup, spelled as JSON string escapes
#: (these characters only occur inside JSON strings, where the escapes mean the same text).
_JSON_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def script_safe(json_text: str) -> str:
    """JSON text made safe inside a ``<script>`` element, whatever its strings hold."""
    for char, escape in _JSON_ESCAPES:
        json_text = json_text.replace(char, escape)
    return json_text


def _asset(name: str) -> str:
    text = resources.files(_ASSETS).joinpath(name).read_text(encoding="utf-8")
    if "</" in text and name.endswith(".js"):
        raise ValueError(f"{name} contains '</', which would end its inline <script> element")
    if "</style" in text.lower():
        raise ValueError(f"{name} contains '</style', which would end its inline <style> element")
    return text


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("termigen_plugins.viewer", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        keep_trailing_newline=True,
    )


def render_browse_html(data: BrowseData) -> str:
    """The page for ``data`` (a string of HTML)."""
    script = _asset("browse.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    template = _environment().get_template("browse.html.j2")
    return template.render(
        run_id=data.run_id,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        css=Markup(_asset("browse.css")),
        script=Markup(script),
        script_hash=f"sha256-{digest}",
        data_json=Markup(script_safe(data.model_dump_json())),
    )


def write_browse_html(run_dir: Path) -> Path:
    """Write ``run_dir/browse.html`` from the run's store (atomically: a reader never sees half a page)."""
    run_dir = Path(run_dir)
    target = run_dir / PAGE_NAME
    atomic_write_text(target, render_browse_html(load_browse_data(run_dir)))
    return target
