"""Tracing values: rendered as OpenTelemetry's own variables, which the service's own check
accepts; nothing when no endpoint is set; a malformed value refused by the schema."""

from __future__ import annotations

import pytest
from clipserve import tracing_config

from tests.support.rendering import CHART, Helm, HelmError, env

pytestmark = pytest.mark.helm

TRACING = CHART / "ci" / "tracing-values.yaml"


def test_should_render_no_otel_variable_if_no_endpoint_is_set(helm: Helm) -> None:
    rendered = env(helm.template({"tracing": {"sampler": "always_on", "samplerArg": "0.5"}}))
    assert not [name for name in rendered if name.startswith("OTEL_")]


def test_should_render_settings_the_service_accepts_if_an_endpoint_is_set(helm: Helm) -> None:
    rendered = env(helm.template(values_files=[TRACING]))
    assert rendered["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert rendered["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert rendered["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert rendered["OTEL_SERVICE_NAME"] == "clip-clipserve"  # the release's full name
    assert rendered["OTEL_EXPORTER_OTLP_HEADERS"] == {
        "secretKeyRef": {"name": "otel-collector-key", "key": "headers"}
    }
    # the pod's names reach the spans through the downward API
    attributes = rendered["OTEL_RESOURCE_ATTRIBUTES"]
    assert attributes == "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
    assert rendered["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    plain = {k: v for k, v in rendered.items() if isinstance(v, str)}
    plain["OTEL_EXPORTER_OTLP_HEADERS"] = "api-key=from-the-secret"
    tracing_config.check(plain, "OTEL_EXPORTER_OTLP_ENDPOINT")  # raises what start-up would


@pytest.mark.parametrize(
    "bad",
    [
        {"endpoint": "otel-collector:4318"},
        {"sampler": "sometimes"},
        {"samplerArg": "10%"},
        {"endpiont": "http://c:4318"},
    ],
)
def test_should_refuse_tracing_values_the_service_would_refuse(helm: Helm, bad: dict) -> None:
    with pytest.raises(HelmError, match="tracing"):
        helm.template({"tracing": bad})
