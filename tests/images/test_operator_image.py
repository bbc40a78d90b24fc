"""The operator image, started from the operator chart's rendered Deployment.

No cluster is reachable from the container and no ServiceAccount token is mounted, as in a pod
whose credentials are missing: the operator must stop with a message saying so. Its helm and
the chart it renders for every ClipService are checked from inside the image, through the
variables the chart sets.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.support.containers import podman, run_pod_container
from tests.support.rendering import ROOT, Helm, only

pytestmark = [pytest.mark.images, pytest.mark.slow]


@pytest.fixture(scope="module")
def pod(helm: Helm) -> dict:
    text = helm.run(
        "template", "op", str(ROOT / "charts" / "clipserve-operator"), "-n", "clipserve-system"
    )
    objs = [o for o in yaml.safe_load_all(text) if o]
    return only(objs, "Deployment")["spec"]["template"]["spec"]


def test_the_build_tags_the_image_the_operator_chart_pulls_by_default(
    images: dict[str, str], pod: dict
) -> None:
    image = pod["containers"][0]["image"]
    assert image.startswith("ghcr.io/clipserve/clipserve-operator:")
    assert podman("image", "exists", image, check=False).returncode == 0, image


def test_the_bundled_helm_renders_the_bundled_chart_under_the_charts_security(
    images: dict[str, str], pod: dict
) -> None:
    pod = copy.deepcopy(pod)
    pod["containers"][0]["command"] = [
        "sh",
        "-c",
        '"$CLIPSERVE_OPERATOR_HELM" template probe "$CLIPSERVE_OPERATOR_CHART" '
        "--set model=ViT-B-32:random",
    ]
    with run_pod_container(images["operator"], pod) as c:
        code = c.wait_exit(timeout=120)
        logs = c.logs()
    assert code == 0, logs
    rendered = [o for o in yaml.safe_load_all(logs) if isinstance(o, dict)]
    deployment = only(rendered, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "ghcr.io/clipserve/clipserve:"
    )


def test_without_cluster_credentials_the_operator_stops_with_a_clear_message(
    images: dict[str, str], pod: dict
) -> None:
    with run_pod_container(images["operator"], pod) as c:
        code = c.wait_exit(timeout=120)
        logs = c.logs()
    assert code not in (0, None), logs
    assert "credentials" in logs.lower(), logs


def test_the_image_holds_the_operators_distribution_alone_without_torch(
    images: dict[str, str], pod: dict
) -> None:
    pod = copy.deepcopy(pod)
    pod["containers"][0]["command"] = [
        "python",
        "-c",
        "import importlib.metadata as m, importlib.util as u; "
        "print(sorted(d.metadata['Name'].lower() for d in m.distributions())); "
        "print([n for n in ('torch', 'open_clip', 'clipserve', 'litestar') if u.find_spec(n)])",
    ]
    with run_pod_container(images["operator"], pod) as c:
        code = c.wait_exit(timeout=120)
        logs = c.logs()
    assert code == 0, logs
    installed, importable = logs.strip().splitlines()[-2:]
    assert "'clipserve-operator'" in installed and "'kopf'" in installed, installed
    assert "'clipserve'" not in installed, installed
    assert importable == "[]", logs
