"""Tracing: the OTEL_* settings checked at start-up, nothing loaded when off, and real servers
exporting to a real OpenTelemetry Collector (OTLP/HTTP in, its file exporter's JSON read back):
one trace per request, the spans of each stage, the caller's traceparent, batch links."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from clipserve import tracing_config
from clipserve.bench.server import start_server as launch
from clipserve.tracing import OFF

from tests.support.collector import Collector, Span
from tests.support.imports import modules_loaded_by
from tests.support.origin import Origin
from tests.support.pictures import png_bytes
from tests.support.server import MODEL_CONFIGS, TINY, Server, start_server

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
SERVER, INTERNAL = 2, 1  # OTLP SpanKind


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "otel-collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://:4318"}, "TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "10%"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=1,s3cr3t"}, "entry 2"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_by_name(env: dict[str, str], named: str):
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", **env}
    with pytest.raises(ValueError, match=named) as refused:
        tracing_config.from_env(environ)
    assert "s3cr3t" not in str(refused.value)


def test_no_endpoint_or_the_sdk_disabled_means_off():
    assert tracing_config.from_env(
        {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "nonsense"}
    ) is (OFF)
    disabled = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert tracing_config.from_env(disabled) is OFF


def test_a_broken_endpoint_stops_the_server_at_start_up():
    srv = launch(
        TINY,
        "--model-config-dir",
        str(MODEL_CONFIGS),
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "otel-collector:4318", "HF_HUB_OFFLINE": "1"},
        wait_ready=False,
    )
    assert srv.proc.wait(60) == 2
    assert "OTEL_EXPORTER_OTLP_ENDPOINT='otel-collector:4318' is not an http(s) URL" in srv.log()


# What tracing would load. (litestar imports `opentelemetry.semconv`'s attribute names whenever
# it is installed, looking for its own plugin: constants, not the API or the SDK.)
SDK = ("opentelemetry.trace", "opentelemetry.sdk", "opentelemetry.exporter", "clipserve.otel")
CREATE_APP = "m.create_app(__import__('clipserve.settings').settings.Settings())"


@pytest.mark.parametrize(("endpoint", "loaded"), [(None, []), ("http://c:4318", sorted(SDK))])
def test_opentelemetry_is_imported_only_when_an_endpoint_is_set(
    endpoint: str | None, loaded: list[str]
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    assert modules_loaded_by("clipserve.http.app", SDK, then=CREATE_APP, env=env) == loaded


# -- a real server, a real collector ---------------------------------------------------------


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    with Collector(tmp_path_factory.mktemp("collector")) as running:
        yield running


@pytest.fixture(scope="module")
def traced(collector: Collector) -> Iterator[Server]:
    """Every request traced; may fetch images from loopback (the origin)."""
    env = collector.env(OTEL_TRACES_SAMPLER="always_on", OTEL_SERVICE_NAME="clipserve-traced")
    srv = start_server("--fetch-allow", "127.0.0.1", "--cache-mb", "0", env=env)
    yield srv
    srv.stop()


def traces(spans: list[Span], service: str) -> dict[str, list[Span]]:
    by_trace: dict[str, list[Span]] = {}
    for s in spans:
        if s.resource.get("service.name") == service:
            by_trace.setdefault(s.trace_id, []).append(s)
    return by_trace


def trace_of(collector: Collector, trace_id: str, names: set[str]) -> list[Span]:
    """The spans of one trace once every name in `names` is among them."""
    spans = collector.wait_for_spans(
        lambda s: names <= {x.name for x in s if x.trace_id == trace_id}, f"trace {trace_id}"
    )
    return [s for s in spans if s.trace_id == trace_id]


@pytest.mark.collector
@pytest.mark.slow
def test_a_request_is_a_child_of_its_callers_trace_with_a_span_per_stage(
    collector: Collector, traced: Server
):
    with Origin() as origin:
        origin.add("/cat.png", png_bytes(), headers={"Content-Type": "image/png"})
        reply = httpx.post(
            traced.url + "/encode",
            json={"items": [{"text": "a cat"}, {"img_uri": origin.url("/cat.png")}]},
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            timeout=60,
        )
    assert reply.status_code == 200, reply.text
    spans = trace_of(collector, CALLER_TRACE, {"POST /encode", "fetch", "decode", "batch"})
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.name == "POST /encode" and request.parent_id == CALLER_SPAN
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/encode"
    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (fetch,) = by_name["fetch"]
    assert fetch.attributes["server.address"] == "127.0.0.1"
    assert len(by_name["decode"]) == 1
    # one text and one image: one queue and one batch each
    assert len(by_name["queue wait"]) == 2 and len(by_name["batch"]) == 2
    assert {b.attributes["clipserve.modality"] for b in by_name["batch"]} == {"text", "image"}
    for s in spans:
        if s is not request:
            assert s.parent_id == request.span_id, s
            assert s.kind == INTERNAL
    for batch in by_name["batch"]:
        assert batch.links == [(CALLER_TRACE, request.span_id)]


@pytest.mark.collector
@pytest.mark.slow
def test_each_request_is_one_trace_and_probes_are_none(collector: Collector, traced: Server):
    before = set(traces(collector.spans(), "clipserve-traced"))
    with traced.client() as client:
        for n in range(3):
            assert client.post("/encode", json={"items": [{"text": f"trace {n}"}]}).is_success
            assert client.get("/readyz").status_code == 200
        assert client.post("/encode", json={"items": []}).status_code == 400

    def four_new(spans: list[Span]) -> bool:
        new = {t: s for t, s in traces(spans, "clipserve-traced").items() if t not in before}
        return len(new) >= 4 and all(any(x.kind == SERVER for x in s) for s in new.values())

    spans = collector.wait_for_spans(four_new, "four new traces")
    new = {t: s for t, s in traces(spans, "clipserve-traced").items() if t not in before}
    assert len(new) == 4
    roots = sorted(
        (x.attributes["http.response.status_code"], x.name)
        for s in new.values()
        for x in s
        if x.kind == SERVER
    )
    assert roots == [(200, "POST /encode")] * 3 + [(400, "POST /encode")]
    for s in new.values():
        (root,) = [x for x in s if x.kind == SERVER]
        assert root.parent_id == ""  # no traceparent: a new trace
        # the refused request got no further than its server span
        assert len(s) == (1 if root.attributes["http.response.status_code"] == 400 else 3)


@pytest.mark.collector
@pytest.mark.slow
def test_a_batch_span_links_every_request_that_shared_the_batch(collector: Collector):
    # One worker and a batch of two that waits a minute to fill: two concurrent requests of
    # one text each share the first batch (until then, no batch's size is known).
    env = collector.env(OTEL_TRACES_SAMPLER="always_on", OTEL_SERVICE_NAME="clipserve-shared")
    srv = start_server(
        *("--compute-workers", "1", "--max-batch-size", "2", "--max-wait-ms", "60000"), env=env
    )
    try:
        ids = [f"{n:032x}" for n in (0xA1, 0xB2)]

        def call(trace_id: str) -> int:
            return httpx.post(
                srv.url + "/encode",
                json={"items": [{"text": f"shared {trace_id}"}]},
                headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"},
                timeout=120,
            ).status_code

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(call, ids)) == [200, 200]
    finally:
        srv.stop()
    spans = collector.wait_for_spans(
        lambda s: (
            sum(x.name == "POST /encode" and x.trace_id in ids for x in s) == 2
            and any(x.name == "batch" and x.trace_id in ids for x in s)
        ),
        "both requests and their batch",
    )
    requests = {x.trace_id: x for x in spans if x.name == "POST /encode" and x.trace_id in ids}
    (batch,) = [x for x in spans if x.name == "batch" and x.trace_id in ids]
    assert batch.attributes["clipserve.batch_size"] == 2
    assert batch.attributes["clipserve.requests"] == 2
    assert sorted(batch.links) == sorted((t, r.span_id) for t, r in requests.items())
    # it sits in one request's trace; each request has its own queue wait
    assert batch.parent_id in {r.span_id for r in requests.values()}
    waits = [x for x in spans if x.name == "queue wait" and x.trace_id in ids]
    assert sorted(w.parent_id for w in waits) == sorted(r.span_id for r in requests.values())


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.collector
@pytest.mark.slow
def test_nothing_is_exported_without_an_endpoint(tmp_path: Path):
    # The collector where the SDK would send by default (localhost:4318), the other OTEL_*
    # variables set: a server without an endpoint must still send nothing.
    if not _free(4318):
        pytest.skip("port 4318 (OTLP/HTTP's default) is taken here")
    with Collector(tmp_path, port=4318) as collector:
        quiet = start_server(
            env={"OTEL_SERVICE_NAME": "clipserve-quiet", "OTEL_TRACES_SAMPLER": "always_on"}
        )
        try:
            with quiet.client() as client:
                assert client.post("/encode", json={"items": [{"text": "untraced"}]}).is_success
        finally:
            assert quiet.stop() == 0  # a clean stop: anything buffered would be flushed now
        # A traced server's request to the same collector, seen: the first had its chance.
        loud = start_server(env=collector.env(OTEL_SERVICE_NAME="clipserve-loud"))
        try:
            with loud.client() as client:
                assert client.post("/encode", json={"items": [{"text": "traced"}]}).is_success
            spans = collector.wait_for_spans(
                lambda s: any(x.kind == SERVER for x in s), "the traced server's request"
            )
        finally:
            loud.stop()
    assert {s.resource["service.name"] for s in spans} == {"clipserve-loud"}
