"""The operator's Prometheus metrics, on a registry of their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class Metrics:
    """Reconcile counters and durations (names clipserve_operator_*)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconciles = Counter(
            "clipserve_operator_reconciles_total",
            "Reconciles finished, by result (ok|error).",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "clipserve_operator_reconcile_errors_total",
            "Failed reconciles, by kind (temporary: retried soon; permanent: waits for a change, "
            "or retried slowly when the cause is outside the ClipService; unexpected: a bug) and "
            "reason (the ClipService's Degraded reason, e.g. RenderFailed, Forbidden).",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "clipserve_operator_reconcile_duration_seconds",
            "Time of one reconcile.",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.swaps = Counter(
            "clipserve_operator_swaps_total",
            "Model swaps, by step (started|completed).",
            ["step"],
            registry=self.registry,
        )
