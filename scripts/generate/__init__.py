"""Every generated file in the repository, each with the one code that writes it.

`make generate` (`python -m scripts.generate`) rewrites them; `make verify-generated` (`--check`,
run by `make lint`) writes nothing and fails naming each stale one, as ingress-nginx pairs its
hack/update-* and hack/verify-* scripts. A test that guards an artefact calls `stale()` on it.
"""

from __future__ import annotations

from . import clipjob_crd, manifests, metrics, tables
from .artefact import Artefact, stale, write

ARTEFACTS: list[Artefact] = [
    *clipjob_crd.ARTEFACTS,
    *manifests.ARTEFACTS,
    *metrics.ARTEFACTS,
    *tables.ARTEFACTS,
]

__all__ = ["ARTEFACTS", "Artefact", "stale", "write"]
