"""Fixtures for the image tests: both images, built by scripts/build-images.sh."""

from __future__ import annotations

import pytest

from tests.support.containers import build_images, remove_stale_containers
from tests.support.rendering import Helm, install_tool


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The service and operator image IDs; built (or found up to date) once per session."""
    remove_stale_containers()
    return build_images()


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm from scripts/install-helm.sh (cached after the first run)."""
    return Helm(install_tool("install-helm.sh"))
