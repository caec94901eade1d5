"""Task build time with and without the image catalog (issue 14, item 3).

Two sets of real task Dockerfiles, each built on the real Docker engine with ``--no-cache``
(the task's own steps always run; the FROM image is whatever each mode names):

* the quickstart's tasks: the Dockerfiles its scripted env agent finally writes
  (``examples/quickstart.script.yaml``; a build-stage repair replaces the first attempt);
* a seeded sample of the TermiGen authors' tasks (Harbor folders, default
  ``/tmp/tbenv/environments_harbor``, else the ``terminal-bench-env`` mirror), their FROM
  mapped to ``termigen/python:bookworm`` as ``images.aliases`` does for imported tasks.

Modes, per task:

* ``written``: the Dockerfile as written (the task's own install lines);
* ``base``: what the env agent is told to write without a catalog: FROM the base, install
  lines minus what the base image already has (python3, pip, pytest, ...);
* ``catalog``: what it is told to write with ``images.catalog: all``: FROM the catalog image
  that lets it drop the most requested packages beyond what the base does (the base if none
  does), install lines minus what that image has.

"What an image has" is its manifest (``dpkg-query`` and ``pip list`` read from the built
image; bootstrap stores it as a label; the base's is read the same way here). A package is
dropped by name: an apt package the image has, a pip requirement whose distribution the image
has, whatever version was pinned (the env agent is told to use what is installed). How many
pins were dropped although the installed version differs is printed; ``--strict-pins`` keeps
those instead. An install command left with no package becomes ``true`` (no ``apt-get
update`` either). Tasks whose COPY sources are missing get empty placeholder files (only the
quickstart's, whose files live in the script). Every image built here is removed; the catalog
images are not (``termigen images bootstrap --catalog`` must have built them).

Prints per task the seconds per mode, then per set the median build seconds of the tasks that
built in every mode, the ratios catalog/written and catalog/base, and how many built per mode.

    python benchmarks/catalog_builds.py --sample 10 --seed 14
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = "termigen/python:bookworm"
ALIASES = {"ghcr.io/laude-institute/t-bench/*": BASE}
AUTHORS_DIRS = (Path("/tmp/tbenv/environments_harbor"),)
MODES = ("written", "base", "catalog")
_SEGMENT_END = re.compile(r"&&|\|\||;|\|")
_APT_INSTALL = re.compile(r"\b(apt-get|apt)\s+(?:-\S+\s+)*install\b")
_PIP_INSTALL = re.compile(r"\b(?:pip3?(?:\.\d+)?|python3?(?:\.\d+)?\s+-m\s+pip)\s+install\b")


@dataclass
class Pruned:
    dockerfile: str
    dropped: int = 0
    mismatched_pins: int = 0
    requested: list[str] = field(default_factory=list)


def _prune_segment(segment: str, has_apt, pip_version, strict: bool, out: Pruned) -> str:
    """One shell command (no ``&&``): an apt/pip install without what the image has."""
    apt, pip = _APT_INSTALL.search(segment), _PIP_INSTALL.search(segment)
    found = apt or pip
    if not found:
        return segment
    head, words = segment[: found.end()], segment[found.end():].split()
    kept, packages = [], 0
    for word in words:
        if word.startswith("-"):  # an option
            kept.append(word)
            continue
        if pip and (word.startswith(("http", "/", ".", "git+")) or kept and kept[-1] in ("-r", "-c", "-i", "--index-url")):
            kept.append(word)
            packages += 1
            continue
        packages += 1
        if apt:
            name = word.split("=", 1)[0].split(":", 1)[0]
            out.requested.append(name)
            if has_apt(name):
                out.dropped += 1
                continue
        else:
            name = re.split(r"[=<>~!\[;@ ]", word.strip("'\""), maxsplit=1)[0]
            out.requested.append(name.lower())
            installed = pip_version(name)
            pinned = re.search(r"==\s*([^\s,;]+)", word)
            if installed is not None:
                mismatch = bool(pinned) and pinned.group(1).strip("'\"") != installed
                if not (mismatch and strict):
                    out.dropped += 1
                    out.mismatched_pins += int(mismatch)
                    continue
        kept.append(word)
    if packages and not any(not w.startswith("-") for w in kept):
        return " true "
    return head + " " + " ".join(kept) + " "


def prune(dockerfile: str, manifest, strict: bool = False) -> Pruned:
    """``dockerfile`` with what ``manifest``'s image has removed from its apt/pip install lines."""
    from termigen_core.dockerfile import parse

    out = Pruned(dockerfile)
    lines = dockerfile.splitlines()
    for ins in reversed(parse(dockerfile)):
        if ins.keyword != "RUN" or ins.heredocs:
            continue
        pieces, rebuilt, last = [], [], 0
        for match in _SEGMENT_END.finditer(ins.args):
            pieces.append((ins.args[last : match.start()], match.group(0)))
            last = match.end()
        pieces.append((ins.args[last:], ""))
        for segment, joiner in pieces:
            rebuilt.append(_prune_segment(segment, manifest.has_apt, manifest.pip_version, strict, out) + joiner)
        args = re.sub(r"\s+", " ", "".join(rebuilt)).strip()
        if _APT_INSTALL.search(ins.args) and not _APT_INSTALL.search(args):  # nothing left to install: no update
            args = re.sub(r"\b(apt-get|apt)\s+(?:-\S+\s+)*update\b", "true", args)
        if args != re.sub(r"\s+", " ", ins.args).strip():
            lines[ins.line - 1 : (ins.end_line or ins.line)] = [f"RUN {args}"]
    out.dockerfile = "\n".join(lines) + "\n"
    return out


def base_manifest(client):
    """The base image's manifest, read like bootstrap reads a catalog image's."""
    from termigen_plugins.executors.catalog import MANIFEST_SCRIPT, Manifest

    output = client.containers.run(BASE, ["bash", "-c", MANIFEST_SCRIPT], remove=True).decode()
    return Manifest.from_output("base", "", output)


def catalog_manifests(client) -> dict[str, object]:
    from termigen_plugins.executors.catalog import BUILTIN_CATALOG, Manifest

    found = {}
    for image in BUILTIN_CATALOG.images.values():
        tag = image.tag("bookworm")
        try:
            manifest = Manifest.from_labels(client.images.get(tag).labels or {})
        except Exception:  # noqa: BLE001 - not built
            manifest = None
        if manifest is None:
            sys.exit(f"{tag} is missing (or has no manifest): run `termigen images bootstrap --catalog` first")
        found[tag] = manifest
    return found


def best_catalog(dockerfile: str, catalog: dict[str, object], base, strict: bool) -> tuple[str, object]:
    """The catalog image that lets the task drop the most requested packages beyond what the base
    already lets it drop (under the same pin policy), else the base."""
    from_base = prune(dockerfile, base, strict).dropped
    best, best_manifest, score = BASE, base, 0
    for tag, manifest in catalog.items():
        gain = prune(dockerfile, manifest, strict).dropped - from_base
        if gain > score:
            best, best_manifest, score = tag, manifest, gain
    return best, best_manifest


def with_from(dockerfile: str, image: str) -> str:
    from termigen_core.context import ImagePolicy

    return ImagePolicy(aliases={"*": image}).rewrite_dockerfile(dockerfile) if image != BASE else dockerfile


# --- the task sets ---------------------------------------------------------------------------


def quickstart_tasks() -> list[tuple[str, str, dict[str, str]]]:
    """(name, Dockerfile, files) of the quickstart's tasks: the last Dockerfile per task."""
    rules = yaml.safe_load((ROOT / "examples" / "quickstart.script.yaml").read_text())
    final: dict[str, str] = {}
    for rule in rules:
        if rule.get("role") != "env_agent":
            continue
        text = rule.get("response") or ((rule.get("json") or {}).get("files") or {}).get("Dockerfile") or ""
        body = re.sub(r"^```\w*\n|```\s*$", "", text.strip(), flags=re.MULTILINE)
        if body.strip().startswith("FROM"):
            final[rule.get("match", "?")] = body.strip() + "\n"  # a build-stage repair comes later: it wins
    return [(name, dockerfile, {}) for name, dockerfile in final.items()]


def authors_tasks(root: Path, sample: int, seed: int) -> list[tuple[str, str, Path]]:
    folders = sorted(p for p in root.iterdir() if (p / "environment" / "Dockerfile").is_file())
    chosen = random.Random(seed).sample(folders, min(sample, len(folders)))
    return [(p.name, (p / "environment" / "Dockerfile").read_text(errors="replace"), p / "environment") for p in chosen]


def find_authors_dir(given: str | None) -> Path | None:
    for candidate in ([Path(given)] if given else list(AUTHORS_DIRS)):
        if candidate.is_dir():
            return candidate
    return None


# --- building --------------------------------------------------------------------------------


def build_seconds(client, dockerfile: str, context: Path | dict[str, str], timeout_s: float) -> float | None:
    """Seconds of a ``--no-cache`` build of ``dockerfile`` in ``context`` (None if it failed); the image is removed."""
    import docker.errors

    from termigen_core.dockerfile import copy_sources, parse

    tag = f"termigen-bench/catalog-{uuid.uuid4().hex[:12]}:build"
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as tmp:
        work = Path(tmp) / "context"
        if isinstance(context, Path):
            shutil.copytree(context, work)
        else:
            work.mkdir()
            for ins in parse(dockerfile):  # placeholder files for COPY sources the script holds
                for source in copy_sources(ins):
                    target = work / source.lstrip("/")
                    if source.endswith("/"):
                        target.mkdir(parents=True, exist_ok=True)
                        (target / "placeholder.txt").write_text("x\n")
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text("x\n")
        (work / "Dockerfile").write_text(dockerfile)
        start = time.perf_counter()
        try:
            client.images.build(path=str(work), tag=tag, nocache=True, rm=True, forcerm=True, pull=False,
                                timeout=int(timeout_s))
            return time.perf_counter() - start
        except docker.errors.BuildError as exc:  # a failed build is data; its finished steps left images
            remove_untagged(client, [str(chunk.get("stream", "")) for chunk in exc.build_log])
            return None
        except docker.errors.APIError:
            return None
        finally:
            try:
                client.images.remove(tag, force=True)
            except docker.errors.APIError:  # never built
                pass


def remove_untagged(client, log_lines: list[str]) -> None:
    """Remove the step images a failed build left (``---> ID`` in its log), newest first; never a tagged one."""
    import docker.errors

    ids = [m.group(1) for line in log_lines for m in [re.match(r"\s*---> ([0-9a-f]{12})\s*$", line)] if m]
    for image_id in reversed(ids):
        try:
            if not client.images.get(image_id).tags:
                client.images.remove(image_id)
        except docker.errors.APIError:  # gone with a child already, or used by another image
            pass


def run_set(client, label: str, tasks, catalog, base, args) -> None:
    from termigen_core.context import ImagePolicy

    aliases = ImagePolicy(aliases=ALIASES)
    rows = []
    mismatched = 0
    print(f"\n== {label}: {len(tasks)} task(s)")
    print(f"{'task':<52} {'catalog image':<40} " + " ".join(f"{m:>8}" for m in MODES))
    for name, dockerfile, context in tasks:
        written = aliases.rewrite_dockerfile(dockerfile)
        tag, manifest = best_catalog(written, catalog, base, args.strict_pins)
        with_catalog = prune(with_from(written, tag), manifest, args.strict_pins)
        mismatched += with_catalog.mismatched_pins
        variants = {"written": written, "base": prune(written, base, args.strict_pins).dockerfile,
                    "catalog": with_catalog.dockerfile}
        seconds = {mode: build_seconds(client, variants[mode], context, args.timeout) for mode in MODES}
        rows.append(seconds)
        shown = " ".join(f"{s:8.1f}" if s is not None else "  failed" for s in seconds.values())
        same = " (the same Dockerfile in every mode)" if len(set(variants.values())) == 1 else ""
        print(f"{name[:52]:<52} {tag.removeprefix('termigen/'):<40} {shown}{same}", flush=True)
    complete = [r for r in rows if all(r[m] is not None for m in MODES)]
    built = {mode: sum(1 for r in rows if r[mode] is not None) for mode in MODES}
    print(f"-- {label}: built per mode: " + ", ".join(f"{m} {built[m]}/{len(rows)}" for m in MODES))
    if not complete:
        print(f"-- {label}: no task built in every mode")
        return
    medians = {mode: statistics.median(r[mode] for r in complete) for mode in MODES}
    print(f"-- {label}: median build seconds over the {len(complete)} task(s) built in every mode: "
          + ", ".join(f"{m} {medians[m]:.1f}" for m in MODES))
    print(f"-- {label}: ratio catalog/written {medians['catalog'] / medians['written']:.2f}, "
          f"catalog/base {medians['catalog'] / medians['base']:.2f}; "
          f"pinned pip requirements dropped although the installed version differs: {mismatched}"
          + (" (--strict-pins keeps them)" if not args.strict_pins else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=10, help="authors' tasks to build (seeded sample)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--authors-dir", default=None, help="folder of Harbor task folders (default: /tmp/tbenv/...)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per build")
    parser.add_argument("--strict-pins", action="store_true", help="keep pinned pip requirements the image has in another version")
    parser.add_argument("--skip-quickstart", action="store_true")
    args = parser.parse_args()

    import docker

    client = docker.from_env(timeout=int(args.timeout) + 60)
    catalog = catalog_manifests(client)
    base = base_manifest(client)
    if not args.skip_quickstart:
        run_set(client, "quickstart tasks", quickstart_tasks(), catalog, base, args)
    authors = find_authors_dir(args.authors_dir)
    if authors is None:
        print("\n(no authors' tasks found: pass --authors-dir; extract them from the terminal-bench-env repository)")
        return
    run_set(client, f"authors' tasks ({authors}, seed {args.seed})", authors_tasks(authors, args.sample, args.seed),
            catalog, base, args)


if __name__ == "__main__":
    main()
