"""Names the operator shares with the CRD, the chart and the cluster: group, labels, annotations."""

from __future__ import annotations

from typing import Any

# The ClipService API (charts/clipserve-operator/crds/clipservices.yaml).
GROUP = "clipserve.io"
VERSION = "v1alpha1"
PLURAL = "clipservices"
KIND = "ClipService"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"
# The CRD's schema revision, bumped with every change of its schema or columns: helm never
# upgrades a CRD, so the operator checks at start-up that the installed one is the one it writes.
CRD_REVISION_ANNOTATION = f"{GROUP}/crd-revision"
CRD_REVISION = "8"

# The ClipJob API (charts/clipserve-operator/crds/clipjobs.yaml): a corpus embedded by an
# Indexed Job running `clipserve embed`, one slice of the shards per index.
JOB_PLURAL = "clipjobs"
JOB_KIND = "ClipJob"
JOB_CRD_NAME = f"{JOB_PLURAL}.{GROUP}"
# On the Job and its pods (value: the ClipJob name); distinct from OWNER_LABEL, so a ClipService
# reconcile neither sees nor prunes them.
CLIPJOB_LABEL = f"{GROUP}/clipjob"

# Server-side apply field manager, and the app.kubernetes.io/managed-by value on every child.
FIELD_MANAGER = "clipserve-operator"
MANAGED_BY = "clipserve-operator"
# Prefix of kopf's own bookkeeping annotations on ClipServices.
KOPF_PREFIX = GROUP

# Every child object carries this label (value: the ClipService name); prune and watches use it.
OWNER_LABEL = f"{GROUP}/clipservice"
# The blue/green slot of a Deployment and its pods; the Service selects on it.
SLOT_LABEL = f"{GROUP}/slot"
# The model a slot's Deployment and pod template run (rendered by charts/clipserve).
MODEL_ANNOTATION = f"{GROUP}/model"
# On the Service clients should call when the chart renders two (the gate's, with scale to
# zero); status.endpoint names it.
ENDPOINT_ANNOTATION = f"{GROUP}/endpoint"

# The chart's init container that reports the device a pod computes on, in its termination
# message (charts/clipserve server-deployment.yaml; docs/architecture.md says why).
DEVICE_CONTAINER = "device"

# A Kubernetes object as JSON, the one shape every module passes objects in.
Obj = dict[str, Any]
