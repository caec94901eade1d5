"""The image catalog: prebuilt domain base images (``termigen images bootstrap --catalog``),
``images.catalog`` in a pipeline, what the environment agent is told, and exports that build
without the catalog. Real Docker; the one catalog image built here (``security``, the smallest)
is kept like the base images (bootstrap serialises builds with a machine lock)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from string import Template
from typing import Any

import pytest

from helpers import read_jsonl, run_cli, write_yaml
from termigen_core.context import ImagePolicy
from termigen_core.errors import ParseError

BASE = "termigen/python:bookworm"
SMALLEST = "security"
CATALOG_TAG = f"termigen/catalog-{SMALLEST}:bookworm"
#: The env agent's FROM rule as it was before the catalog existed (a run without a catalog must
#: send exactly these words, or stored and scripted answers stop matching).
RULE_BEFORE_THE_CATALOG = (
    "- the first instruction is `FROM ${base_image}` (the only base image available: Debian\n"
    "  bookworm with python3, pip and pytest);\n"
)


def fence(text: str) -> str:
    return "```\n" + text.rstrip("\n") + "\n```\n"


def catalog():
    from termigen_plugins.executors.catalog import BUILTIN_CATALOG

    return BUILTIN_CATALOG


def policy(*names: str) -> ImagePolicy:
    return ImagePolicy(BASE, {}, catalog().describe(list(names), BASE) if names else {})


# --- the catalog and what the env agent reads -------------------------------------------------


def test_catalog_images_are_built_from_the_python_base_with_their_own_recipe():
    images = catalog().images
    assert {"python-data", "build-toolchain", "services", "security"} <= set(images)
    for name, image in images.items():
        dockerfile = image.dockerfile(BASE)
        assert dockerfile.startswith(f"FROM {BASE}\n")
        assert f'io.termigen.catalog="{name}"' in dockerfile
        for package in image.apt:
            assert re.search(rf"\s{re.escape(package)}(\s|$)", "\n".join(image.recipe())), package
        assert image.tag("trixie") == f"termigen/catalog-{name}:trixie"


def test_env_agent_prompt_is_unchanged_without_a_catalog():
    from termigen_plugins.stages.synthesize import PROMPTS, base_image_rule

    template = (PROMPTS / "env_agent.txt").read_text(encoding="utf-8")
    rendered = Template(template).safe_substitute(base_image=BASE, base_image_rule=base_image_rule(ImagePolicy(BASE)))
    before = Template(template.replace("- ${base_image_rule}\n", RULE_BEFORE_THE_CATALOG)).safe_substitute(base_image=BASE)
    assert rendered == before
    assert "catalog" not in rendered


def test_env_agent_prompt_lists_the_configured_catalog_images_and_what_they_have():
    from termigen_plugins.stages.synthesize import base_image_rule

    rule = base_image_rule(policy("python-data", SMALLEST))
    assert f"`{BASE}`" in rule and "`termigen/catalog-python-data:bookworm`" in rule and f"`{CATALOG_TAG}`" in rule
    assert "python3-pandas" in rule and "openssl" in rule
    assert "build-toolchain" not in rule  # only what the run configured
    assert base_image_rule(policy("python-data", SMALLEST)) == rule  # the same bytes every time (answers replay)


def test_check_dockerfile_accepts_a_configured_catalog_image_and_refuses_others():
    from termigen_plugins.stages.synthesize import check_dockerfile

    with_catalog = policy(SMALLEST)
    accepted = check_dockerfile(f"FROM {CATALOG_TAG}\nWORKDIR /app\nCOPY . /app\n", with_catalog, "/app", {})
    assert accepted.startswith(f"FROM {CATALOG_TAG}")
    check_dockerfile(f"FROM {BASE}\nWORKDIR /app\n", with_catalog, "/app", {})  # the base stays allowed
    with pytest.raises(ParseError, match="only termigen/python:bookworm or termigen/catalog-security:bookworm"):
        check_dockerfile("FROM termigen/catalog-python-data:bookworm\nWORKDIR /app\n", with_catalog, "/app", {})
    with pytest.raises(ParseError, match="FROM ubuntu:24.04"):
        check_dockerfile("FROM ubuntu:24.04\nWORKDIR /app\n", with_catalog, "/app", {})
    # without a catalog, a catalog image is refused with the message models were always shown
    with pytest.raises(ParseError, match="the base image must be termigen/python:bookworm .*no other image is available"):
        check_dockerfile(f"FROM {CATALOG_TAG}\nWORKDIR /app\n", ImagePolicy(BASE), "/app", {})


def test_inlining_replaces_a_catalog_from_by_the_base_and_its_recipe():
    from termigen_plugins.executors.catalog import inline_catalog

    text = f"FROM {CATALOG_TAG} AS tools\nRUN openssl version > /v\nFROM {BASE}\nCOPY --from=tools /v /v\n"
    inlined = inline_catalog(text)
    assert CATALOG_TAG not in inlined.replace(f"# inlined from {CATALOG_TAG}", "")
    assert inlined.startswith(f"FROM {BASE} AS tools\n# inlined from {CATALOG_TAG}")
    assert inlined.index("apt-get install") < inlined.index("RUN openssl version")
    assert inlined.count("apt-get install") == 1  # only the stage that named the catalog image
    plain = f"FROM {BASE}\nRUN true\n"
    assert inline_catalog(plain) == plain


# --- config ------------------------------------------------------------------------------------


def pipeline(tmp_path: Path, images: dict[str, Any], stages: list[dict[str, Any]] | None = None, **extra: Any) -> Path:
    if not (tmp_path / "script.yaml").exists():
        (tmp_path / "script.yaml").write_text("- response: x\n", encoding="utf-8")
    return write_yaml(tmp_path / "pipeline.yaml", {
        "version": 1,
        "llm": {"default": {"backend": "scripted", "model": "scripted-test", "script": "script.yaml"}},
        "images": images,
        "stages": stages or [{"use": "seeds", "with": {"source": "file", "options": {"path": "seeds.yaml"}}}],
        **extra,
    })


def test_unknown_catalog_names_are_config_errors_with_their_path(tmp_path):
    config = pipeline(tmp_path, {"catalog": ["python-data", "pyton-data", "gpu"]})
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "images.catalog[1]" in said and "pyton-data" in said and "python-data" in said  # with a suggestion
    assert "images.catalog[2]" in said and "'gpu'" in said
    assert "images.catalog[0]" not in said
    assert "Traceback" not in said


def test_catalog_shape_errors_and_all_are_checked(tmp_path):
    bad = run_cli("config", "check", str(pipeline(tmp_path, {"catalog": "everything"})))
    assert bad.returncode == 2 and "images.catalog" in bad.stdout + bad.stderr
    good = run_cli("config", "check", str(pipeline(tmp_path, {"catalog": "all"})))
    assert good.returncode == 0, good.stdout + good.stderr


def test_an_executor_without_a_catalog_refuses_images_catalog():
    from termigen_core.config import ImagesSection

    class NoCatalog:
        image_catalog = None

    issues = ImagesSection(catalog=["security"]).catalog_issues(NoCatalog, "simulated")
    assert [i.path for i in issues] == ["images.catalog"] and "no image catalog" in issues[0].message
    assert ImagesSection().catalog_issues(NoCatalog, "simulated") == []


# --- real Docker -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(python_base_engine: Any) -> Any:
    return python_base_engine


@pytest.fixture(scope="module")
def catalog_image(engine: Any) -> Any:
    """``termigen images bootstrap --only security``: built once per machine, kept like the base images."""
    result = run_cli("images", "bootstrap", "--only", SMALLEST, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"result": result, "image": engine.images.get(CATALOG_TAG)}


@pytest.mark.docker
@pytest.mark.slow
def test_bootstrap_builds_a_catalog_image_with_a_manifest_read_from_it(catalog_image, engine):
    from termigen_plugins.executors.catalog import MANIFEST_LABEL, Manifest

    image = engine.images.get(CATALOG_TAG)
    manifest = Manifest.from_labels(image.labels)
    assert manifest is not None and manifest.name == SMALLEST
    assert json.loads(image.labels[MANIFEST_LABEL])["name"] == SMALLEST
    # the manifest is what the image really has: compare with dpkg and pip in a container
    dpkg = engine.containers.run(CATALOG_TAG, ["dpkg-query", "-W", "-f=${Package}\\t${Version}\\n", "openssl", "gnupg"],
                                 remove=True).decode()
    for line in dpkg.splitlines():
        package, version = line.split("\t")
        assert manifest.apt[package] == version
    assert manifest.has_apt("python3-cryptography") and manifest.pip_version("pytest")
    assert all(manifest.has_apt(package) for package in catalog().images[SMALLEST].apt)
    # a second bootstrap keeps it (one engine round trip), and `images list` shows it as built
    again = run_cli("images", "bootstrap", "--only", SMALLEST)
    assert again.returncode == 0 and re.search(rf"{re.escape(CATALOG_TAG)}: skipped", again.stdout), again.stdout
    listing = run_cli("images", "list")
    assert listing.returncode == 0 and CATALOG_TAG in listing.stdout
    assert re.search(rf"{SMALLEST}\s+built, {len(manifest.apt)} Debian", listing.stdout), listing.stdout
    assert re.search(r"python-data\s+(built|not built)", listing.stdout)


def test_bootstrap_refuses_an_unknown_catalog_name():
    result = run_cli("images", "bootstrap", "--only", "gpu-stack")
    assert result.returncode == 2
    assert "--only gpu-stack: no such catalog image" in result.stderr and "python-data" in result.stderr
    assert "Traceback" not in result.stderr


def seed_stages() -> list[dict[str, Any]]:
    return [
        {"use": "seeds", "with": {"source": "file", "options": {"path": "seeds.yaml"}, "dedup_threshold": 0.99}},
        {"use": "propose", "with": {"max_rounds": 1, "min_score": 4}},
        {"use": "synthesize", "with": {"max_files": 2}},
        {"use": "build", "with": {"max_attempts": 1, "build_timeout_s": 300}},
    ]


@pytest.mark.docker
def test_a_missing_catalog_image_stops_the_run_before_any_work(engine, tmp_path):
    suite = f"nosuite{uuid.uuid4().hex[:6]}"  # a suite nobody bootstrapped: its catalog images cannot exist
    write_yaml(tmp_path / "seeds.yaml", [{"text": "count lines", "category": "data_processing", "tier": 1}])
    config = pipeline(tmp_path, {"base": f"termigen/python:{suite}", "catalog": [SMALLEST]}, seed_stages())
    result = run_cli("run", str(config), "--out", str(tmp_path / "run"))
    said = result.stdout + result.stderr
    assert result.returncode == 4, said
    assert f"termigen/catalog-{SMALLEST}:{suite}" in said
    assert f"termigen images bootstrap --catalog --only {SMALLEST}" in said
    assert "Traceback" not in said
    with __import__("sqlite3").connect(tmp_path / "run" / "run.db") as db:
        assert db.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0] == 0  # nothing was paid for


@pytest.mark.docker
@pytest.mark.slow
def test_a_run_with_the_catalog_builds_from_it_and_its_export_builds_without_it(catalog_image, engine, tmp_path):
    session = uuid.uuid4().hex[:8]
    title = f"CATALOGTASK {session} fingerprint a file"
    dockerfile = f"FROM {CATALOG_TAG}\nWORKDIR /app\nCOPY data/ /app/data/\nRUN openssl dgst -sha256 /app/data/in.txt\n"
    write_yaml(tmp_path / "script.yaml", [
        {"role": "proposer", "json": {
            "title": title, "objective": "Write the SHA-256 of a file with openssl.",
            "inputs": ["/app/data/in.txt"], "outputs": ["/app/sum.txt"],
            "success_criteria": ["/app/sum.txt holds the SHA-256 of /app/data/in.txt"],
            "difficulty": "easy", "tools": ["openssl"]}},
        {"role": "evaluator", "json": {"environment_complexity": 5, "data_generatability": 5,
                                        "verification_determinism": 5, "feedback": "fine"}},
        {"role": "planner", "json": {"files": [{"path": "data/in.txt", "purpose": "the file to fingerprint"}],
                                     "instruction": "Write the SHA-256 of /app/data/in.txt to /app/sum.txt.",
                                     "workdir": "/app"}},
        {"role": "constructor", "response": fence("hello catalog")},
        # answered only if the prompt lists the catalog image: the run must have told the agent about it
        {"role": "env_agent", "stage": "synthesize", "match": re.escape(f"`{CATALOG_TAG}`: ") + ".*openssl",
         "response": fence(dockerfile)},
    ])
    write_yaml(tmp_path / "seeds.yaml", [{"text": f"fingerprint a file ({session})", "category": "security", "tier": 1}])
    config = pipeline(tmp_path, {"base": BASE, "catalog": [SMALLEST]}, seed_stages(),
                      exports=[{"use": "harbor", "with": {"path": "export/harbor", "include_unvalidated": True}},
                               {"use": "tb1", "with": {"path": "export/tb1", "include_unvalidated": True}},
                               {"use": "jsonl", "with": {"path": "export/tasks.jsonl", "kinds": ["task"]}}],
                      run={"keep_images": True})
    run_dir = tmp_path / "run"
    made: list[str] = []
    try:
        result = run_cli("run", str(config), "--out", str(run_dir), timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        task = read_jsonl(run_dir / "export" / "tasks.jsonl")[0]["data"]["task"]
        made.append(task["build"]["image"])
        assert task["environment"]["Dockerfile"].startswith(f"FROM {CATALOG_TAG}")
        built = engine.images.get(task["build"]["image"])
        assert CATALOG_TAG in [t for layer in built.history() for t in (layer.get("Tags") or [])]
        # the exports name only the base and carry the catalog image's recipe
        for folder in (run_dir / "export" / "harbor").iterdir():
            if not folder.is_dir():
                continue
            exported = (folder / "environment" / "Dockerfile").read_text()
            assert exported.startswith(f"FROM {BASE}\n# inlined from {CATALOG_TAG}")
            assert "openssl" in exported.split("RUN openssl")[0]
            assert "termigen/python:bookworm" in (folder / "task.toml").read_text()
            tag = f"termigen-test/catalog-export-{session}:harbor"
            made.append(tag)
            engine.images.build(path=str(folder / "environment"), tag=tag, rm=True, forcerm=True)
            parents = [t for layer in engine.images.get(tag).history() for t in (layer.get("Tags") or [])]
            assert CATALOG_TAG not in parents  # it built without the catalog image
        tb1 = [f for f in (run_dir / "export" / "tb1").iterdir() if f.is_dir()]
        assert tb1 and all((f / "Dockerfile").read_text().startswith(f"FROM {BASE}\n# inlined from") for f in tb1)
    finally:
        for tag in made:
            try:
                engine.images.remove(tag, force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
