"""values.schema.json, enforced by the real helm: wrong types and impossible values fail."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from scripts import generate
from tests.support.rendering import CHART, Helm, HelmError

pytestmark = pytest.mark.helm


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicaCount": -1}, "replicaCount"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"dtype": "fp8"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"model": ""}, "model"),
        ({"model": "ViT-B-32"}, "model"),
        ({"model": "ViT-B-32:openai, RN50:openai"}, "model"),
        ({"gpu": {"count": -1}}, "gpu.count"),
        ({"gpu": {"count": 0.5}}, "gpu.count"),
        ({"batching": {"maxBatchSize": -4}}, "batching.maxBatchSize"),
        ({"batching": {"maxQueue": 0}}, "batching.maxQueue"),
        ({"embeddingCache": {"sizeMB": -1}}, "embeddingCache.sizeMB"),
        ({"service": {"port": 70000}}, "service.port"),
        ({"service": {"type": "ExternalName"}}, "service.type"),
        ({"slot": "Blue!"}, "slot"),
        ({"modelCache": {"type": "hostPath"}}, "modelCache.type"),
        ({"modelCache": {"type": "existingClaim"}}, "modelCache.existingClaim"),
        ({"modelCache": {"size": "ten gigs"}}, "modelCache.size"),
        ({"modelCache": {"type": "image"}}, "modelCache.image.reference"),
        (
            {"modelCache": {"type": "image", "image": {"reference": ""}}},
            "modelCache.image.reference",
        ),
        ({"modelCache": {"readOnly": True}}, "modelCache.readOnly"),  # an emptyDir starts empty
        ({"offline": "yes"}, "offline"),
        ({"autoscaling": {"minReplicas": 0}}, "autoscaling.minReplicas"),
        ({"keda": {"prometheus": {"threshold": 0}}}, "keda.prometheus.threshold"),
        ({"drain": {"graceSeconds": -5}}, "drain.graceSeconds"),
        ({"serviceMonitor": {"interval": "15 seconds"}}, "serviceMonitor.interval"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        ({"nodeSelector": {"pool": 1}}, "nodeSelector.pool"),
        ({"replicas": 2}, "replicas"),  # a typo for replicaCount
        ({"gpu": {"cout": 1}}, "cout"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_should_reject_values_if_they_break_the_schema(
    helm: Helm, values: dict, field: str
) -> None:
    with pytest.raises(HelmError) as err:
        helm.template(values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert re.search(re.escape(field), str(err.value)), str(err.value)


@pytest.mark.parametrize(
    "values",
    [
        {"model": "ViT-B-32:openai,ViT-L-14:openai"},
        {"model": "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"},
        {"model": "ViT-B-32:/weights/finetuned.pt"},
        {"device": "cuda:1", "dtype": "bf16"},
        {"replicaCount": 0},
        {"podDisruptionBudget": {"minAvailable": "50%"}},
        {"terminationGracePeriodSeconds": 90},
    ],
    ids=lambda v: json.dumps(v),
)
def test_should_accept_values_if_they_are_valid(helm: Helm, values: dict) -> None:
    assert helm.template(values)


def key_lines(lines: list[str]) -> dict[str, int]:
    """Dotted path of every mapping key in values.yaml -> its line number."""
    stack: list[tuple[int, str]] = []
    found: dict[str, int] = {}
    for n, line in enumerate(lines):
        key = re.match(r"^(\s*)([A-Za-z][\w]*):(\s|$)", line)
        if not key:
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(2)))
        found.setdefault(".".join(k for _, k in stack), n)
    return found


def test_should_document_every_value_if_values_yaml_changes() -> None:
    # helm-docs convention: every value has a `# --` comment block above it; a documented map
    # (e.g. resources) documents its content, an undocumented one needs docs on each key.
    lines = (CHART / "values.yaml").read_text().splitlines()
    where = key_lines(lines)

    def documented(path: str) -> bool:
        n = where[path] - 1
        while n >= 0 and lines[n].lstrip().startswith("#") and "# --" not in lines[n]:
            n -= 1
        return n >= 0 and "# --" in lines[n]

    def undocumented(node: dict, path: str) -> list[str]:
        out = []
        for key, value in node.items():
            if documented(path + key):
                continue
            if isinstance(value, dict) and value:
                out += undocumented(value, f"{path}{key}.")
            else:
                out.append(path + key)
        return out

    assert undocumented(yaml.safe_load("\n".join(lines)), "") == []


def test_should_describe_every_value_in_the_schema_if_values_yaml_changes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, props: dict, path: str) -> list[str]:
        missing = []
        for key, value in node.items():
            if key not in props:
                missing.append(path + key)
            elif isinstance(value, dict) and "properties" in props[key]:
                missing += walk(value, props[key]["properties"], f"{path}{key}.")
        return missing

    assert walk(values, schema["properties"], "") == []


def test_should_keep_the_readme_values_table_current_if_values_change() -> None:
    problems = generate.stale([generate.tables.CHART_VALUES])
    assert not problems, "\n".join(problems)
