"""Engines: where a run's per-item steps execute, besides the driver's own thread pool.

``ray`` (:mod:`.ray_engine`) runs them on a Ray cluster; Ray is an optional extra
(``pip install 'termigen[ray]'``) and is imported only when ``run.engine: ray`` is used.
"""

from __future__ import annotations

from termigen_core import hookimpl


@hookimpl
def register_engines() -> list[type]:
    from .ray_engine import RayEngine

    return [RayEngine]
