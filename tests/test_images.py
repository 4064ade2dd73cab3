"""The container images, as far as they can be checked without building them (no Docker
engine here): hadolint finds nothing, every file they copy exists, versions are pinned,
the notebook images run as a non-root user, and the JupyterHub they pin is the hub's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.z2jh_offline import CHART, REPO, Z2JH, chart_values, load_yaml

IMAGES = REPO / "images"
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in ("hub", "cuda", "rocm")}
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1]) for line in lines]


def arg(dockerfile: Path, name: str) -> str:
    (value,) = [
        a.split("=", 1)[1]
        for i, a in instructions(dockerfile)
        if i == "ARG" and a.startswith(name + "=")
    ]
    return value


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line} is not pinned"
            found[requirement.name.lower()] = specifier.version
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name):
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout or "[]") == [] and result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_what_the_images_copy_exists_and_the_build_context_lets_it_through(name):
    dockerfile = DOCKERFILES[name]
    ignore = (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for instruction, arguments in instructions(dockerfile):
        if instruction == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


@pytest.mark.parametrize("name", ["cuda", "rocm"])
def test_notebook_images_run_jupyterhub_singleuser_as_a_non_root_user(name):
    steps = instructions(DOCKERFILES[name])
    users = [a for i, a in steps if i == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert (uid, gid) == ("1000", "100")  # z2jh's singleuser.uid and fsGid
    assert ("ENTRYPOINT", '["tini", "--"]') in steps
    assert steps[-1] == ("CMD", '["jupyterhub-singleuser"]')
    values = chart_values()["jupyterhub"]["singleuser"]
    assert (values["uid"], values["fsGid"]) == (1000, 100)


def test_the_images_pin_the_jupyterhub_that_the_hub_runs():
    hub = DOCKERFILES["hub"]
    (base,) = [a for i, a in instructions(hub) if i == "FROM"]
    image, _, z2jh_version = base.partition(":")
    assert image == "quay.io/jupyterhub/k8s-hub"
    # the chart's jupyterhub dependency is the release whose hub image we build on
    (dependency,) = load_yaml(CHART / "Chart.yaml")["dependencies"]
    assert dependency["version"] == z2jh_version
    # and that release's hub image ships this JupyterHub (../shared/data/z2jh-<version>)
    facts = (Z2JH.parent / f"z2jh-{z2jh_version}" / "README.md").read_text()
    shipped = re.search(r"hub image ships JupyterHub (\d+\.\d+\.\d+)", facts).group(1)
    hub_version = arg(hub, "JUPYTERHUB_VERSION")
    assert hub_version == shipped
    for name in ("cuda", "rocm"):
        assert arg(DOCKERFILES[name], "JUPYTERHUB_VERSION") == hub_version
    for name, dockerfile in DOCKERFILES.items():
        installs = [a for i, a in instructions(dockerfile) if i == "RUN" and "pip install" in a]
        assert any('"jupyterhub==${JUPYTERHUB_VERSION}"' in a for a in installs), name
    # the hub image checks it at build time, and the version is one the project supports
    assert "jupyterhub.__version__ != '${JUPYTERHUB_VERSION}'" in hub.read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (bound,) = [Requirement(r) for r in project["dependencies"] if r.startswith("jupyterhub>")]
    assert Version(hub_version) in bound.specifier
    # make test runs the end-to-end suite on the same JupyterHub minor version
    assert (
        f"'jupyterhub=={Version(hub_version).major}.{Version(hub_version).minor}.*'"
        in (REPO / "Makefile").read_text()
    )


def test_the_notebook_images_differ_only_in_pytorch():
    """Two Dockerfiles (a vendor each) share everything after their PyTorch layer: kept
    identical here, so that a change to one cannot miss the other."""

    def after_torch(name):
        steps = instructions(DOCKERFILES[name])
        (torch,) = [n for n, (i, a) in enumerate(steps) if i == "RUN" and "torch==" in a]
        return steps[torch + 1 :]

    assert after_torch("cuda") == after_torch("rocm")
    assert len(after_torch("cuda")) >= 10


def test_both_notebook_images_pin_the_same_stack():
    for name in ("TORCH_VERSION", "JUPYTERHUB_VERSION"):
        assert arg(DOCKERFILES["cuda"], name) == arg(DOCKERFILES["rocm"], name)
    torch = arg(DOCKERFILES["cuda"], "TORCH_VERSION")
    assert re.fullmatch(r"\d+\.\d+\.\d+", torch)
    assert '"torch==${TORCH_VERSION}+rocm${ROCM_VERSION}"' in DOCKERFILES["rocm"].read_text()
    requirements = pins(IMAGES / "notebook" / "requirements.txt")
    constraints = pins(IMAGES / "notebook" / "constraints.txt")
    assert "jupyterlab" in requirements and "jupyterhub" not in constraints
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (lab,) = [Requirement(r) for r in extras["singleuser"] if r.startswith("jupyterlab")]
    assert Version(requirements["jupyterlab"]) in lab.specifier


def test_the_hub_image_pins_our_dependencies_within_the_projects_bounds():
    constraints = pins(IMAGES / "hub" / "constraints.txt")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower()
        if name in constraints:
            assert Version(constraints[name]) in requirement.specifier, line
    assert {"psycopg", "nbconvert", "jupyterhub-kubespawner"} <= set(constraints)


def test_the_chart_runs_the_images_of_this_release():
    chart = load_yaml(CHART / "Chart.yaml")
    jupyterhub = chart_values()["jupyterhub"]
    tags = {
        jupyterhub["hub"]["image"]["tag"],
        jupyterhub["singleuser"]["image"]["tag"],
        *(gpu["image"]["tag"] for gpu in jupyterhub["custom"]["aipower"]["gpus"].values()),
    }
    assert tags == {chart["appVersion"]}
    gpus = jupyterhub["custom"]["aipower"]["gpus"]
    assert gpus["nvidia"]["image"]["name"].endswith("/cuda-notebook")
    assert gpus["amd"]["image"]["name"].endswith("/rocm-notebook")
    assert jupyterhub["singleuser"]["image"] == gpus["nvidia"]["image"]


@pytest.mark.parametrize("name", ["cuda", "rocm"])
def test_notebook_images_hold_our_server_extensions_where_the_spawner_looks(name):
    from spawner.kube import KubeGPUSpawner

    steps = instructions(DOCKERFILES[name])
    (base,) = [a for i, a in steps if i == "FROM"]
    python = re.fullmatch(r"python:(\d+\.\d+)-slim-\w+", base).group(1)
    expected = f"/usr/local/lib/python{python}/site-packages/spawner/notebook"
    assert KubeGPUSpawner.notebook_package_dir.default_value == expected
    installs = [a for i, a in steps if i == "RUN" and "/tmp/notebook/src" in a]
    assert (
        len(installs) == 1 and "import authenticator.server_guard, spawner.notebook" in installs[0]
    )
    # what the package data must carry for JupyterLab to find the prebuilt extension
    package = REPO / "spawner" / "notebook"
    assert (package / "etc/jupyter/jupyter_server_config.d/aipower_hub_usage.json").is_file()
    assert (package / "share/jupyter/labextensions/aipower-hub-usage/package.json").is_file()
