"""The Grafana dashboard: one source, sound structure, and every panel live against a real
Prometheus scraping a real clipserve process."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from clipserve.metrics import Metrics
from PIL import Image

from scripts import generate
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.rendering import CHART, install_tool
from tests.support.server import TINY, Server, free_port, start_server

DASHBOARD = CHART / "dashboards" / "clipserve.json"
NAMESPACE = "clipserve-test"
NAME = re.compile(r"\b((?:clipserve|process)_[a-z_]+)\b")
SUFFIXES = ("_bucket", "_sum", "_count")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict, dict]]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel, target


def test_should_keep_one_dashboard_if_the_manifest_copy_exists() -> None:
    # manifests/grafana/ serves users without Helm; it must be byte-identical to the chart's.
    problems = generate.stale([generate.manifests.DASHBOARD_COPY])
    assert not problems, "\n".join(problems)


def test_should_filter_every_query_by_the_template_variables_if_panels_change() -> None:
    dashboard = load()
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "instance", "model"} <= variables
    for panel, target in targets(dashboard):
        assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert "$namespace" in target["expr"] and "$instance" in target["expr"], panel["title"]


def test_should_have_unique_panel_ids_and_a_stable_uid_if_panels_change() -> None:
    dashboard = load()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "clipserve"


def test_should_chart_every_metric_the_service_exports_if_metrics_change() -> None:
    exported = {m.name for m in Metrics().registry.collect() if m.name.startswith("clipserve_")}
    used = {
        n.removesuffix(s)
        for n in NAME.findall(DASHBOARD.read_text())
        for s in SUFFIXES
        if n.endswith(s)
    } | set(NAME.findall(DASHBOARD.read_text()))
    # Counters are collected without their _total suffix.
    used |= {n.removesuffix("_total") for n in used}
    assert exported - used == set()


# --- live: real Prometheus scraping a real clipserve ---------------------------------------


@dataclass
class Prometheus:
    """A prometheus process on a loopback port with its own config and storage."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def query(self, expr: str) -> dict[str, Any]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]

    def label_values(self, label: str, match: str) -> list[str]:
        body = httpx.get(
            f"{self.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10
        ).json()
        assert body["status"] == "success", (label, match, body)
        return body["data"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for(condition: Any, what: str, timeout: float = 90) -> None:
    """Poll until `condition()` is truthy, Prometheus refusing connections counting as not yet."""
    eventually(condition, what, timeout, not_yet=(httpx.TransportError,))


def start_prometheus(binary: str, target: str, workdir: Path) -> Prometheus:
    """Scrape `target` every second, labelled as a ServiceMonitor-discovered pod would be."""
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {  # JSON is YAML
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "clip-clipserve",
                        "static_configs": [
                            {"targets": [target], "labels": {"namespace": NAMESPACE}}
                        ],
                    }
                ],
            }
        )
    )
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()
        return httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200

    wait_for(ready, "prometheus to start")
    return prom


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), color).save(buf, format="PNG")
    return buf.getvalue()


def png_b64(color: tuple[int, int, int]) -> str:
    return base64.b64encode(png_bytes(color)).decode()


def put_load(server: Server, origin: Origin, rounds: int = 20) -> int:
    """Encode texts and images (inline and fetched by URL), a caption the cache already holds,
    rank, and send one bad request per round; returns the item count."""
    items = 0
    with server.client() as client:
        for n in range(rounds):
            image = {"img_blob": png_b64((n * 10 % 256, 40, 90))}
            path = f"/load-{n}.png"
            origin.add(
                path, png_bytes((40, n * 10 % 256, 90)), headers={"Content-Type": "image/png"}
            )
            fetched = {"img_uri": origin.url(path)}
            texts = [{"text": f"a photo of thing {n} and {k}"} for k in range(3)]
            repeated = {"text": "the same caption every round"}
            body = [*texts, image, fetched, repeated]
            assert client.post("/encode", json=body).status_code == 200
            rank = {"queries": [image], "candidates": texts}
            assert client.post("/rank", json=rank).status_code == 200
            assert client.post("/encode", json=[{"txt": "typo"}]).status_code == 400
            items += len(body) + 1 + 3
    return items


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Prometheus, Server]]:
    """A loaded clipserve process and a Prometheus that has scraped it (both stopped after)."""
    binary = install_tool("install-prometheus.sh")
    origin = Origin()
    server = start_server("--fetch-allow", "127.0.0.1", model=TINY)
    workdir = Path(tempfile.mkdtemp(prefix="clipserve-prom-"))
    prom = None
    try:
        prom = start_prometheus(binary, server.url.removeprefix("http://"), workdir)
        wait_for(lambda: prom.query('up{job="clip-clipserve"} == 1')["result"], "first scrape")
        # Counters with labels appear on first use: let a scrape see them before the load, or a
        # load that ends within one scrape interval leaves rate() with no increase to show.
        items = put_load(server, origin, rounds=1)
        wait_for(
            lambda: prom.query("sum(clipserve_items_total) > 0")["result"],
            "the first items to be scraped",
        )
        items += put_load(server, origin)
        # rate() needs two samples that include the load: wait until a scrape has seen it all
        # (every item is either embedded or found in the cache).
        seen = "sum(clipserve_items_total) + sum(clipserve_cache_hits_total)"
        wait_for(
            lambda: (
                float((prom.query(seen)["result"] or [{"value": [0, "0"]}])[0]["value"][1]) >= items
                and prom.query("clipserve_ready == 1")["result"]
            ),
            "the load to be scraped",
        )
        wait_for(
            lambda: prom.query("sum(rate(clipserve_items_total[1m])) > 0")["result"],
            "a rate over the load",
        )
        yield prom, server
    finally:
        if prom:
            prom.stop()
        server.stop()
        origin.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def promql_regex(value: str) -> str:
    """A literal as Grafana puts it into a PromQL regex matcher (escaped, inside a string)."""
    return re.escape(value).replace("\\", "\\\\")


def substitute(expr: str, instance: str) -> str:
    """What Grafana sends for one selected namespace, instance and model."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$namespace", promql_regex(NAMESPACE))
        .replace("$instance", promql_regex(instance))
        .replace("$model", promql_regex(TINY))
    )


@pytest.mark.prometheus
@pytest.mark.slow
def test_should_return_data_for_every_panel_if_prometheus_scrapes_a_loaded_service(
    live: tuple[Prometheus, Server],
) -> None:
    prom, server = live
    instance = server.url.removeprefix("http://")
    empty_panels = []
    for panel in load()["panels"]:
        results = [
            prom.query(substitute(t["expr"], instance))["result"] for t in panel["targets"]
        ]  # query() asserts each evaluates without error
        if not any(results):
            empty_panels.append(panel["title"])
    assert empty_panels == []


@pytest.mark.prometheus
@pytest.mark.slow
def test_should_show_every_stage_and_the_cache_if_items_are_fetched_decoded_and_repeated(
    live: tuple[Prometheus, Server],
) -> None:
    prom, server = live
    instance = server.url.removeprefix("http://")
    panels = [p for p in load()["panels"] if "time goes" in p["title"] or "cache" in p["title"]]
    assert len(panels) == 4
    empty = [
        (panel["title"], target["legendFormat"])
        for panel in panels
        for target in panel["targets"]
        if not prom.query(substitute(target["expr"], instance))["result"]
    ]
    assert empty == []
    hit_ratio = next(p for p in panels if "hit ratio" in p["title"])["targets"][0]["expr"]
    ratios = prom.query(substitute(hit_ratio, instance))["result"]
    assert any(float(r["value"][1]) > 0 for r in ratios)  # the repeated caption was a hit


@pytest.mark.prometheus
@pytest.mark.slow
def test_should_offer_the_live_values_if_template_variables_are_queried(
    live: tuple[Prometheus, Server],
) -> None:
    prom, server = live
    instance = server.url.removeprefix("http://")
    expected = {"namespace": NAMESPACE, "instance": instance, "model": TINY}
    for var in load()["templating"]["list"]:
        if var["type"] != "query":
            continue
        call = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert call, var["query"]["query"]
        match = substitute(call.group(1), instance)
        assert expected[var["name"]] in prom.label_values(call.group(2), match)


@pytest.mark.prometheus
@pytest.mark.slow
def test_should_only_use_metric_names_the_service_exposes_if_scraped(
    live: tuple[Prometheus, Server],
) -> None:
    _, server = live
    text = httpx.get(server.url + "/metrics", timeout=10).text
    families = set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    samples = set(re.findall(r"^([a-zA-Z_:][\w:]*)", text, re.MULTILINE))
    for name in set(NAME.findall(DASHBOARD.read_text())):
        base = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
        # A labelled family with no sample yet (GPU memory on CPU) still has its # TYPE line.
        assert name in samples or name in families or base in families, name
