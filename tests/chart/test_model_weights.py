"""The chart README's pre-pull Job, as a user copies it, fills the claim the chart mounts."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.support.rendering import CHART, Helm

K8S_VERSION = kubernetes_validate.utils.latest_version()


def prefetch_manifest() -> list[dict]:
    """The PVC and Job between the README's prefetch-job markers."""
    text = (CHART / "README.md").read_text()
    block = text.split("<!-- prefetch-job:start -->")[1].split("<!-- prefetch-job:end -->")[0]
    return [doc for doc in yaml.safe_load_all(block.split("```yaml")[1].split("```")[0]) if doc]


def test_should_be_valid_objects_if_the_readme_prefetch_job_is_applied() -> None:
    objs = prefetch_manifest()
    assert [o["kind"] for o in objs] == ["PersistentVolumeClaim", "Job"]
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_should_fill_the_claim_the_chart_mounts_if_the_readme_prefetch_job_runs(helm: Helm) -> None:
    claim, job = prefetch_manifest()
    objs = helm.template(
        {
            "modelCache": {
                "type": "existingClaim",
                "existingClaim": claim["metadata"]["name"],
                "readOnly": True,
            }
        }
    )
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    job_pod = job["spec"]["template"]["spec"]
    download = job_pod["containers"][0]
    # the same image, user and claim as the server; the cache where the server reads it
    assert download["image"] == server["image"]
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert job_pod["securityContext"][key] == pod["securityContext"][key]
    volumes = {v["name"]: v for v in job_pod["volumes"]}
    cache_mount = next(m for m in download["volumeMounts"] if m["name"] == "cache")
    claim_name = volumes["cache"]["persistentVolumeClaim"]["claimName"]
    assert claim_name == pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    env = {e["name"]: e["value"] for e in server["env"] if "value" in e}
    command = download["command"]
    assert command[:2] == ["clipserve", "download"]
    assert command[command.index("--cache-dir") + 1] == cache_mount["mountPath"]
    assert cache_mount["mountPath"] == env["CLIPSERVE_CACHE_DIR"]
    assert env["CLIPSERVE_OFFLINE"] == "true"
