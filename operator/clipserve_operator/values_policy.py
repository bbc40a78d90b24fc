"""What `spec.values` may set: an allow-list of chart value paths, checked before any render.

Whoever may create a ClipService gets the operator to write Deployments, Services and the rest
with the operator's rights. The chart accepts values that would hand that power on (a hostPath
in `extraVolumes`, any ServiceAccount's token through a projected volume, other apps' pods
joined through `podLabels`, KEDA's credentials sent to any `serverAddress`), so `spec.values`
may set only the paths below: sizing, batching and server tuning, probes, autoscaler thresholds
and scheduling. An admin adds paths with the operator's `--values-allow`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .errors import ValuesNotAllowed

# Dotted chart value paths (charts/clipserve/values.yaml); a path allows everything below it.
# Not here, so refused: what runs and as whom (image.repository, serviceAccount, extraEnv,
# extraVolumes, extraVolumeMounts, imagePullSecrets, hfToken, apiKey, modelCache: the spec's own
# fields set the last four), which pods and traffic the objects select or expose (nameOverride,
# podLabels, podAnnotations, service.type and annotations, ingress, deployment.annotations),
# where KEDA sends its credentials and what it asks with them (keda.prometheus.serverAddress,
# authenticationRef, query), the SSRF guard's exceptions (fetchAllow), a Secret handed to the
# pod as the trace exporter's headers (tracing.headersSecret), and what the operator
# sets itself (fullnameOverride, model, slot, service.slot, deployment.enabled, service.enabled).
SAFE_VALUES: tuple[str, ...] = (
    "replicaCount",
    "dtype",
    "device",
    "image.tag",
    "image.digest",
    "image.pullPolicy",
    "deployment.revisionHistoryLimit",
    "deployment.maxSurge",
    "service.port",
    "gpu",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "runtimeClassName",
    "priorityClassName",
    "batching",
    "embeddingCache",
    "resources",
    "offline",
    "tmpSizeLimit",
    "deviceReport",
    "drain",
    "terminationGracePeriodSeconds",
    "probes",
    "autoscaling",
    "keda.enabled",
    "keda.minReplicas",
    "keda.maxReplicas",
    "keda.pollingInterval",
    "keda.cooldownPeriod",
    "keda.behavior",
    "keda.prometheus.threshold",
    "keda.prometheus.activationThreshold",
    "keda.gate",
    "podDisruptionBudget",
    "serviceMonitor.enabled",
    "serviceMonitor.interval",
    "serviceMonitor.scrapeTimeout",
    "serviceMonitor.labels",
    "networkPolicy",
    "dashboards",
    # where the server's own spans go and how many: the author's requests, no credential
    "tracing.endpoint",
    "tracing.sampler",
    "tracing.samplerArg",
    "tracing.serviceName",
)

# A trie of allowed paths: True allows the whole subtree.
_Tree = dict[str, Any]


def _tree(paths: Iterable[str]) -> _Tree:
    tree: _Tree = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            child = node.setdefault(key, {})
            if child is True:  # an ancestor is allowed whole already
                break
            node = child
        else:
            node[leaf] = True
    return tree


def _refused(values: Mapping[str, Any], tree: _Tree, prefix: str) -> Iterator[str]:
    for key, value in values.items():
        path, allowed = f"{prefix}{key}", tree.get(key)
        if allowed is True:
            continue
        if allowed is None or not isinstance(value, Mapping):
            # Not allowed at all, or a non-mapping that would replace a partly allowed map whole.
            yield path
        else:
            yield from _refused(value, allowed, f"{path}.")


def refused_values(values: Mapping[str, Any], extra: Iterable[str] = ()) -> list[str]:
    """The paths of `values` (dotted) that neither SAFE_VALUES nor `extra` allow, sorted."""
    return sorted(_refused(values, _tree((*SAFE_VALUES, *extra)), ""))


def check_values(spec: Mapping[str, Any], extra: Iterable[str] = ()) -> None:
    """Refuse a spec whose `values` set a path not allowed; ValuesNotAllowed names each one."""
    extra = tuple(extra)
    refused = refused_values(spec.get("values") or {}, extra)
    if refused:
        named = ", ".join(f"spec.values.{path}" for path in refused)
        raise ValuesNotAllowed(
            f"{named}: not allowed in a ClipService (it could choose what runs or as whom, which "
            "pods or traffic it selects, or where credentials go); spec.values may set only "
            f"{', '.join((*SAFE_VALUES, *extra))} (an operator admin adds paths with "
            "--values-allow)"
        )
