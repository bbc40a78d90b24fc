"""The three distributions hold their own product and nothing else: the client no server code
and no torch, the operator no torch, the service neither the operator nor the client."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.imports import modules_loaded_by

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "torchvision", "open_clip", "litestar", "PIL", "uvicorn", "prometheus_client")
# folder, import package, requirements it must not have
DISTS = {
    "service": ("clipserve", {"kopf", "clipserve-operator", "clipserve-client"}),
    "operator": ("clipserve_operator", {"torch", "torchvision", "open-clip-torch", "clipserve"}),
    "client": ("clipserve_client", {"torch", "clipserve", "litestar", "kopf"}),
}


def _build(folder: str, tmp_path: Path) -> tuple[list[str], set[str], Path]:
    """Build the folder's wheel from a copy of it (as an sdist would hold it); its files, its
    requirement names, and where it was unpacked."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / folder, src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    build = (
        "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    )
    wheel = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.splitlines()[-1]
    with zipfile.ZipFile(tmp_path / "dist" / wheel) as whl:
        names = whl.namelist()
        files = sorted(n for n in names if not n.split("/")[0].endswith(".dist-info"))
        meta = email.message_from_bytes(whl.read(next(n for n in names if n.endswith("METADATA"))))
        whl.extractall(tmp_path / "installed")
    requires = {
        canonicalize_name(Requirement(r).name)
        for r in meta.get_all("Requires-Dist") or []
        if "extra ==" not in r
    }
    return files, requires, tmp_path / "installed"


def test_importing_the_client_loads_no_server_dependency():
    assert modules_loaded_by("clipserve_client", HEAVY) == []


@pytest.mark.parametrize("folder", sorted(DISTS))
def test_each_wheel_holds_its_package_whole_and_nothing_else(folder: str, tmp_path: Path):
    package, forbidden = DISTS[folder]
    files, requires, _ = _build(folder, tmp_path)
    source = ROOT / folder / package
    expected = sorted(
        str(p.relative_to(source.parent))
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    # every module and shipped file (the pages' static files too), from no other package
    assert files == expected
    assert requires, "no requirements at all"
    assert not requires & forbidden


def test_the_client_wheel_requires_httpx_and_numpy_only_and_imports_alone(tmp_path: Path):
    _, requires, installed = _build("client", tmp_path)
    assert requires == {"httpx", "numpy"}
    assert modules_loaded_by("clipserve_client", HEAVY, installed) == []


def _locked(lock: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """name -> version of every `name==version ; marker` line of a uv lock file whose marker
    holds here (a universal lock has a line per Python version where the versions differ)."""
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            pin, _, marker = line.partition(";")
            if marker and not Marker(marker).evaluate(env):
                continue
            name, _, version = pin.strip().partition("==")
            assert canonicalize_name(name) not in pins, f"{name} pinned twice for one platform"
            pins[canonicalize_name(name)] = version
    return pins


LOCKS = {
    "service/requirements.lock": ["service"],
    "operator/requirements.lock": ["operator"],
    "client/requirements.lock": ["client"],
    "requirements-dev.lock": ["service", "operator", "client", "."],
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_file_pins_every_requirement_within_its_range(lock: str):
    # A pyproject edit without `make lock` would install versions the lock never saw (or fail
    # on a constraint outside the new range): the lock must satisfy every stated range.
    pins = _locked(ROOT / lock)
    for folder in LOCKS[lock]:
        project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
        meta = project.get("project", {})
        extras = meta.get("optional-dependencies", {}).values()
        wanted = [
            *meta.get("dependencies", []),
            *(text for extra in extras for text in extra),
            *project.get("dependency-groups", {}).get("dev", []),
        ]
        assert wanted, folder
        for text in wanted:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            assert name in pins, f"{lock} has no pin for {text} ({folder}): run make lock"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{lock} pins {name}=={pins[name]}, outside {text} ({folder}): run make lock"
            )


def test_the_lock_check_reads_the_pin_for_this_python_and_sees_one_outside_its_range(
    tmp_path: Path,
):
    lock = tmp_path / "x.lock"
    lock.write_text(
        "# header\nTorch==2.14.1 ; sys_platform == 'linux'\n    # via x\n"
        "numpy==2.4.6 ; python_full_version < '3.12'\n"
        "numpy==2.5.5 ; python_full_version >= '3.12'\n"
    )
    linux_311 = {"sys_platform": "linux", "python_full_version": "3.11.2"}
    assert _locked(lock, linux_311) == {"torch": "2.14.1", "numpy": "2.4.6"}
    assert _locked(lock, {**linux_311, "sys_platform": "darwin"}) == {"numpy": "2.4.6"}
    assert not Requirement("torch==2.15").specifier.contains(_locked(lock, linux_311)["torch"])
