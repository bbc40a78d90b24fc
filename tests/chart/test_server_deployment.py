"""The Deployment: GPU pools, probes against the real app's routes, security, cache, env, drain."""

from __future__ import annotations

import pytest
from clipserve.http.app import create_app
from clipserve.settings import ENV_PREFIX, Settings, from_env
from litestar import Litestar

from tests.support.rendering import (
    CHART,
    Helm,
    container,
    env,
    only,
    pod_spec,
)

pytestmark = pytest.mark.helm

GPU_POOL = CHART / "ci" / "gpu-pool-values.yaml"


@pytest.fixture(scope="module")
def app() -> Litestar:
    """The real service app (built, not started: no model is loaded)."""
    return create_app(Settings(model=("ViT-B-32:random",)))


@pytest.fixture(scope="module")
def default_objs(helm: Helm) -> list[dict]:
    return helm.template()


@pytest.fixture(scope="module")
def gpu_objs(helm: Helm) -> list[dict]:
    return helm.template(values_files=[GPU_POOL])


def get_paths(app: Litestar) -> set[str]:
    return {r.path for r in app.routes if "GET" in getattr(r, "methods", ())}


def test_should_probe_the_real_apps_health_routes_if_rendered(
    default_objs: list[dict], app: Litestar
) -> None:
    c = container(default_objs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Models load in the background: start-up is over when the pod is first ready.
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    probe_paths = {
        c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")
    }
    assert probe_paths <= get_paths(app)
    # Probes and scrapes must work when API keys are on.
    assert probe_paths | {"/metrics"} <= set(Settings().open_paths)


def test_should_expose_the_port_the_service_listens_on_if_rendered(
    default_objs: list[dict],
) -> None:
    c = container(default_objs)
    assert c["ports"] == [{"name": "http", "containerPort": Settings().port, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    assert env(default_objs)["CLIPSERVE_PORT"] == str(Settings().port)
    assert env(default_objs)["CLIPSERVE_HOST"] == "0.0.0.0"
    svc = only(default_objs, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}
    ]


def test_should_allow_a_weight_download_if_startup_probe_is_default(
    default_objs: list[dict],
) -> None:
    probe = container(default_objs)["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600


def test_should_only_set_clipserve_variables_the_service_understands_if_rendered(
    helm: Helm,
) -> None:
    objs = helm.template(
        {
            "fetchAllow": ["10.0.0.0/8"],
            "apiKey": {"secretName": "keys"},
            "batching": {
                "maxBatchSize": 64,
                "maxWaitMs": 2.5,
                "maxQueue": 100,
                "computeWorkers": 3,
            },
            "embeddingCache": {"sizeMB": 256},
        }
    )
    variables = {k: v for k, v in env(objs).items() if k.startswith(ENV_PREFIX)}
    # from_env parses every CLIPSERVE_* variable into Settings and fails on bad values.
    settings = from_env(variables)
    known = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert set(variables) <= known, set(variables) - known
    assert settings.max_batch_size == 64
    assert settings.max_wait_ms == 2.5
    assert settings.max_queue == 100
    assert settings.compute_workers == 3
    assert settings.cache_mb == 256
    assert settings.fetch_allow == ("10.0.0.0/8",)
    assert settings.cache_dir == "/cache"
    assert settings.model == ("ViT-B-32:openai",)


def test_should_keep_the_servers_embedding_cache_default_if_rendered(
    default_objs: list[dict],
) -> None:
    # The chart always sets the size; its default must be the server's, not a second opinion.
    assert from_env(env(default_objs)).cache_mb == Settings().cache_mb


def test_should_point_every_cache_at_the_cache_volume_if_rendered(default_objs: list[dict]) -> None:
    e = env(default_objs)
    assert e["CLIPSERVE_CACHE_DIR"] == "/cache"
    assert e["HF_HOME"] == "/cache/hf"
    mounts = {m["name"]: m["mountPath"] for m in container(default_objs)["volumeMounts"]}
    assert mounts == {"cache": "/cache", "tmp": "/tmp"}


def test_should_harden_the_pod_if_rendered(default_objs: list[dict]) -> None:
    pod = pod_spec(default_objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(default_objs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_should_set_gpu_limits_and_tolerate_the_gpu_taint_if_gpu_count_is_set(
    gpu_objs: list[dict],
) -> None:
    c = container(gpu_objs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["memory"] == "24Gi"
    pod = pod_spec(gpu_objs)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {
        "clipserve.io/node-pool": "gpu",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["priorityClassName"] == "ml-serving"
    assert "podAntiAffinity" in pod["affinity"]
    assert env(gpu_objs)["CLIPSERVE_DEVICE"] == "cuda"
    assert env(gpu_objs)["CLIPSERVE_DTYPE"] == "fp16"


@pytest.mark.parametrize(
    ("values", "device"),
    [
        ({}, "auto"),
        ({"gpu": {"count": 1}}, "cuda"),
        ({"gpu": {"count": 2}, "device": "cuda:1"}, "cuda:1"),
        ({"gpu": {"count": 1}, "device": "cpu"}, "cpu"),
    ],
)
def test_should_require_cuda_if_gpus_are_requested_and_device_is_auto(
    helm: Helm, values: dict, device: str
) -> None:
    # A pod holding a GPU must fail start-up rather than compute on the CPU (the service refuses
    # an unusable `cuda`); an explicit device is passed through as given.
    assert env(helm.template(values))["CLIPSERVE_DEVICE"] == device


def test_should_use_the_configured_gpu_resource_name_if_overridden(helm: Helm) -> None:
    objs = helm.template(
        {"gpu": {"count": 2, "resourceName": "amd.com/gpu", "tolerateTaint": False}}
    )
    assert container(objs)["resources"]["limits"]["amd.com/gpu"] == 2
    assert "nvidia.com/gpu" not in container(objs)["resources"]["limits"]
    assert "tolerations" not in pod_spec(objs)


def test_should_request_no_gpu_nor_tolerations_if_gpu_count_is_zero(
    default_objs: list[dict],
) -> None:
    assert not any("gpu" in k for k in container(default_objs)["resources"]["limits"])
    assert "tolerations" not in pod_spec(default_objs)
    assert "nodeSelector" not in pod_spec(default_objs)


def test_should_set_replicas_if_no_autoscaler_is_enabled(helm: Helm) -> None:
    assert only(helm.template({"replicaCount": 3}), "Deployment")["spec"]["replicas"] == 3


@pytest.mark.parametrize("autoscaler", ["autoscaling", "keda"])
def test_should_omit_replicas_if_an_autoscaler_is_enabled(helm: Helm, autoscaler: str) -> None:
    objs = helm.template({"replicaCount": 3, autoscaler: {"enabled": True}})
    assert "replicas" not in only(objs, "Deployment")["spec"]


def test_should_roll_without_losing_capacity_if_rendered(default_objs: list[dict]) -> None:
    strategy = only(default_objs, "Deployment")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_should_outlast_the_services_drain_if_terminating(helm: Helm) -> None:
    objs = helm.template(
        {"drain": {"preStopSleepSeconds": 7, "graceSeconds": 11, "timeoutSeconds": 30}}
    )
    pod = pod_spec(objs)
    assert container(objs)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "7"]
    assert env(objs)["CLIPSERVE_DRAIN_GRACE_S"] == "11"
    assert env(objs)["CLIPSERVE_DRAIN_TIMEOUT_S"] == "30"
    assert pod["terminationGracePeriodSeconds"] > 7 + 11 + 30


def test_should_drop_the_prestop_hook_if_its_sleep_is_zero(helm: Helm) -> None:
    objs = helm.template(
        {"drain": {"preStopSleepSeconds": 0}, "terminationGracePeriodSeconds": 120}
    )
    assert "lifecycle" not in container(objs)
    assert pod_spec(objs)["terminationGracePeriodSeconds"] == 120


@pytest.mark.parametrize(
    ("values", "volume"),
    [
        ({}, {"name": "cache", "emptyDir": {"sizeLimit": "10Gi"}}),
        (
            {"modelCache": {"type": "pvc"}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": "clip-clipserve-cache"}},
        ),
        (
            {"modelCache": {"type": "existingClaim", "existingClaim": "weights"}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": "weights"}},
        ),
    ],
    ids=["emptyDir", "pvc", "existingClaim"],
)
def test_should_back_the_cache_with_the_chosen_volume_if_model_cache_type_is_set(
    helm: Helm, values: dict, volume: dict
) -> None:
    objs = helm.template(values)
    assert pod_spec(objs)["volumes"][0] == volume
    claims = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    if values.get("modelCache", {}).get("type") == "pvc":
        assert claims[0]["metadata"]["name"] == "clip-clipserve-cache"
        assert claims[0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    else:
        assert claims == []


@pytest.mark.parametrize(
    ("values", "volume"),
    [
        (
            {"modelCache": {"type": "existingClaim", "existingClaim": "w", "readOnly": True}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": "w", "readOnly": True}},
        ),
        (
            {"modelCache": {"type": "image", "image": {"reference": "reg/clip-weights:1"}}},
            {
                "name": "cache",
                "image": {"reference": "reg/clip-weights:1", "pullPolicy": "IfNotPresent"},
            },
        ),
    ],
    ids=["read-only-claim", "model-image"],
)
def test_should_mount_the_cache_read_only_and_serve_offline_if_it_was_filled_beforehand(
    helm: Helm, values: dict, volume: dict
) -> None:
    objs = helm.template(values)
    assert pod_spec(objs)["volumes"][0] == volume
    assert {"name": "cache", "mountPath": "/cache", "readOnly": True} in container(objs)[
        "volumeMounts"
    ]
    e = env(objs)
    assert e["CLIPSERVE_OFFLINE"] == "true" and e["CLIPSERVE_CACHE_DIR"] == "/cache"
    # the libraries' own caches move to the writable /tmp
    assert (e["HF_HOME"], e["TORCH_HOME"], e["XDG_CACHE_HOME"]) == (
        "/tmp/hf",
        "/tmp/torch",
        "/tmp/xdg",
    )


def test_should_serve_offline_from_a_writable_cache_if_offline_is_set(helm: Helm) -> None:
    objs = helm.template({"offline": True, "modelCache": {"type": "pvc"}})
    assert env(objs)["CLIPSERVE_OFFLINE"] == "true"
    assert env(objs)["HF_HOME"] == "/cache/hf"
    assert "CLIPSERVE_OFFLINE" not in env(helm.template({}))


def test_should_read_secrets_from_secret_refs_if_tokens_are_configured(helm: Helm) -> None:
    objs = helm.template(
        {
            "hfToken": {"secretName": "hf", "key": "tok"},
            "apiKey": {"secretName": "keys", "key": "api-keys"},
        }
    )
    e = env(objs)
    assert e["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    # API keys arrive as a mounted file, never as a plain env value.
    assert e["CLIPSERVE_API_KEY_FILE"] == "/etc/clipserve/api-keys/api-keys"
    assert "CLIPSERVE_API_KEY" not in e
    keys_volume = next(v for v in pod_spec(objs)["volumes"] if v["name"] == "api-keys")
    assert keys_volume["secret"]["secretName"] == "keys"


def test_should_append_extra_env_and_volumes_if_given(helm: Helm) -> None:
    objs = helm.template(
        {
            "extraEnv": [{"name": "CLIPSERVE_LOG_LEVEL", "value": "debug"}],
            "extraVolumes": [{"name": "ckpt", "configMap": {"name": "ckpt"}}],
            "extraVolumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
        }
    )
    assert env(objs)["CLIPSERVE_LOG_LEVEL"] == "debug"
    assert {"name": "ckpt", "configMap": {"name": "ckpt"}} in pod_spec(objs)["volumes"]
    assert {"name": "ckpt", "mountPath": "/ckpt"} in container(objs)["volumeMounts"]


def test_should_annotate_the_model_spec_if_rendered(helm: Helm) -> None:
    # ":" is invalid in label values, so the spec travels as an annotation.
    objs = helm.template({"model": "ViT-L-14:openai"})
    deployment = only(objs, "Deployment")
    assert deployment["metadata"]["annotations"]["clipserve.io/model"] == "ViT-L-14:openai"
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"]["clipserve.io/model"]
        == "ViT-L-14:openai"
    )
    assert env(objs)["CLIPSERVE_MODEL"] == "ViT-L-14:openai"


def test_should_pin_the_image_by_digest_if_a_digest_is_given(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    assert (
        container(helm.template({"image": {"digest": digest}}))["image"]
        == f"ghcr.io/clipserve/clipserve@{digest}"
    )
    assert container(helm.template())["image"] == "ghcr.io/clipserve/clipserve:0.1.0"


def test_should_render_no_deployment_if_deployment_is_disabled(helm: Helm) -> None:
    objs = helm.template(
        {"deployment": {"enabled": False}, "autoscaling": {"enabled": True, "minReplicas": 2}}
    )
    assert {o["kind"] for o in objs} == {"Service"}
