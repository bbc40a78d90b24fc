"""`python -m tests.cluster up|down`: a long-lived local control plane for manual use."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tests.cluster.harness import Cluster, ClusterError, start


def _default_state_dir() -> Path:
    cache = Path(os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"))
    return cache / "cluster"


def up(state_dir: Path) -> int:
    """Start the cluster unless the one recorded in state_dir still runs; print KUBECONFIG."""
    existing = Cluster.load(state_dir)
    if existing and existing.running():
        print(f"cluster already running ({existing.server}); logs in {state_dir / 'logs'}")
    else:
        if existing:
            existing.stop()  # leftovers of a half-dead cluster, by their recorded PIDs
        shutil.rmtree(state_dir, ignore_errors=True)
        try:
            existing = start(state_dir, tie_to_parent=False)
        except ClusterError as err:
            print(err, file=sys.stderr)
            return 1
        print(f"cluster up at {existing.server}; logs in {state_dir / 'logs'}")
    print(f"export KUBECONFIG={existing.kubeconfig} PATH={existing.bin_dir}:$PATH")
    return 0


def down(state_dir: Path) -> int:
    """Stop the cluster recorded in state_dir by its PIDs."""
    existing = Cluster.load(state_dir)
    if existing is None:
        print(f"no cluster recorded in {state_dir}")
        return 0
    existing.stop()
    print(f"cluster stopped; logs kept in {state_dir / 'logs'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `up|down [--state-dir DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--state-dir", type=Path, default=_default_state_dir())
    args = parser.parse_args(argv)
    return up(args.state_dir) if args.action == "up" else down(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
