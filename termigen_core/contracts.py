"""Stage contracts: which item kinds a stage takes (``accepts``) and gives (``produces``).

Rules (also in :class:`~termigen_core.components.Stage` and docs/architecture.md):

* empty ``accepts``: the stage takes items of any kind;
* empty ``produces``: the stage's outputs have the kind(s) of its input (it passes
  items on, annotated); a *source* stage with empty ``produces`` says nothing, so the
  stage after it is not checked;
* the pipeline is checked when the config is validated (:func:`stage_chain_issues`,
  called by ``resolve_pipeline``): each stage must accept every kind the stages before
  it can hand it, so ``termigen config check`` reports a mis-ordered pipeline and
  ``termigen run`` never starts one;
* at run time, a stage that declares ``produces`` and returns an item of another kind
  has a bug: that step fails with the reason (:func:`check_output_kinds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigIssue

if TYPE_CHECKING:
    from .components import Stage
    from .items import Item
    from .plugins import ComponentRegistry


def _kinds(kinds: Iterable[str]) -> str:
    return " or ".join(sorted(kinds))


def stage_chain_issues(refs: Sequence[Any], registry: ComponentRegistry) -> list[ConfigIssue]:
    """Issues for each stage of ``refs`` (the config's ``stages``, each with ``use``) that
    cannot take what the stages before it produce. Unknown stage names are skipped (they
    are reported elsewhere)."""
    issues: list[ConfigIssue] = []
    for index, (ref, cls, incoming, producer) in enumerate(_walk(refs, registry)):
        if cls is None or index == 0:
            continue
        accepts = frozenset(getattr(cls, "accepts", ()) or ())
        if accepts and incoming is not None and not incoming <= accepts:
            issues.append(ConfigIssue(
                f"stages[{index}].use",
                f"stage {ref.use!r} accepts {_kinds(accepts)} items, but {producer} produces {_kinds(incoming)}",
            ))
    return issues


def stage_output_kinds(refs: Sequence[Any], registry: ComponentRegistry) -> list[frozenset[str] | None]:
    """The item kinds each stage of ``refs`` hands on (None: not declared anywhere up to it).

    A stage that declares no ``produces`` passes on what it was given, so a
    pipeline's ``validate`` or ``verify`` steps hand on ``task`` items even when
    only ``synthesize`` says so. ``run.target`` counts at the last stage whose
    outputs are of the target's kind.
    """
    kinds: list[frozenset[str] | None] = []
    for _ref, cls, incoming, _producer in _walk(refs, registry):
        produces = frozenset(getattr(cls, "produces", ()) or ()) if cls is not None else frozenset()
        if produces:
            kinds.append(produces)
        elif cls is None or getattr(cls, "source", False):
            kinds.append(None)
        else:
            kinds.append(incoming)
    return kinds


def _walk(refs: Sequence[Any], registry: ComponentRegistry) -> Iterator[tuple[Any, type | None, frozenset[str] | None, str]]:
    """Each stage ref with its class (None: unknown name) and the kinds the stages before it hand
    it (None: unknown), with who last declared them ("stage 'x' (stages[i])")."""
    incoming: frozenset[str] | None = None
    producer = ""
    known = set(registry.names("stage"))
    for index, ref in enumerate(refs):
        if ref.use not in known:
            yield ref, None, incoming, producer
            incoming, producer = None, ""
            continue
        cls = registry.get("stage", ref.use)
        yield ref, cls, incoming, producer
        produces = frozenset(getattr(cls, "produces", ()) or ())
        if produces:
            incoming, producer = produces, f"stage {ref.use!r} (stages[{index}])"
        elif getattr(cls, "source", False):
            incoming, producer = None, ""


def check_output_kinds(stage: Stage, outputs: list[Item]) -> None:
    """Raise ``TypeError`` if ``stage`` declares ``produces`` and an output has another kind."""
    produces = tuple(getattr(stage, "produces", ()) or ())
    if not produces:
        return
    for item in outputs:
        if item.kind not in produces:
            raise TypeError(
                f"stage {stage.name!r} returned item {item.id!r} of kind {item.kind!r}, but it declares "
                f"produces = {produces!r} (a bug in the stage's plugin)"
            )
