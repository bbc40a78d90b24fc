"""Every Prometheus metric clipserve exports, on a per-app registry (tests run several apps)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# Power-of-two buckets: batch sizes are what the batcher forms, so these show its behaviour.
BATCH_BUCKETS = tuple(float(2**i) for i in range(9))  # 1 .. 256
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The series autoscaling reads, by its exported name. The chart's names file
# (charts/clipserve/metrics.json) and the prometheus-adapter rules (manifests/metrics/) are
# generated from it by scripts/generate/metrics.py (`make generate`); a test finds it on a real
# server.
QUEUE_DEPTH = "clipserve_queue_depth"
# Requests `clipserve gate` saw, by outcome: KEDA wakes a service scaled to zero on the rate of
# the authorized ones (GATE_WAKING: proxied, answered 503 while none is ready, failed, or given up
# by their client), never on requests without a valid key (401 here, or a page passed on keyless).
GATE_REQUESTS = "clipserve_gate_requests_total"
GATE_WAKING = ("proxied", "unavailable", "error", "cancelled")
GATE_OUTCOMES = (*GATE_WAKING, "unauthorized", "page")
# Why a model's batcher is out of service (clipserve_batcher_failed): its device failed
# (faults.py), or a compute thread died.
FAILURE_REASONS = ("device_error", "worker_died")


class Metrics:
    """The service's collectors; label values stay low-cardinality (model, modality, endpoint)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "clipserve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "clipserve_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items = Counter("clipserve_items", "Items embedded", ["model", "modality"], registry=r)
        self.batch_size = Histogram(
            "clipserve_batch_size",
            "Items per forward pass",
            ["model", "modality"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            QUEUE_DEPTH,
            "Items waiting for a forward pass",
            ["model", "modality"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "clipserve_queue_wait_seconds",
            "Time an item waited before its forward pass",
            ["model", "modality"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "clipserve_compute_seconds",
            "Duration of one forward pass",
            ["model", "modality"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fetch = Histogram(
            "clipserve_fetch_seconds",
            "Time to download one img_uri (first byte to last, redirects included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "clipserve_decode_seconds",
            "Time to decode and resize one image (base64 included), in the preprocessing pool",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "clipserve_cache_hits",
            "Items whose embedding came from the cache",
            ["model", "modality"],
            registry=r,
        )
        self.cache_misses = Counter(
            "clipserve_cache_misses",
            "Items looked up in the cache and computed",
            ["model", "modality"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "clipserve_cache_evictions", "Embeddings dropped to stay in budget", registry=r
        )
        self.cache_bytes = Gauge(
            "clipserve_cache_bytes", "Bytes the embedding cache holds", registry=r
        )
        self.cache_capacity = Gauge(
            "clipserve_cache_capacity_bytes", "The embedding cache's budget", registry=r
        )
        self.item_errors = Counter(
            "clipserve_item_errors", "Items rejected or failed, by reason", ["reason"], registry=r
        )
        self.model_info = Gauge(
            "clipserve_model_info",
            "Loaded models (value 1)",
            ["model", "architecture", "pretrained", "device", "dtype"],
            registry=r,
        )
        self.gpu_memory = Gauge(
            "clipserve_gpu_memory_allocated_bytes",
            "GPU memory allocated by torch",
            ["device"],
            registry=r,
        )
        self.ready = Gauge("clipserve_ready", "1 while /readyz answers 200", registry=r)
        self.batcher_failed = Gauge(
            "clipserve_batcher_failed",
            "1 once a model is out of service (liveness fails, the pod restarts), by reason",
            ["model", "reason"],
            registry=r,
        )

    def render(self, *, ready: bool, gpu_memory: Mapping[str, int]) -> bytes:
        """The exposition text for /metrics, with the gauges sampled at scrape time."""
        self.ready.set(1 if ready else 0)
        for device, allocated in gpu_memory.items():
            self.gpu_memory.labels(device).set(allocated)
        return generate_latest(self.registry)


class GateMetrics:
    """`clipserve gate`'s own collectors (it serves no model)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            GATE_REQUESTS,
            "Requests in front of the servers: proxied, unavailable (no server ready: 503), "
            "error, cancelled (client gone), unauthorized (401), page (no key, never wakes)",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in GATE_OUTCOMES:
            # From 0, so that the first request after a quiet spell is an increase rate() sees.
            self.requests.labels(outcome)
        self.servers_reachable = Gauge(
            "clipserve_gate_servers_reachable",
            "1 while the servers' Service takes connections (requests are passed on), 0 while"
            " none does (requests get 503 + Retry-After)",
            registry=self.registry,
        )
