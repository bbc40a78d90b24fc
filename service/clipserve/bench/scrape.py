"""A /metrics page, parsed: the one Prometheus text reader of the bench, the tests and scripts."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class MetricsPage:
    """The samples of one scrape, summed over the labels a question leaves open."""

    def __init__(self, text: str) -> None:
        self.samples: list[Sample] = [
            s for family in text_string_to_metric_families(text) for s in family.samples
        ]

    @classmethod
    def get(cls, url: str, headers: Mapping[str, str] | None = None) -> MetricsPage:
        """Scrape `url`/metrics now."""
        r = httpx.get(url.rstrip("/") + "/metrics", headers=dict(headers or {}), timeout=30)
        return cls(r.raise_for_status().text)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` (e.g. `clipserve_items_total`) whose labels
        include `labels`; 0 when there are none (labelled series appear on first use)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by(self, label: str, name: str) -> dict[str, float]:
        """The samples called `name`, summed per value of `label`."""
        out: dict[str, float] = {}
        for s in self.samples:
            if s.name == name and label in s.labels:
                out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
        return out
