"""The client installs and imports without the server's dependencies (torch above all)."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEAVY = ("torch", "torchvision", "open_clip", "litestar", "PIL", "uvicorn", "prometheus_client")


def _modules_loaded_by_import(path_first: Path | None = None) -> list[str]:
    code = (
        "import json, sys\n"
        + (f"sys.path.insert(0, {str(path_first)!r})\n" if path_first else "")
        + "import clipserve.client as c\n"
        + f"print(c.__file__)\nprint(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    if path_first:
        assert out[0].startswith(str(path_first)), out[0]
    return json.loads(out[1])


def test_importing_the_client_loads_no_server_dependency():
    assert _modules_loaded_by_import() == []


def test_the_client_distribution_links_the_servers_own_client_package():
    linked = ROOT / "client" / "clipserve"
    for name in ("__init__.py", "client"):
        assert (linked / name).resolve() == (ROOT / "service" / "clipserve" / name).resolve()


def test_the_servers_distribution_lists_every_subpackage():
    # setuptools ships only the packages listed; a missing one imports in an editable install
    # and is absent from the wheel the images install.
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    for top, folder in (
        ("clipserve", "service/clipserve"),
        ("clipserve_operator", "operator/clipserve_operator"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((top, *parts)) in listed, init


def test_the_client_distribution_holds_only_the_client_and_requires_no_torch(tmp_path: Path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "client", src, symlinks=False)  # as an sdist would hold it
    built = tmp_path / "dist"
    build = (
        "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    )
    wheel = subprocess.run(
        [sys.executable, "-c", build, str(built)],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()[-1]
    with zipfile.ZipFile(built / wheel) as whl:
        names = whl.namelist()
        code = sorted(n for n in names if not n.split("/")[0].endswith(".dist-info"))
        meta = email.message_from_bytes(whl.read(next(n for n in names if n.endswith("METADATA"))))
        whl.extractall(tmp_path / "installed")
    assert code == [
        "clipserve/__init__.py",
        *(f"clipserve/client/{m}.py" for m in ("__init__", "clients", "items", "results")),
    ]
    requires = {r.split(">")[0].split("=")[0].strip() for r in meta.get_all("Requires-Dist")}
    assert requires == {"httpx", "numpy"}
    assert _modules_loaded_by_import(tmp_path / "installed") == []
