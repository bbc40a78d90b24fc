"""The charts' default images, built with podman (scripts/build-images.sh), in the real node."""

from __future__ import annotations

import subprocess

import yaml

from tests.support.cluster.harness import REPO
from tests.support.cluster.realnode import NodeError, RealNode

CHARTS = {"service": "clipserve", "operator": "clipserve-operator"}


def chart_image(chart: str) -> str:
    """The image a chart runs by default: values image.repository and the chart's appVersion."""
    values = yaml.safe_load((REPO / "charts" / chart / "values.yaml").read_text())
    meta = yaml.safe_load((REPO / "charts" / chart / "Chart.yaml").read_text())
    return f"{values['image']['repository']}:{meta['appVersion']}"


def import_chart_images(node: RealNode) -> list[str]:
    """Build the service and operator images (cached by their inputs) and import them."""
    built = subprocess.run(
        ["bash", str(REPO / "scripts/build-images.sh"), *CHARTS],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise NodeError(f"scripts/build-images.sh failed:\n{built.stderr[-4000:]}")
    images = built.stdout.split()[-len(CHARTS) :]
    want = [chart_image(chart) for chart in CHARTS.values()]
    if images != want:
        raise NodeError(f"scripts/build-images.sh built {images}, the charts run {want}")
    for image in images:
        node.import_podman_image(image, ["bash", str(REPO / "scripts/podman.sh")])
    return images
