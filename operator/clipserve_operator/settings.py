"""Operator configuration: one typed object, from flags over CLIPSERVE_OPERATOR_* variables.

Each field is declared once, with its documentation: `clipserve-operator --help`, the variables
and the README's operator table all come from these declarations (a test keeps the README true).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLIPSERVE_OPERATOR_"
# The chart the operator image bundles (operator/Dockerfile); a checkout renders its own.
BUNDLED_CHART = Path("/opt/clipserve/charts/clipserve")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def _default_chart() -> str:
    """The chart bundled in the image, else the one in this source tree."""
    if BUNDLED_CHART.is_dir():
        return str(BUNDLED_CHART)
    return str(Path(__file__).resolve().parents[2] / "charts" / "clipserve")


def _setting(
    doc: str, default: Any = MISSING, *, metavar: str = "", shown: str = "", factory: Any = MISSING
) -> Any:
    """A field with its documentation, its flag's metavar, and how a computed default is shown."""
    meta = {"doc": doc, "metavar": metavar, "shown": shown}
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Everything `clipserve-operator` can be told."""

    namespace: tuple[str, ...] = _setting(
        "Namespace to watch; repeat the flag or comma-separate for several. Unset: every "
        "namespace. Watching only some needs the operator's rules there only (the operator "
        "chart's `watchNamespaces` binds them per namespace).",
        (),
        metavar="NAME",
        shown="(every namespace)",
    )
    helm: str = _setting(
        "The helm 3 binary (3.8 or newer) that renders the chart; a bare name is looked up on "
        "PATH. From a checkout: `$(bash scripts/install-helm.sh | tail -1)`.",
        "helm",
        metavar="PATH",
    )
    chart: str = _setting(
        "Directory of the clipserve chart rendered for every ClipService.",
        factory=_default_chart,
        metavar="DIR",
        shown=f"{BUNDLED_CHART} in the image, else charts/clipserve of the checkout",
    )
    verbose: bool = _setting("Log every kopf handler call and watch event.", False)
    metrics_port: int = _setting(
        "Port of the operator's Prometheus /metrics (0: off).", 8080, metavar="PORT"
    )
    liveness: str = _setting(
        "Where kopf's liveness endpoint listens (a URL ending in the probe's path).",
        "http://0.0.0.0:8081/healthz",
        metavar="URL",
    )
    retry_delay_s: float = _setting(
        "Seconds before a reconcile is retried after a transient API error. A failure whose "
        "cause lies outside the ClipService (helm, RBAC, a missing kind) is retried after 6 "
        "times this, or half as long as it has lasted, up to 5 minutes.",
        5.0,
        metavar="SECONDS",
    )
    resync_s: float = _setting(
        "Reconcile every ClipService this often even without events, as a safety net (0: off).",
        300.0,
        metavar="SECONDS",
    )
    cluster_domain: str = _setting(
        "DNS suffix of the cluster, used in status.endpoint.", "cluster.local", metavar="DOMAIN"
    )
    values_allow: tuple[str, ...] = _setting(
        "Chart value paths (dotted, e.g. `keda.prometheus.serverAddress`) that a ClipService's "
        "`spec.values` may set besides the safe ones the README's Security section lists; a "
        "path allows everything below it. Each one hands every ClipService author what that "
        "value can do with the operator's rights: add only what they could do themselves.",
        (),
        metavar="PATH",
        shown="(none)",
    )

    def check(self) -> None:
        """Refuse values no run can use; ValueError names the flag and variable."""
        problems = {
            "namespace": next(
                (
                    f"{n!r} is not a namespace name"
                    for n in self.namespace
                    if not _DNS_LABEL.match(n)
                ),
                "",
            ),
            "metrics_port": "" if 0 <= self.metrics_port <= 65535 else "not a port (0-65535)",
            "retry_delay_s": "" if self.retry_delay_s > 0 else "must be above 0",
            "resync_s": "" if self.resync_s >= 0 else "must be 0 (off) or more",
            "values_allow": next(
                (
                    f"{p!r} is not a dotted value path"
                    for p in self.values_allow
                    if not _PATH.match(p)
                ),
                "",
            ),
        }
        for f in fields(self):
            if problems.get(f.name):
                raise ValueError(f"{flag_name(f)} ({env_name(f)}): {problems[f.name]}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from CLIPSERVE_OPERATOR_* variables over the defaults."""
        env = os.environ if env is None else env
        return cls(
            **{f.name: _parse(f, env[env_name(f)]) for f in fields(cls) if env_name(f) in env}
        )


def env_name(f: Field[Any]) -> str:
    """The CLIPSERVE_OPERATOR_* variable of a setting."""
    return ENV_PREFIX + f.name.upper()


def flag_name(f: Field[Any]) -> str:
    """The command-line flag of a setting."""
    return "--" + f.name.replace("_", "-")


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("1", "true", "yes", "on", "", "0", "false", "no", "off"):
        raise ValueError(raw)
    return value in ("1", "true", "yes", "on")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "tuple[str, ...]": _split,
    "bool": _bool,
    "int": int,
    "float": float,
    "str": str,
}


def _parse(f: Field[Any], raw: str) -> Any:
    """A variable's text as the setting's type; ValueError names the variable."""
    kind = _kind(f.name)
    try:
        return _PARSERS[kind](raw)
    except ValueError:
        raise ValueError(f"{env_name(f)}: {raw!r} is not a valid {kind}") from None


def _kind(name: str) -> str:
    """The declared type of a setting, as written (`from __future__ import annotations`)."""
    return str(Settings.__dataclass_fields__[name].type)


def _default(f: Field[Any]) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags leave the variable (or the default) in force."""
    for f in fields(Settings):
        kind, meta = _kind(f.name), f.metadata["metavar"] or None
        help_text = f"{f.metadata['doc']} [{env_name(f)}; default: {shown_default(f)}]"
        if kind == "bool":
            parser.add_argument(
                flag_name(f), dest=f.name, action="store_const", const=True, help=help_text
            )
        elif kind == "tuple[str, ...]":
            parser.add_argument(
                flag_name(f), dest=f.name, action="append", metavar=meta, help=help_text
            )
        else:
            parser.add_argument(
                flag_name(f), dest=f.name, type=_PARSERS[kind], metavar=meta, help=help_text
            )


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Flags over CLIPSERVE_OPERATOR_* variables over the defaults; ValueError names a bad one."""
    settings = Settings.from_env(env)
    overrides: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None)
        if isinstance(value, list):  # a repeated flag; each may itself be a comma list
            value = tuple(part for item in value for part in _split(item))
        if value is not None:
            overrides[f.name] = value
    return replace(settings, **overrides)


def shown_default(f: Field[Any]) -> str:
    """A setting's default as --help and the README show it."""
    if f.metadata["shown"]:
        return str(f.metadata["shown"])
    value = _default(f)
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The README's table of the operator's settings."""
    rows = ["| Flag | Variable | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        default = shown_default(f) if f.metadata["shown"] else f"`{shown_default(f)}`"
        doc = f.metadata["doc"].replace("|", "\\|")  # a pipe inside a cell ends it
        rows.append(f"| `{flag_name(f)}` | `{env_name(f)}` | {default} | {doc} |")
    return "\n".join(rows)
