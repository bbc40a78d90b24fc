"""The operator's own error types: what failed, how the ClipService shows it, when to retry."""

from __future__ import annotations

import re

# HTTP statuses worth retrying: conflicts, throttling, and the API server's own trouble.
_TRANSIENT = {409, 429, 500, 502, 503, 504}
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when no response came)."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status, self.method, self.path = status, method, path

    @property
    def namespace_terminating(self) -> bool:
        """True when the namespace is being deleted: nothing new can be created there."""
        return self.status == 403 and "is being terminated" in str(self)

    @property
    def transient(self) -> bool:
        """True when retrying the same call can succeed."""
        return self.status == 0 or self.status in _TRANSIENT

    def verb_and_resource(self) -> tuple[str, str]:
        """The RBAC verb and resource of the call ("patch", "deployments.apps")."""
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        group = "" if parts[:1] == ["api"] else parts[1] if len(parts) > 1 else ""
        rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
        if rest[:1] == ["namespaces"] and len(rest) > 2:
            rest = rest[2:]  # namespaced: skip namespaces/<ns>
        verb = _VERBS.get(self.method) or ("get" if len(rest) > 1 else "list")
        resource = f"{rest[0]}.{group}" if group else rest[0]
        return verb, "/".join([resource, *rest[2:3]])  # and a subresource such as status


class ReconcileError(Exception):
    """A reconcile failed: shown on the ClipService as Degraded=True with `reason` and message."""

    reason = "ReconcileFailed"
    # The error metric's `kind`: temporary (retried soon), permanent, unexpected (a bug).
    kind = "permanent"
    # True when the cause lies outside the ClipService (helm, RBAC, a kind the cluster lacks): no
    # change of the ClipService will come to retry it, so it is retried every 6 retry delays.
    external = False


class TransientError(ReconcileError):
    """The same call can get past it (conflict, throttling, API server trouble): retried soon.

    Not shown on the ClipService: the API server that would store the report is what fails.
    """

    reason = "ApiUnavailable"
    kind = "temporary"

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class RenderFailed(ReconcileError):
    """`helm template` refused the chart values (a spec.values mistake, or a broken chart)."""

    reason = "RenderFailed"


class InvalidSpec(ReconcileError):
    """The spec asks for something the CRD's schema cannot rule out (say, a model without its
    model image); retried when the ClipService changes."""

    reason = "InvalidSpec"


class ValuesNotAllowed(ReconcileError):
    """`spec.values` sets a chart value a ClipService may not (values_policy.py says which may)."""

    reason = "ValuesNotAllowed"


class NotOwned(ReconcileError):
    """An object the ClipService would write exists and is not its own: it is left untouched
    (and nothing else is applied) until it is deleted or renamed."""

    reason = "NotOwned"
    external = True  # resolved outside the ClipService: retried by itself


class HelmNotFound(ReconcileError):
    """The configured helm cannot be run."""

    reason = "HelmNotFound"
    external = True


class ApplyRefused(ReconcileError):
    """The API server refused an object (its admission or validation message says why)."""

    reason = "ApplyRefused"


class ImageVolumeUnsupported(ReconcileError):
    """The API server drops image volumes (its ImageVolume feature gate is off): no model image
    can be mounted on this cluster."""

    reason = "ImageVolumeUnsupported"
    external = True  # an upgraded cluster fixes it, not a change of the ClipService


class KindNotServed(ReconcileError):
    """The chart rendered a kind the cluster lacks (say, a ServiceMonitor without its CRD)."""

    external = True


class Forbidden(ReconcileError):
    """The operator's RBAC lacks a verb on a resource."""

    reason = "Forbidden"
    external = True

    @classmethod
    def of(cls, exc: ApiError) -> Forbidden:
        """The error naming the verb and resource the RBAC lacks, with the API server's words."""
        verb, resource = exc.verb_and_resource()
        namespace = re.search(r"/namespaces/([^/]+)/", exc.path)
        where = f" in namespace {namespace[1]}" if namespace else ""
        return cls(
            f"forbidden: the operator may not {verb} {resource}{where}; grant it to its "
            f"ServiceAccount (charts/clipserve-operator's ClusterRole lists every rule): {exc}"
        )


class InternalError(ReconcileError):
    """An error the operator did not expect (a bug): shown, logged with its traceback, retried."""

    reason = "InternalError"
    kind = "unexpected"
    external = True


def api_failure(exc: ApiError, delay: float) -> ReconcileError:
    """The reconcile error for a failed API call."""
    if exc.transient:
        return TransientError(str(exc), delay)
    if exc.status == 403:
        return Forbidden.of(exc)
    return ApplyRefused(str(exc))


def as_reconcile_error(exc: Exception, delay: float) -> ReconcileError:
    """Any failure of a reconcile step as a reconcile error (a bug becomes an InternalError)."""
    if isinstance(exc, ReconcileError):
        return exc
    if isinstance(exc, ApiError):
        return api_failure(exc, delay)
    error = InternalError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc  # the work queue logs its traceback
    return error
