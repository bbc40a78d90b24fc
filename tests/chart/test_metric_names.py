"""What autoscaling reads comes from clipserve's own metric names and exists on real processes.

charts/clipserve/metrics.json and manifests/metrics/prometheus-adapter.yaml are generated from
clipserve.metrics by scripts/generate/metrics.py (`make generate`); every series the chart's
HPA, its KEDA ScaledObject and the adapter's rules name is looked up on a real `clipserve serve`
process (or, for scale to zero's wake-up query, a real `clipserve gate`).
"""

from __future__ import annotations

import re

import httpx
import pytest
import yaml
from clipserve.metrics import GATE_OUTCOMES
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from scripts import generate
from tests.support.gate import GateProcess
from tests.support.rendering import ROOT, Helm, only
from tests.support.server import TINY, start_server

# A metric name inside PromQL or an adapter rule (label names and values are not followed by
# a name character and an opening brace or the end of the selector).
SERIES = re.compile(r"\b(clipserve_[a-z_]+)\s*(?:\{|$|\))")


def adapter_config() -> dict:
    """The prometheus-adapter config inside manifests/metrics/prometheus-adapter.yaml."""
    docs = yaml.safe_load_all((ROOT / "manifests/metrics/prometheus-adapter.yaml").read_text())
    config_map = next(d for d in docs if d and d["kind"] == "ConfigMap")
    return yaml.safe_load(config_map["data"]["config.yaml"])


def series_read_by_autoscaling(helm: Helm) -> dict[str, set[str]]:
    """Every series name, by who reads it: the HPA, KEDA's queries, the adapter's rules.

    "KEDA wake-up query" reads the gate's series (scale to zero); the others the server's.
    """
    hpa = only(
        helm.template({"autoscaling": {"enabled": True, "queueDepthPerPod": 8}}),
        "HorizontalPodAutoscaler",
    )
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if "pods" in m}
    gated = {"keda": {"enabled": True, "minReplicas": 0}}
    queries = [
        trigger["metadata"]["query"]
        for values in (gated, {**gated, "slot": "blue"})
        for trigger in only(helm.template(values), "ScaledObject")["spec"]["triggers"]
    ]
    rules = adapter_config()["rules"]
    return {
        "HPA Pods metric": pods_metrics,
        "KEDA query": {n for q in queries if '-gate"' not in q for n in SERIES.findall(q)},
        "KEDA wake-up query": {n for q in queries if '-gate"' in q for n in SERIES.findall(q)},
        "adapter seriesQuery": {name for r in rules for name in SERIES.findall(r["seriesQuery"])},
        "adapter metric name": {r["name"]["as"] for r in rules},
    }


def exported(url: str) -> list[Sample]:
    """Every sample of a process's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_should_keep_the_generated_files_current_if_the_server_renames_a_metric() -> None:
    problems = generate.stale(generate.metrics.ARTEFACTS)
    assert not problems, "\n".join(problems)


@pytest.mark.helm
@pytest.mark.slow
def test_should_export_every_series_autoscaling_reads_if_nothing_was_served_yet(
    helm: Helm,
) -> None:
    wanted = series_read_by_autoscaling(helm)
    assert all(wanted.values()), wanted  # each reader names at least one series
    server = start_server(model=TINY)
    gate = GateProcess(server.url)
    try:
        # Before any request: the HPA reads idle pods too, and a missing series stops it; KEDA
        # must see the gate's first request as an increase from 0.
        samples = {"server": exported(server.url), "gate": exported(gate.url)}
    finally:
        gate.stop()
        server.stop()
    for reader, names in wanted.items():
        process = "gate" if reader == "KEDA wake-up query" else "server"
        have = {s.name for s in samples[process]}
        assert names <= have, (
            f"{reader} reads {sorted(names - have)}, not exported by the {process}"
        )
    depth = {
        (s.labels["model"], s.labels["modality"]): s.value
        for s in samples["server"]
        if s.name in wanted["HPA Pods metric"]
    }
    assert depth == {(TINY, "text"): 0.0, (TINY, "image"): 0.0}
    woken = {
        s.labels["outcome"]: s.value
        for s in samples["gate"]
        if s.name in wanted["KEDA wake-up query"]
    }
    assert woken == dict.fromkeys(GATE_OUTCOMES, 0.0)
