"""``termigen images``: build the base images locally, for engines that cannot pull.

Air-gapped machines and networks that intercept TLS cannot pull
``debian:bookworm-slim`` nor reach PyPI over HTTPS from a container. So the
base image is made here from ``debootstrap`` (plain-HTTP Debian mirror) and
carries the host's CA bundle at :data:`CA_PATH`, with every common
"which CA file" variable pointing at it. The bundle is a separate file because
installing Debian's ``ca-certificates`` regenerates the default one.

Import goes through the docker SDK (``images.import_image``) rather than the
``docker`` CLI: it honours ``DOCKER_HOST``/``base_url`` exactly like the
executor, needs no CLI client on the machine, and reports errors as
exceptions. Podman is driven through its CLI, which needs no API service;
when the Docker engine already holds the bootstrapped images, ``--engine
podman`` copies them over (``docker save | podman load``, ~2 s) instead of
building them again (~1 min), which also gives both engines identical images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from termigen_core import hookimpl
from termigen_core.errors import ExecutorUnavailable, TermigenError

from .build import lookup_image_id, short_id, split_tag, tag_image
from .catalog import BUILTIN_CATALOG, CATALOG_LABEL, MANIFEST_LABEL, MANIFEST_SCRIPT, RECIPE_LABEL, CatalogImage, Manifest

DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
#: Where the host's CA bundle lives inside the images.
CA_PATH = "/etc/ssl/host-ca-bundle.crt"
CA_VARIABLES = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
#: Label on images made here, so a ``debian:*-slim`` tag is only moved if we made it.
BOOTSTRAP_LABEL = "io.termigen.bootstrap"
#: Bumped when the rootfs recipe changes, so stale cached tarballs are not reused.
ROOTFS_FORMAT = 2
#: What debootstrap leaves that an image does not need (~80 MB): downloaded
#: .debs and package lists (every Dockerfile runs ``apt-get update`` anyway).
ROOTFS_PRUNE = ("var/cache/apt/archives", "var/cache/apt/*.bin", "var/lib/apt/lists")
#: Imported images get no PATH otherwise, and ``ENV PATH=/x:$PATH`` would then drop the system dirs.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_PACKAGES = "python3 python3-pip python3-pytest python3-venv ca-certificates"


def base_tag(suite: str = DEFAULT_SUITE) -> str:
    return f"termigen/base:{suite}"


def python_tag(suite: str = DEFAULT_SUITE) -> str:
    return f"termigen/python:{suite}"


@dataclass(frozen=True)
class ImageAction:
    """What bootstrap did for one image."""

    tag: str
    action: str  # built | imported | tagged | copied | skipped
    seconds: float
    detail: str = ""


# --- engines ---------------------------------------------------------------------------


class _DockerEngine:
    def __init__(self, base_url: str | None) -> None:
        from .docker_executor import DockerExecutor

        self.executor = DockerExecutor(DockerExecutor.Config(base_url=base_url))
        self.executor.check()
        self.client = self.executor.client

    def labels(self, tag: str) -> dict[str, str] | None:
        """The image's labels, or ``None`` if it does not exist."""
        import docker.errors

        try:
            return dict(self.client.images.get(tag).labels or {})
        except docker.errors.ImageNotFound:
            return None

    def image_id(self, tag: str) -> str | None:
        return lookup_image_id(self.client, tag)

    def remove(self, image_id: str) -> None:
        """Best effort: an image still tagged or used by a container stays."""
        try:
            self.client.images.remove(image_id)
        except Exception:  # noqa: BLE001
            pass

    def import_tar(self, tarball: Path, tag: str, changes: list[str]) -> None:
        repo, version = split_tag(tag)
        result = self.client.api.import_image(src=str(tarball), repository=repo, tag=version, changes=changes)
        if "error" in str(result).lower() and self.labels(tag) is None:
            raise TermigenError(f"importing {tarball} as {tag} failed: {result}")

    def tag(self, source: str, target: str) -> None:
        tag_image(self.client, source, target)

    def build(self, context: Path, tag: str) -> str:
        result = self.executor.build(str(context), tag, timeout_s=1800)
        if not result.ok:
            raise TermigenError(f"building {tag} failed:\n{result.error}")
        return "cached build" if result.cached else ""

    def run_script(self, tag: str, script: str) -> str:
        """``bash -c script`` in a throw-away container of ``tag``; its standard output."""
        import docker.errors

        try:
            out = self.client.containers.run(tag, ["bash", "-c", script], remove=True, stdout=True, stderr=False)
        except docker.errors.ContainerError as exc:
            raise TermigenError(f"reading {tag}'s packages failed: {exc}") from None
        return out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)

    def relabel(self, tag: str, labels: dict[str, str]) -> None:
        """Give ``tag`` extra labels (a one-line build FROM it: labels go through the API, unquoted)."""
        with tempfile.TemporaryDirectory(prefix="termigen-label-") as tmp:
            Path(tmp, "Dockerfile").write_text(f"FROM {self.image_id(tag)}\n")
            self.client.images.build(path=tmp, tag=tag, labels=labels, rm=True, forcerm=True)

    def listing(self) -> list[dict[str, Any]]:
        rows = []
        for image in self.client.images.list():
            for tag in image.tags:
                if not _listed(tag, image.labels or {}):
                    continue
                rows.append({"tag": tag, "id": short_id(image.id), "labels": dict(image.labels or {}),
                             "size_mb": image.attrs.get("Size", 0) / 1e6, "created": image.attrs.get("Created", "")})
        return rows


class _PodmanEngine:
    def __init__(self) -> None:
        if not shutil.which("podman"):
            raise ExecutorUnavailable(
                "podman is not installed: `apt-get install -y podman catatonit` or `scripts/setup-engine.sh --podman`"
            )

    @staticmethod
    def _podman(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)

    def labels(self, tag: str) -> dict[str, str] | None:
        proc = self._podman("image", "inspect", tag, timeout=60)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout or "[]")
        return dict((data[0].get("Labels") or {}) if data else {})

    def image_id(self, tag: str) -> str | None:
        proc = self._podman("image", "inspect", "--format", "{{.Id}}", tag, timeout=60)
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def remove(self, image_id: str) -> None:
        self._podman("rmi", image_id, timeout=120)

    def import_tar(self, tarball: Path, tag: str, changes: list[str]) -> None:
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        proc = self._podman(*args, str(tarball), tag)
        if proc.returncode != 0:
            raise TermigenError(f"podman import of {tag} failed: {proc.stderr.strip()[-2000:]}")

    def tag(self, source: str, target: str) -> None:
        proc = self._podman("tag", source, target, timeout=60)
        if proc.returncode != 0:
            raise TermigenError(f"podman tag {source} {target} failed: {proc.stderr.strip()}")

    def build(self, context: Path, tag: str) -> str:
        proc = self._podman("build", "-t", tag, str(context))
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
            raise TermigenError(f"building {tag} with podman failed:\n{tail}")
        return ""

    def run_script(self, tag: str, script: str) -> str:
        proc = self._podman("run", "--rm", tag, "bash", "-c", script, timeout=300)
        if proc.returncode != 0:
            raise TermigenError(f"reading {tag}'s packages with podman failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def relabel(self, tag: str, labels: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory(prefix="termigen-label-") as tmp:
            Path(tmp, "Dockerfile").write_text(f"FROM {self.image_id(tag)}\n")
            args = ["build"]
            for key, value in labels.items():
                args += ["--label", f"{key}={value}"]
            proc = self._podman(*args, "-t", tag, tmp)
            if proc.returncode != 0:
                raise TermigenError(f"labelling {tag} with podman failed: {proc.stderr.strip()[-2000:]}")

    def copy_from_docker(self, tags: list[str], base_url: str | None) -> list[str]:
        """Load the termigen-made images among ``tags`` that Podman lacks from the Docker engine.

        Returns the tags copied; nothing (not an error) when Docker is not
        running or does not have them: the caller then builds them itself.
        """
        missing = [tag for tag in tags if self.labels(tag) is None]
        if not missing:
            return []
        try:
            docker_engine = _DockerEngine(base_url)
        except TermigenError:
            return []
        copied = []
        for tag in missing:
            labels = docker_engine.labels(tag)
            if not labels or not labels.get(BOOTSTRAP_LABEL):
                continue
            with tempfile.TemporaryFile() as err:  # a file, not a pipe: podman's progress never blocks it
                proc = subprocess.Popen(["podman", "load"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
                assert proc.stdin is not None
                try:
                    for chunk in docker_engine.client.images.get(tag).save(named=tag):
                        proc.stdin.write(chunk)
                except BrokenPipeError:
                    pass
                finally:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                proc.wait(timeout=1800)
                if proc.returncode != 0:
                    err.seek(0)
                    said = err.read().decode(errors="replace")[-2000:]
                    raise TermigenError(f"copying {tag} from Docker to Podman failed: {said}")
            copied.append(tag)
        return copied

    def listing(self) -> list[dict[str, Any]]:
        proc = self._podman("images", "--format", "json", timeout=60)
        if proc.returncode != 0:
            raise TermigenError(f"podman images failed: {proc.stderr.strip()}")
        rows = []
        seen: set[str] = set()
        for image in json.loads(proc.stdout or "[]"):
            labels = image.get("Labels") or {}
            for name in image.get("Names") or []:
                short = name.removeprefix("localhost/")
                if _listed(short, labels) and short not in seen:  # one entry per tag, each naming all tags
                    seen.add(short)
                    rows.append({"tag": short, "id": short_id(str(image.get("Id", ""))), "labels": dict(labels),
                                 "size_mb": image.get("Size", 0) / 1e6, "created": image.get("CreatedAt", "")})
        return rows


def _listed(tag: str, labels: dict[str, str]) -> bool:
    """termigen's images: its own repositories, and the ``debian:*-slim`` alias if bootstrap made it.

    (The label alone is not enough: every image built FROM the base inherits it.)
    """
    return tag.startswith("termigen/") or (tag.startswith("debian:") and bool(labels.get(BOOTSTRAP_LABEL)))


def _engine(engine: str, base_url: str | None) -> _DockerEngine | _PodmanEngine:
    if engine == "docker":
        return _DockerEngine(base_url)
    if engine == "podman":
        return _PodmanEngine()
    raise TermigenError(f"unknown engine {engine!r}: use docker or podman")


# --- rootfs ------------------------------------------------------------------------------


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """Serialise bootstraps on this machine (parallel test sessions all call it)."""
    path = Path(tempfile.gettempdir()) / f"termigen-{name}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _debootstrap_binary() -> str:
    found = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise TermigenError(
            "debootstrap is not installed, and it is needed to build the base image: "
            "`sudo apt-get install -y debootstrap` (or run `scripts/setup-engine.sh`)"
        )
    if os.geteuid() != 0:
        raise TermigenError(
            "debootstrap needs root to build the base image's root filesystem: "
            "run `sudo termigen images bootstrap` once (later runs reuse the cached rootfs)"
        )
    return found


def rootfs_tarball(suite: str, mirror: str, echo: Callable[[str], None]) -> tuple[Path, bool]:
    """The cached minbase rootfs tarball for (suite, mirror), made with debootstrap if missing.

    Returns the path and whether it came from the cache. The tarball holds no
    CA bundle, so one cache serves any bundle.
    """
    from termigen_core.userdirs import user_dirs

    cache = user_dirs().rootfs_cache
    cache.mkdir(parents=True, exist_ok=True)
    mirror_id = hashlib.sha256(mirror.encode()).hexdigest()[:10]
    tarball = cache / f"{suite}-minbase-{mirror_id}-v{ROOTFS_FORMAT}.tar"
    if tarball.is_file():
        return tarball, True
    binary = _debootstrap_binary()
    echo(f"debootstrap --variant=minbase {suite} (mirror {mirror}) ...")
    with tempfile.TemporaryDirectory(dir=cache, prefix="debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(
            [binary, "--variant=minbase", suite, str(rootfs), mirror],
            capture_output=True, text=True, timeout=1800,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise TermigenError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        _prune_rootfs(rootfs)
        partial = Path(tmp) / "rootfs.tar"
        proc = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise TermigenError(f"packing the rootfs failed: {proc.stderr.strip()}")
        os.replace(partial, tarball)
    return tarball, False


def _prune_rootfs(rootfs: Path) -> None:
    """Delete the files of :data:`ROOTFS_PRUNE` (keeping the directories apt expects)."""
    for pattern in ROOTFS_PRUNE:
        for path in rootfs.glob(pattern):
            if path.is_dir():
                for child in path.iterdir():
                    if child.is_file() or child.is_symlink():
                        child.unlink()
            elif path.is_file():
                path.unlink()


def _with_bundle(tarball: Path, ca_bundle: Path | None, workdir: Path) -> Path:
    """A copy of ``tarball`` with the CA bundle appended at :data:`CA_PATH` (or the tarball itself)."""
    if ca_bundle is None:
        return tarball
    copy = workdir / "rootfs+ca.tar"
    shutil.copyfile(tarball, copy)
    with tarfile.open(copy, "a") as tar:
        info = tar.gettarinfo(str(ca_bundle), arcname="." + CA_PATH)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o644
        with ca_bundle.open("rb") as fh:
            tar.addfile(info, fh)
    return copy


def _base_changes(ca_bundle: Path | None) -> list[str]:
    changes = [f"LABEL {BOOTSTRAP_LABEL}=1", f"ENV PATH={DEFAULT_PATH}", "ENV DEBIAN_FRONTEND=noninteractive"]
    if ca_bundle is not None:
        changes += [f"ENV {name}={CA_PATH}" for name in CA_VARIABLES]
    changes.append('CMD ["bash"]')
    return changes


# --- bootstrap -----------------------------------------------------------------------------


def bootstrap_images(
    *,
    ca_bundle: str | Path | None = DEFAULT_CA_BUNDLE,
    mirror: str = DEFAULT_MIRROR,
    suite: str = DEFAULT_SUITE,
    engine: str = "docker",
    force: bool = False,
    base_url: str | None = None,
    echo: Callable[[str], None] = lambda message: None,
    catalog: Literal["all"] | Sequence[str] | None = None,
) -> list[ImageAction]:
    """Make ``termigen/base:SUITE`` (+ ``debian:SUITE-slim``) and ``termigen/python:SUITE`` exist,
    and the catalog images ``catalog`` names (``all``; ``None``: none).

    Images already present are skipped unless ``force``; a no-op call costs
    one engine round trip per image. ``ca_bundle=None`` (or a missing default
    bundle) builds images without an extra CA. A catalog image is also rebuilt when
    ``termigen/python`` was, or when its recipe in ``catalog.yaml`` changed.
    """
    chosen = BUILTIN_CATALOG.select(catalog) if catalog is not None else []  # unknown names fail before any work
    bundle = Path(ca_bundle) if ca_bundle else None
    if bundle is not None and not bundle.is_file():
        if str(ca_bundle) != DEFAULT_CA_BUNDLE:
            raise TermigenError(f"--ca-bundle {bundle}: no such file")
        bundle = None
    backend = _engine(engine, base_url)
    actions: list[ImageAction] = []
    base, python, alias = base_tag(suite), python_tag(suite), f"debian:{suite}-slim"
    with _machine_lock(f"bootstrap-{engine}"):
        copied: set[str] = set()
        start = time.monotonic()
        if isinstance(backend, _PodmanEngine) and not force:
            copied = set(backend.copy_from_docker([base, python, *(image.tag(suite) for image in chosen)], base_url))
        copy_seconds = time.monotonic() - start

        def kept(tag: str, seconds: float) -> ImageAction:
            if tag in copied:
                return ImageAction(tag, "copied", copy_seconds, "from the Docker engine")
            return ImageAction(tag, "skipped", seconds, "exists")

        previous = [backend.image_id(python), backend.image_id(base)]  # dependants first
        base_made = False
        start = time.monotonic()
        if force or backend.labels(base) is None:
            tarball, from_cache = rootfs_tarball(suite, mirror, echo)
            with tempfile.TemporaryDirectory(prefix="termigen-import-") as tmp:
                backend.import_tar(_with_bundle(tarball, bundle, Path(tmp)), base, _base_changes(bundle))
            base_made = True
            detail = ("from the cached rootfs" if from_cache else "debootstrapped") + (
                f", CA bundle {bundle}" if bundle else ", no extra CA bundle")
            actions.append(ImageAction(base, "imported", time.monotonic() - start, detail))
        else:
            actions.append(kept(base, time.monotonic() - start))

        start = time.monotonic()
        alias_labels = backend.labels(alias)
        if alias_labels is None or (base_made and alias_labels.get(BOOTSTRAP_LABEL)):
            backend.tag(base, alias)
            actions.append(ImageAction(alias, "tagged", time.monotonic() - start, f"= {base}"))
        else:
            why = "exists" if alias_labels.get(BOOTSTRAP_LABEL) else "exists and was not made by termigen"
            actions.append(ImageAction(alias, "skipped", 0.0, why))

        start = time.monotonic()
        python_made = force or base_made or backend.labels(python) is None
        if python_made:
            with tempfile.TemporaryDirectory(prefix="termigen-python-") as tmp:
                Path(tmp, "Dockerfile").write_text(
                    f"FROM {base}\n"
                    f"RUN apt-get update && apt-get install -y --no-install-recommends {PYTHON_PACKAGES} \\\n"
                    "    && rm -rf /var/lib/apt/lists/*\n"
                    f"LABEL {BOOTSTRAP_LABEL}=1\n"
                )
                note = backend.build(Path(tmp), python)
            actions.append(ImageAction(python, "built", time.monotonic() - start, note))
        else:
            actions.append(kept(python, time.monotonic() - start))
        current = {backend.image_id(python), backend.image_id(base)}
        for image in chosen:
            tag = image.tag(suite)
            if tag in copied:
                actions.append(kept(tag, 0.0))
            else:
                actions.append(_catalog_image(backend, image, python, tag, rebuild=python_made, echo=echo))
        for old in previous:  # images replaced by --force would otherwise linger untagged
            if old and old not in current:
                backend.remove(old)
    for action in actions:
        detail = f" ({action.detail})" if action.detail else ""
        echo(f"{action.tag}: {action.action} in {action.seconds:.1f}s{detail}")
    return actions


def _catalog_image(backend: _DockerEngine | _PodmanEngine, image: CatalogImage, python: str, tag: str, *,
                   rebuild: bool, echo: Callable[[str], None]) -> ImageAction:
    """Build one catalog image FROM ``python`` unless it exists with its current recipe and a manifest.

    The manifest is read from the built image (``dpkg-query``, ``pip list``) and stored as a label.
    """
    start = time.monotonic()
    labels = backend.labels(tag)
    current = labels is not None and labels.get(RECIPE_LABEL) == image.recipe_hash() and Manifest.from_labels(labels)
    if current and not rebuild:
        return ImageAction(tag, "skipped", time.monotonic() - start, "exists")
    old = backend.image_id(tag)
    echo(f"{tag}: building ({len(image.apt)} Debian, {len(image.pip)} pip packages) ...")
    with tempfile.TemporaryDirectory(prefix="termigen-catalog-") as tmp:
        Path(tmp, "Dockerfile").write_text(image.dockerfile(python))
        note = backend.build(Path(tmp), tag)
    manifest = Manifest.from_output(image.name, image.recipe_hash(), backend.run_script(tag, MANIFEST_SCRIPT))
    backend.relabel(tag, {MANIFEST_LABEL: manifest.to_label()})
    if old and old != backend.image_id(tag):
        backend.remove(old)  # the image this one replaces (best effort)
    detail = f"manifest: {len(manifest.apt)} Debian and {len(manifest.pip)} pip packages" + (f"; {note}" if note else "")
    return ImageAction(tag, "built", time.monotonic() - start, detail)


# --- CLI ---------------------------------------------------------------------------------------


@hookimpl
def register_commands(cli: click.Group) -> None:
    @click.group("images")
    def images_group() -> None:
        """Base images for generated environments (built locally, no registry needed)."""

    @images_group.command("bootstrap")
    @click.option("--ca-bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help=f"CA bundle copied into the images (default: {DEFAULT_CA_BUNDLE} if it exists).")
    @click.option("--mirror", default=DEFAULT_MIRROR, show_default=True, help="Debian mirror for debootstrap.")
    @click.option("--suite", default=DEFAULT_SUITE, show_default=True, help="Debian suite.")
    @click.option("--engine", type=click.Choice(["docker", "podman"]), default="docker", show_default=True)
    @click.option("--force", is_flag=True, help="Rebuild images that already exist.")
    @click.option("--catalog", "with_catalog", is_flag=True,
                  help="Also build the catalog images (termigen/catalog-NAME:SUITE; see `termigen images list`).")
    @click.option("--only", "only", multiple=True, metavar="NAME",
                  help="Build only this catalog image (repeatable; implies --catalog).")
    def bootstrap_cmd(ca_bundle: Path | None, mirror: str, suite: str, engine: str, force: bool,
                      with_catalog: bool, only: tuple[str, ...]) -> None:
        """Build termigen/base and termigen/python from debootstrap (skips existing images).

        With --catalog, also the catalog images (domain base images a run opts into with
        images.catalog). With --engine podman, images the Docker engine already has are copied from it.
        """
        known = BUILTIN_CATALOG.names()
        unknown = [name for name in only if name not in known]
        if unknown:
            raise click.UsageError(f"--only {unknown[0]}: no such catalog image; the catalog has {', '.join(known)}")
        catalog: Literal["all"] | list[str] | None = list(only) if only else ("all" if with_catalog else None)
        start = time.monotonic()
        bootstrap_images(ca_bundle=ca_bundle or DEFAULT_CA_BUNDLE, mirror=mirror, suite=suite, engine=engine,
                         force=force, echo=click.echo, catalog=catalog)
        click.echo(f"done in {time.monotonic() - start:.1f}s")

    @images_group.command("list")
    @click.option("--engine", type=click.Choice(["docker", "podman"]), default="docker", show_default=True)
    def list_cmd(engine: str) -> None:
        """Show termigen's images on the engine, and which catalog images are built."""
        rows = _engine(engine, None).listing()
        if not rows:
            click.echo("no termigen images; run `termigen images bootstrap`")
        else:
            width = max(len(row["tag"]) for row in rows)
            for row in sorted(rows, key=lambda r: r["tag"]):
                click.echo(f"{row['tag']:<{width}}  {row['id']:<12}  {row['size_mb']:8.1f} MB  {row['created']}")
        built = {row["labels"].get(CATALOG_LABEL): row for row in rows if row["labels"].get(CATALOG_LABEL)}
        click.echo("\ncatalog (images.catalog; `termigen images bootstrap --catalog` builds them):")
        for name, image in BUILTIN_CATALOG.images.items():
            row = built.get(name)
            manifest = Manifest.from_labels(row["labels"]) if row else None
            state = (f"built, {len(manifest.apt)} Debian / {len(manifest.pip)} pip packages"
                     if manifest else "built, no manifest" if row else "not built")
            click.echo(f"  {name:<16} {state:<40} {image.summary}")

    @images_group.command("prune")
    @click.option("--run", "run", metavar="RUN_DIR_OR_ID", required=True,
                  help="The run whose task images go: its run directory, or its run id.")
    @click.option("--executor", "executor_name", default=None,
                  help="Executor whose engine holds the images (default: the user config's, else the default executor).")
    @click.pass_context
    def prune_cmd(ctx: click.Context, run: str, executor_name: str | None) -> None:
        """Remove a finished run's task images (termigen-task/*), saying what went and the space freed.

        An image another run still holds, or a container still uses, stays. A run that is
        still going on (its run directory's lock is held) is refused: its images are in use.
        """
        from .docker_executor import _executor_from_cli
        from .lifecycle import human_bytes, prune_run_images

        run_dir, run_id, recorded = _resolve_run(run)
        executor = _executor_from_cli(ctx, executor_name)
        if not hasattr(executor, "remove_image"):
            raise click.UsageError(f"executor {executor.name!r} keeps no images; name one with --executor")
        executor.check()
        report = prune_run_images(executor.client, run_id, recorded)  # type: ignore[attr-defined]
        for outcome in report.removed:
            what = "image deleted" if outcome.deleted else "untagged; another name keeps the image"
            click.echo(f"removed {outcome.tag} ({what})")
        for outcome in report.kept:
            click.echo(f"kept {outcome.tag}: {outcome.kept}")
        deleted = sum(1 for r in report.removed if r.deleted)
        where = f" ({run_dir})" if run_dir else ""
        click.echo(f"run {run_id}{where}: removed {len(report.removed)} task image(s), {deleted} deleted from the "
                   f"engine, {human_bytes(report.freed_bytes)} freed; {len(report.kept)} kept")

    cli.add_command(images_group)


def _resolve_run(run: str) -> tuple[Path | None, str, set[str]]:
    """``(run directory or None, run id, task tags its store records)`` of ``--run``.

    Refuses a run whose lock is held (it is still going on). A run id is looked up in the
    build index, where every run that removes images records its directory.
    """
    from termigen_core.runlock import is_locked
    from termigen_core.store import RunStore
    from termigen_core.userdirs import user_dirs

    from .build import BuildIndex
    from .lifecycle import recorded_task_tags

    path = Path(run).expanduser()
    if path.is_dir():
        if not (path / "run.db").is_file():
            raise click.UsageError(f"--run {run}: not a run directory (it has no run.db)")
        run_dir: Path | None = path.resolve()
        store = RunStore(path)
        try:
            run_id = store.get_meta("run_id")
        finally:
            store.close()
        if not run_id:
            raise click.UsageError(f"--run {run}: its run.db names no run (a run that never started)")
    elif "/" in run or path.exists():
        raise click.UsageError(f"--run {run}: no such run directory")
    else:
        run_id = run
        run_dir = BuildIndex(user_dirs().build_index).run_dir_of(run_id)
    recorded: set[str] = set()
    if run_dir is not None and (run_dir / "run.db").is_file():
        if is_locked(run_dir):
            raise TermigenError(f"run {run_id} is still going on in {run_dir} (its lock is held): its task images "
                                "are in use. Prune them once it has ended (or stop it first).")
        store = RunStore(run_dir)
        try:
            recorded = recorded_task_tags(store)
        finally:
            store.close()
    return run_dir, run_id, recorded
