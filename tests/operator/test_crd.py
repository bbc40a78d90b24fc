"""The ClipService CRD: one source, structural with descriptions, bundled by the operator chart."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from clipserve_operator.constants import CRD_REVISION, CRD_REVISION_ANNOTATION

from scripts import generate

REPO = Path(__file__).resolve().parents[2]
CHART_CRD = REPO / "charts/clipserve-operator/crds/clipservices.yaml"
SCHEMA_KEYS = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "enum",
    "default",
    "minimum",
    "maximum",
    "maxLength",
    "format",
    "pattern",
    "additionalProperties",
    "anyOf",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string",
}


def _version() -> dict[str, Any]:
    return yaml.safe_load(CHART_CRD.read_text())["spec"]["versions"][0]


def test_crd_has_one_source() -> None:
    problems = generate.stale([generate.manifests.CRD_COPY])
    assert not problems, "\n".join(problems)


def _walk(node: dict[str, Any], path: str, out: list[str]) -> None:
    out.extend(f"{path}: unknown key {k}" for k in node if k not in SCHEMA_KEYS)
    if path.count(".") >= 2 and "description" not in node and not path.endswith("[]"):
        out.append(f"{path}: no description")
    for name, sub in (node.get("properties") or {}).items():
        _walk(sub, f"{path}.{name}", out)


def test_spec_and_status_fields_are_declared_and_described() -> None:
    problems: list[str] = []
    schema = _version()["schema"]["openAPIV3Schema"]
    for top in ("spec", "status"):
        _walk(schema["properties"][top], f".{top}", problems)
    # Condition items follow metav1.Condition and are documented there.
    assert [p for p in problems if ".conditions." not in p] == []


def test_scale_subresource_printer_columns_and_short_name() -> None:
    crd = yaml.safe_load(CHART_CRD.read_text())
    assert "clip" in crd["spec"]["names"]["shortNames"]
    version = _version()
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "status" in version["subresources"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Model", "Ready", "Replicas", "Device", "Space", "Endpoint", "Age"]
    wide = {c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")}
    assert wide == {"Space"}  # a 71-character digest: `kubectl get clip -o wide`


@pytest.mark.helm
def test_operator_chart_installs_the_crd_and_a_least_privilege_role(helm_bin: str) -> None:
    out = subprocess.run(
        [
            helm_bin,
            "template",
            "op",
            str(REPO / "charts/clipserve-operator"),
            "-n",
            "ops",
            "--include-crds",
            "--set",
            "serviceMonitor.enabled=true",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    assert docs[("CustomResourceDefinition", "clipservices.clipserve.io")] == yaml.safe_load(
        CHART_CRD.read_text()
    )
    deployment = docs[("Deployment", "op-clipserve-operator")]
    assert (
        deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    rules = docs[("ClusterRole", "op-clipserve-operator")]["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"secrets", "roles", "rolebindings", "clusterroles"} & set(rule["resources"])
    crd_rules = [r for r in rules if r["apiGroups"] == ["clipserve.io"]]
    # spec is the user's: never written
    assert crd_rules[0]["resources"] == ["clipservices", "clipjobs"]
    assert crd_rules[0]["verbs"] == ["get", "list", "watch"]
    assert {"clipjobs/status"} <= {r for rule in crd_rules for r in rule["resources"]}
    job_crd = yaml.safe_load((REPO / "charts/clipserve-operator/crds/clipjobs.yaml").read_text())
    assert docs[("CustomResourceDefinition", "clipjobs.clipserve.io")] == job_crd
    assert ("Service", "op-clipserve-operator-metrics") in docs
    assert ("ServiceMonitor", "op-clipserve-operator") in docs


@pytest.mark.helm
def test_plain_manifests_are_generated_from_the_operator_chart() -> None:
    problems = generate.stale(generate.manifests.RENDERED)
    assert not problems, "\n".join(problems)


def test_crd_carries_the_revision_the_operator_checks_at_start_up() -> None:
    crd = yaml.safe_load(CHART_CRD.read_text())
    assert crd["metadata"]["annotations"][CRD_REVISION_ANNOTATION] == CRD_REVISION


def _render_operator_chart(helm_bin: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm_bin, "template", "op", str(REPO / "charts/clipserve-operator"), "-n", "ops", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.helm
def test_watch_namespaces_binds_the_rules_only_in_those_namespaces(helm_bin: str) -> None:
    docs = _render_operator_chart(helm_bin, "--set", "watchNamespaces={ml,search}")
    bindings = {(d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"])
                for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")}  # fmt: skip
    assert bindings == {
        ("RoleBinding", "ml", "op-clipserve-operator"),
        ("RoleBinding", "search", "op-clipserve-operator"),
        # The two CRDs' reads for the start-up check is cluster-scoped, so bound cluster-wide.
        ("ClusterRoleBinding", None, "op-clipserve-operator-crd"),
    }
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CLIPSERVE_OPERATOR_NAMESPACE"] == "ml,search"
    crd_role = next(d for d in docs if d["metadata"]["name"] == "op-clipserve-operator-crd")
    assert crd_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["clipservices.clipserve.io", "clipjobs.clipserve.io"],
            "verbs": ["get"],
        }
    ]


@pytest.mark.helm
def test_without_watch_namespaces_the_rules_are_bound_cluster_wide(helm_bin: str) -> None:
    docs = _render_operator_chart(helm_bin)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ClusterRoleBinding", "op-clipserve-operator") in kinds
    assert not any(d["kind"] == "RoleBinding" for d in docs)
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert "CLIPSERVE_OPERATOR_NAMESPACE" not in {e["name"] for e in container["env"]}


def test_the_clipjob_crd_is_generated_from_the_clipservice_fields_it_shares() -> None:
    problems = generate.stale([*generate.clipjob_crd.ARTEFACTS, generate.manifests.JOB_CRD_COPY])
    assert not problems, "\n".join(problems)
    job = yaml.safe_load((REPO / "charts/clipserve-operator/crds/clipjobs.yaml").read_text())
    version = job["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    service = _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for shared in ("gpu", "nodePool", "resources", "image"):
        assert spec[shared] == service[shared], shared
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Model", "Phase", "Progress", "Rate", "Space", "Age",
    ]  # fmt: skip
    # the space digest is long: `kubectl get clipjob -o wide` only
    assert [c.get("priority", 0) for c in version["additionalPrinterColumns"]] == [0] * 4 + [1, 0]
    assert job["metadata"]["annotations"][CRD_REVISION_ANNOTATION] == CRD_REVISION
    problems_found: list[str] = []
    for top in ("spec", "status"):
        _walk(version["schema"]["openAPIV3Schema"]["properties"][top], top, problems_found)
    assert not problems_found, problems_found
