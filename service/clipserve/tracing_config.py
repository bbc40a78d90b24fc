"""Tracing's configuration: OpenTelemetry's own OTEL_* variables (read by its SDK, not
mirrored as CLIPSERVE_* settings), checked before start-up, and the README's table of them.

A configured but broken setting (an endpoint that is no URL, an unknown sampler) stops start-up
with its name: the SDK would warn and go on, and traces that silently go nowhere look like no
traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from clipserve.redact import redact
from clipserve.tracing import OFF, Tracing

TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# The variables the service reads: name, default, meaning. The README's table comes from this.
VARIABLES = (
    (
        ENDPOINT,
        "(unset)",
        "Turns tracing on: the collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318` "
        "(spans go to its `/v1/traces`). Unset: no tracing, and no cost.",
    ),
    (TRACES_ENDPOINT, "(unset)", f"Turns tracing on too: the full traces URL, over {ENDPOINT}."),
    (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "(none)",
        "Headers sent with every export, `key=value,...` (a collector's API key).",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "`http/protobuf`",
        "The only protocol built in; another value stops start-up.",
    ),
    ("OTEL_SERVICE_NAME", "`clipserve`", "The `service.name` of the spans."),
    ("OTEL_RESOURCE_ATTRIBUTES", "(none)", "More resource attributes, `key=value,...`."),
    (
        "OTEL_TRACES_SAMPLER",
        "`parentbased_always_on`",
        "Which requests are traced: " + ", ".join(f"`{s}`" for s in SAMPLERS) + ".",
    ),
    (
        "OTEL_TRACES_SAMPLER_ARG",
        "`1.0`",
        "The ratio of the `*traceidratio` samplers, 0 to 1 (e.g. `0.1`).",
    ),
    (
        "OTEL_PROPAGATORS",
        "`tracecontext,baggage`",
        "How a caller's context is read: the W3C `traceparent` header by default.",
    ),
    ("OTEL_BSP_SCHEDULE_DELAY", "`5000`", "Milliseconds between exports of finished spans."),
    ("OTEL_SDK_DISABLED", "`false`", "`true`: no tracing, whatever else is set."),
)


def from_env(environ: Mapping[str, str]) -> Tracing:
    """Tracing as the OTEL_* variables configure it: OFF unless an endpoint is set; ValueError
    naming the variable for a setting the SDK would otherwise ignore with a warning."""
    endpoint_var = next((v for v in (TRACES_ENDPOINT, ENDPOINT) if environ.get(v, "").strip()), "")
    if not endpoint_var or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OFF
    check(environ, endpoint_var)
    from clipserve.otel import OtelTracing  # only now: importing the SDK costs ~0.1 s

    return OtelTracing()


def check(environ: Mapping[str, str], endpoint_var: str) -> None:
    """ValueError for the first OTEL_* setting that cannot work."""
    endpoint = environ[endpoint_var].strip()
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018  # raises ValueError for a port that is no number or too big
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{endpoint_var}={redact(endpoint)!r} is not an http(s) URL with a host (e.g. "
            "http://otel-collector:4318); unset it to serve without tracing"
        ) from None
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if environ.get(var, "http/protobuf").strip() != "http/protobuf":
            raise ValueError(f"{var}={environ[var]!r}: only http/protobuf is built in")
    sampler = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={sampler!r} is not one of {', '.join(SAMPLERS)}")
    if sampler.endswith("traceidratio") and "OTEL_TRACES_SAMPLER_ARG" in environ:
        arg = environ["OTEL_TRACES_SAMPLER_ARG"]
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a ratio from 0 to 1")
    headers = environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    for i, pair in enumerate(p.strip() for p in headers.split(",") if p.strip()):
        if not pair.split("=", 1)[0].strip() or "=" not in pair:  # its value is not shown: a key
            raise ValueError(f"OTEL_EXPORTER_OTLP_HEADERS: entry {i + 1} is not key=value")


def markdown_table() -> str:
    """The README's table of the OTEL_* variables."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | {default} | {meaning} |" for name, default, meaning in VARIABLES]
    return "\n".join(rows)
