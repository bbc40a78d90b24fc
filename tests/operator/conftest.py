"""Fixtures for the operator tests: helm, and (cluster tests) the operator run in-process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The pinned helm from scripts/install-helm.sh (its last stdout line is the path)."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts/install-helm.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]
