"""`clipserve-operator` as a person runs it: help, version, exit codes, start-up checks.

Each test runs the installed console script as a real process, without a cluster; the checks
against a real API server are in test_operator_failures.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMAND = str(Path(sys.executable).parent / "clipserve-operator")


def _run(
    *argv: str, env: dict[str, str] | None = None, path: str = "/usr/bin:/bin"
) -> subprocess.CompletedProcess[str]:
    """The command with a clean environment (no helm on PATH unless given, no kubeconfig)."""
    base = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "KUBECONFIG": "/nonexistent"}
    return subprocess.run(
        [COMMAND, *argv],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused start (never a traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("clipserve-operator: ")
    return lines[0]


def test_help_prints_help_and_exits_0() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: clipserve-operator")
    for flag in ("--namespace", "--helm", "--chart", "--verbose", "--version"):
        assert flag in proc.stdout


def test_version_prints_the_package_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"clipserve-operator {version('clipserve')}"


def test_python_dash_m_is_the_same_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clipserve_operator", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("clipserve-operator ")


def test_missing_helm_is_one_line_naming_the_fix_and_exit_1() -> None:
    proc = _run()  # PATH has no helm
    line = _one_line_error(proc)
    assert proc.returncode == 1
    assert "helm not found: 'helm' is not on PATH" in line and "--helm" in line
    assert "scripts/install-helm.sh" in line  # from a checkout, the project's own helm


def test_a_helm_path_that_does_not_exist_is_refused() -> None:
    proc = _run("--helm", "/nowhere/helm")
    assert proc.returncode == 1
    assert "/nowhere/helm does not exist or is not executable" in _one_line_error(proc)


def test_bad_flag_value_exits_2_naming_the_flag() -> None:
    proc = _run("--metrics-port", "eighty")
    assert proc.returncode == 2 and "--metrics-port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_variable_exits_2_naming_the_variable() -> None:
    proc = _run(env={"CLIPSERVE_OPERATOR_RESYNC_S": "often"})
    assert proc.returncode == 2 and "CLIPSERVE_OPERATOR_RESYNC_S" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_namespace_name_exits_2() -> None:
    proc = _run("--namespace", "Not_A_Namespace")
    assert proc.returncode == 2 and "--namespace" in proc.stderr


def _helm_dir(helm_bin: str, tmp_path: Path) -> str:
    """A PATH entry holding only the pinned helm, as `helm`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm_bin)
    return f"{bin_dir}:/usr/bin:/bin"


def _chart_copy(tmp_path: Path) -> Path:
    """A copy of charts/clipserve to break."""
    chart = tmp_path / "chart"
    shutil.copytree(REPO / "charts/clipserve", chart)
    return chart


@pytest.mark.helm
def test_helm_on_path_is_found_then_a_missing_chart_is_refused(
    helm_bin: str, tmp_path: Path
) -> None:
    proc = _run("--chart", str(tmp_path), path=_helm_dir(helm_bin, tmp_path))
    assert proc.returncode == 1
    assert f"chart not found: {tmp_path} has no Chart.yaml" in _one_line_error(proc)


@pytest.mark.helm
def test_a_chart_that_fails_to_render_is_one_line_with_helms_error(
    helm_bin: str, tmp_path: Path
) -> None:
    chart = _chart_copy(tmp_path)
    (chart / "templates/broken.yaml").write_text('{{ fail "broken on purpose" }}\n')
    proc = _run("--helm", helm_bin, "--chart", str(chart))
    assert proc.returncode == 1
    line = _one_line_error(proc)
    assert f"chart {chart} does not render" in line and "broken on purpose" in line


@pytest.mark.helm
def test_a_chart_without_the_slot_deployment_is_not_a_clipserve_chart(
    helm_bin: str, tmp_path: Path
) -> None:
    chart = _chart_copy(tmp_path)
    (chart / "templates/server-deployment.yaml").unlink()
    proc = _run("--helm", helm_bin, "--chart", str(chart))
    assert proc.returncode == 1
    assert "renders no Deployment" in _one_line_error(proc)


@pytest.mark.helm
def test_without_cluster_credentials_the_check_says_so(helm_bin: str, tmp_path: Path) -> None:
    proc = _run("--helm", helm_bin)  # KUBECONFIG=/nonexistent, no service account
    assert proc.returncode == 1
    assert "cannot load the kubeconfig" in _one_line_error(proc)
    unreachable = tmp_path / "kubeconfig"
    unreachable.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    proc = _run("--helm", helm_bin, env={"KUBECONFIG": str(unreachable)})
    assert proc.returncode == 1
    assert "cannot reach the API server" in _one_line_error(proc)


def test_an_unsupported_helm_version_is_refused(tmp_path: Path) -> None:
    # A stand-in for helm 2 (it cannot be installed here): it answers `helm version` only.
    old = tmp_path / "helm"
    old.write_text("#!/bin/sh\necho v2.17.0\n")
    old.chmod(0o755)
    proc = _run("--helm", str(old))
    assert proc.returncode == 1
    assert "is helm v2.17.0; clipserve-operator needs helm 3.8 or newer" in _one_line_error(proc)


# A presigned checkpoint URL with a password: what no operator log line may show.
SECRET_URL = "https://alice7:s3cr3tpass@models.example/ckpt.pt?X-Amz-Signature=sig0nly4me"
LOGS = """
import logging, kopf
from clipserve_operator import cli
from clipserve_operator.settings import Settings

def operator_loop(**kwargs):  # what the reconciles log, in place of kopf's loop over a cluster
    log = logging.getLogger("clipserve_operator")
    log.warning("ml/search: created Job search-embed with ViT-B-32:%s", URL)
    try:
        raise RuntimeError(f"{URL} answered 403")
    except RuntimeError:
        log.exception("ml/search: reconcile failed")

kopf.run = operator_loop
cli.run(Settings())
"""


def test_the_operators_log_lines_and_tracebacks_are_redacted() -> None:
    """cli.run sets kopf's logging up, then redacts every record: a spec in a message and an
    exception quoting a URL show the host and path, never the password or the signature."""
    proc = subprocess.run(
        [sys.executable, "-c", f"URL = {SECRET_URL!r}\n{LOGS}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    shown = "https://***@models.example/ckpt.pt?***"
    assert f"created Job search-embed with ViT-B-32:{shown}" in proc.stderr, proc.stderr
    assert f"RuntimeError: {shown} answered 403" in proc.stderr, proc.stderr
    for secret in ("alice7", "s3cr3tpass", "sig0nly4me", "X-Amz-Signature"):
        assert secret not in proc.stderr + proc.stdout, secret
