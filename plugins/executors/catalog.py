"""The image catalog: a few prebuilt domain base images, built once, reused by many tasks.

Each task's own build used to install its whole stack (the TermiGen authors' tasks take
2-77 s each, mostly apt and pip). The catalog images (``catalog.yaml``, one place) carry the
stacks tasks keep asking for, built FROM ``termigen/python:SUITE`` by ``termigen images
bootstrap --catalog``; a run that opts in (``images.catalog``) tells the environment agent
what each has, so a task's Dockerfile only adds its files and a few packages.

Three consumers, one definition:

* bootstrap builds :meth:`CatalogImage.dockerfile` and stamps the image with a
  :class:`Manifest` read from the built image;
* a run describes the configured images to the environment agent from the *definition*
  (:meth:`CatalogImage.description`), not from the manifest: a prompt must be the same
  bytes on every machine and after a rebuild, or stored model answers would stop replaying;
* an export replaces ``FROM termigen/catalog-NAME:SUITE`` by the base image plus the
  catalog image's recipe (:func:`inline_catalog`), so an exported task builds where the
  catalog was never bootstrapped.

The manifest lives in an image label (:data:`MANIFEST_LABEL`), not a file in the user cache:
a label belongs to exactly the image it describes (a rebuilt image cannot be paired with an
old manifest), travels with ``docker save | podman load``, and costs one inspect to read.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from termigen_core.errors import TermigenError

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
TAG_PREFIX = "termigen/catalog-"
#: Set on every catalog image: its catalog name.
CATALOG_LABEL = "io.termigen.catalog"
#: The hash of the recipe an image was built from: a changed ``catalog.yaml`` rebuilds it.
RECIPE_LABEL = "io.termigen.catalog.recipe"
#: What the built image has installed (JSON of :class:`Manifest`).
MANIFEST_LABEL = "io.termigen.catalog.manifest"
DEFAULT_SUITE = "bookworm"
#: Prints the image's Debian packages, a marker line, then ``pip list`` as JSON.
MANIFEST_SCRIPT = (
    "dpkg-query -W -f='${Package}\\t${Version}\\n'; echo '--pip--'; "
    "python3 -m pip list --format=json --disable-pip-version-check 2>/dev/null || echo '[]'"
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_PIP_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")


class CatalogImage(BaseModel):
    """One catalog entry of ``catalog.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    summary: str = Field(min_length=3, max_length=200)
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()  # pinned ``name==version`` only: a catalog image must be reproducible

    def tag(self, suite: str = DEFAULT_SUITE) -> str:
        return f"{TAG_PREFIX}{self.name}:{suite}"

    def recipe(self) -> list[str]:
        """The image's own instructions (after ``FROM``): what an export inlines."""
        lines = []
        if self.apt:
            packages = " \\\n        ".join(" ".join(self.apt[i : i + 6]) for i in range(0, len(self.apt), 6))
            lines.append(
                "RUN apt-get update && apt-get install -y --no-install-recommends \\\n"
                f"        {packages} \\\n    && rm -rf /var/lib/apt/lists/*"
            )
        if self.pip:
            lines.append("RUN pip install --no-cache-dir --break-system-packages " + " ".join(map(shlex.quote, self.pip)))
        return lines

    def recipe_hash(self) -> str:
        return hashlib.sha256("\n".join(self.recipe()).encode()).hexdigest()[:16]

    def dockerfile(self, base: str) -> str:
        """The Dockerfile bootstrap builds (``base`` is ``termigen/python:SUITE``)."""
        labels = f'LABEL io.termigen.bootstrap="1" {CATALOG_LABEL}="{self.name}" {RECIPE_LABEL}="{self.recipe_hash()}"'
        return "\n".join([f"FROM {base}", *self.recipe(), labels]) + "\n"

    def description(self) -> str:
        """What the environment agent reads about this image (from the definition: stable bytes)."""
        packages = ", ".join([*self.apt, *self.pip])
        return f"{self.summary}; installed: {packages}"


class Catalog:
    """The catalog of a ``catalog.yaml``, as an executor offers it (its ``image_catalog``).

    The core sees only a small protocol: :meth:`names`, :meth:`describe` (chosen images by
    tag), :meth:`missing` and :meth:`missing_hint`. The file is read on first use, so an
    executor class can hold a catalog without every ``termigen`` invocation reading it.
    """

    def __init__(self, path: Path = CATALOG_FILE) -> None:
        self.path = path

    @cached_property
    def images(self) -> dict[str, CatalogImage]:
        return _read_catalog(self.path)

    def names(self) -> list[str]:
        return list(self.images)

    def select(self, wanted: Literal["all"] | Sequence[str]) -> list[CatalogImage]:
        """The images ``wanted`` names (``all``: every one), in catalog order; unknown names raise."""
        if wanted == "all":
            return list(self.images.values())
        unknown = [name for name in wanted if name not in self.images]
        if unknown:
            raise TermigenError(
                f"unknown catalog image(s) {', '.join(map(repr, unknown))}: the catalog has {', '.join(self.images)}"
            )
        return [self.images[name] for name in self.images if name in set(wanted)]

    def describe(self, wanted: Literal["all"] | Sequence[str], base: str) -> dict[str, str]:
        """``{tag: description}`` of the chosen images, for the suite of ``base``."""
        suite = suite_of(base)
        return {image.tag(suite): image.description() for image in self.select(wanted)}

    def by_tag(self, tag: str) -> CatalogImage | None:
        """The catalog image ``tag`` names (any suite), or ``None``."""
        if not tag.startswith(TAG_PREFIX):
            return None
        name = tag[len(TAG_PREFIX) :].split(":", 1)[0]
        return self.images.get(name)

    def missing(self, executor: Any, tags: Sequence[str]) -> list[str]:
        """The ``tags`` the executor's engine does not hold (none if the engine cannot be asked)."""
        client = getattr(executor, "client", None)
        if client is None:
            return []
        from .build import lookup_image_id

        return [tag for tag in tags if lookup_image_id(client, tag) is None]

    def missing_hint(self, missing: Sequence[str]) -> str:
        names = " ".join(f"--only {tag[len(TAG_PREFIX):].split(':', 1)[0]}" for tag in missing)
        return (f"the catalog image(s) {', '.join(missing)} named by images.catalog are not on the container "
                f"engine: build them once with `termigen images bootstrap --catalog {names}` "
                "(or remove images.catalog)")


def suite_of(base: str) -> str:
    """The Debian suite of a ``termigen/python:SUITE``-style base (else the default suite)."""
    repo, _, version = base.rpartition(":")
    return version if repo.startswith("termigen/") and version and "/" not in version else DEFAULT_SUITE


#: The built-in catalog (``catalog.yaml``), offered by the docker and podman executors.
BUILTIN_CATALOG = Catalog(CATALOG_FILE)


def _read_catalog(path: Path) -> dict[str, CatalogImage]:
    """Read and check a catalog file (a broken built-in one is this package's bug: the message says where)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TermigenError(f"cannot read the image catalog {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TermigenError(f"{path}: the image catalog must be a mapping of name to image")
    images: dict[str, CatalogImage] = {}
    for name, entry in data.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise TermigenError(f"{path}: catalog image name {name!r} must be lowercase letters, digits and '-'")
        try:
            image = CatalogImage.model_validate({**(entry or {}), "name": name})
        except ValidationError as exc:
            raise TermigenError(f"{path}: catalog image {name!r}: {exc}") from None
        bad = [spec for spec in image.pip if not _PIP_PIN.match(spec)]
        if bad:
            raise TermigenError(f"{path}: catalog image {name!r}: pin every pip package (name==version): {bad}")
        images[name] = image
    return images


# --- manifests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """What a built catalog image has installed, read from the image itself."""

    name: str
    recipe: str
    apt: dict[str, str] = field(default_factory=dict)
    pip: dict[str, str] = field(default_factory=dict)

    def to_label(self) -> str:
        return json.dumps({"name": self.name, "recipe": self.recipe, "apt": self.apt, "pip": self.pip},
                          sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Manifest | None:
        raw = labels.get(MANIFEST_LABEL)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["name"]), str(data["recipe"]), dict(data["apt"]), dict(data["pip"]))
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def from_output(cls, name: str, recipe: str, output: str) -> Manifest:
        """Parse :data:`MANIFEST_SCRIPT`'s output."""
        apt_part, _, pip_part = output.partition("--pip--")
        apt = dict(line.split("\t", 1) for line in apt_part.splitlines() if "\t" in line)
        try:
            rows = json.loads(pip_part.strip() or "[]")
        except ValueError:
            rows = []
        pip = {str(row["name"]).lower(): str(row["version"]) for row in rows if isinstance(row, dict) and "name" in row}
        return cls(name, recipe, dict(sorted(apt.items())), dict(sorted(pip.items())))

    def has_apt(self, package: str) -> bool:
        return package.split(":", 1)[0] in self.apt

    def pip_version(self, package: str) -> str | None:
        """The installed version of a pip distribution (names compared PEP 503-normalised)."""
        wanted = re.sub(r"[-_.]+", "-", package).lower()
        for name, version in self.pip.items():
            if re.sub(r"[-_.]+", "-", name).lower() == wanted:
                return version
        return None


# --- exports ------------------------------------------------------------------------------


def inline_catalog(dockerfile: str, catalog: Catalog | None = None,
                   base_for: Callable[[str], str] | None = None) -> str:
    """``dockerfile`` with every ``FROM`` a catalog image replaced by its base plus its recipe.

    An exported task must build wherever its harness runs, where the catalog images were
    never bootstrapped; the base image (``termigen/python:SUITE``) is what every export
    already names. The recipe goes right after the ``FROM`` line (so a multi-stage build
    keeps its stages); a Dockerfile naming no catalog image is returned unchanged.
    """
    from termigen_core.dockerfile import from_images, rewrite_from

    catalog = catalog or BUILTIN_CATALOG
    base_for = base_for or (lambda tag: f"termigen/python:{tag.rpartition(':')[2] or DEFAULT_SUITE}")
    inserts: list[tuple[int, str]] = []
    for found in from_images(dockerfile):
        image = catalog.by_tag(found.image) if not found.stage_ref else None
        if image is None:
            continue
        note = f"# inlined from {found.image} (`termigen images bootstrap --catalog` builds it locally)"
        inserts.append((found.instruction.end_line or found.instruction.line, "\n".join([note, *image.recipe()]) + "\n"))
    if not inserts:
        return dockerfile
    lines = dockerfile.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for after_line, text in sorted(inserts, reverse=True):
        lines[after_line:after_line] = [text]
    return rewrite_from("".join(lines), lambda image: base_for(image) if catalog.by_tag(image) else image)
