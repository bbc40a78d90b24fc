"""`clipserve-operator`: flags, start-up checks, then the kopf operator until SIGTERM."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from .checks import StartupError, run_checks
from .redact import redact_logs
from .settings import Settings, add_arguments, from_args

EPILOG = """\
exit status: 0 stopped by SIGTERM/SIGINT, 1 a start-up check failed (helm, chart, cluster, CRD),
2 bad flags or variables. Settings are read from flags, then CLIPSERVE_OPERATOR_* variables,
then defaults. The cluster comes from the in-cluster ServiceAccount, else $KUBECONFIG or
~/.kube/config."""


def _version() -> str:
    try:
        return version("clipserve")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The command line; every setting is also a CLIPSERVE_OPERATOR_* variable."""
    parser = argparse.ArgumentParser(
        prog="clipserve-operator",
        description="Run the ClipService operator: render charts/clipserve for every\n"
        "ClipService, apply it, swap models blue/green and report status on the ClipService.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    add_arguments(parser)
    return parser


def _settings(argv: list[str] | None) -> Settings:
    """Settings from the command line and environment; exits 2 naming a bad value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = from_args(args)
        settings.check()
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return settings


def run(settings: Settings) -> None:
    """The kopf operator with these settings, until SIGTERM or SIGINT."""
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    redact_logs()  # kopf's own lines too: an exception it logs may quote a checkpoint URL
    kopf.configure(verbose=settings.verbose)
    kopf.run(
        clusterwide=not settings.namespace,
        namespaces=settings.namespace,
        # One replica (Recreate): no peering objects needed.
        standalone=True,
        liveness_endpoint=settings.liveness,
        memo=kopf.Memo(settings=settings),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse, check, run; the exit status as EPILOG says."""
    settings = _settings(argv)
    try:
        run_checks(settings)
    except StartupError as exc:
        message = " ".join(str(exc).split())  # one line, even for helm's multi-line errors
        print(f"clipserve-operator: {message}", file=sys.stderr)
        return 1
    run(settings)
    return 0
