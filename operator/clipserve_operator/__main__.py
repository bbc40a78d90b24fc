"""`clipserve-operator`: run the kopf operator (all namespaces, liveness on :8081/healthz)."""

from __future__ import annotations

import os

import kopf

from . import handlers  # noqa: F401  (registers the handlers)


def main() -> None:
    """Run the operator until SIGTERM; CLIPSERVE_OPERATOR_LIVENESS overrides the probe URL."""
    kopf.configure(verbose=bool(os.environ.get("CLIPSERVE_OPERATOR_VERBOSE")))
    kopf.run(
        clusterwide=True,
        # One replica (Recreate): no peering CRDs needed.
        standalone=True,
        liveness_endpoint=os.environ.get(
            "CLIPSERVE_OPERATOR_LIVENESS", "http://0.0.0.0:8081/healthz"
        ),
    )


if __name__ == "__main__":
    main()
