"""The operator's errors: what a failed API call becomes, and the words the ClipService shows."""

from __future__ import annotations

import pytest
from clipserve_operator.errors import (
    ApiError,
    ApplyRefused,
    Forbidden,
    InternalError,
    TransientError,
    api_failure,
    as_reconcile_error,
)

DENIED = (
    'deployments.apps "x-blue" is forbidden: User "system:serviceaccount:ops:op" cannot patch '
    'resource "deployments" in API group "apps" in the namespace "ml"'
)


@pytest.mark.parametrize(
    ("method", "path", "verb", "resource"),
    [
        ("PATCH", "/apis/apps/v1/namespaces/ml/deployments/x", "patch", "deployments.apps"),
        ("GET", "/api/v1/namespaces/ml/pods", "list", "pods"),
        ("GET", "/api/v1/namespaces/ml/services/x", "get", "services"),
        ("DELETE", "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/x", "delete",
         "poddisruptionbudgets.policy"),
        ("PATCH", "/apis/clipserve.io/v1alpha1/namespaces/ml/clipservices/x/status", "patch",
         "clipservices.clipserve.io/status"),
        ("GET", "/apis/clipserve.io/v1alpha1/clipservices", "list", "clipservices.clipserve.io"),
    ],
)  # fmt: skip
def test_verb_and_resource_are_read_from_the_call(
    method: str, path: str, verb: str, resource: str
) -> None:
    assert ApiError(403, "denied", method, path).verb_and_resource() == (verb, resource)


def test_forbidden_names_the_verb_resource_and_namespace_with_the_servers_words() -> None:
    exc = ApiError(
        403, f"PATCH ...: 403 {DENIED}", "PATCH", "/apis/apps/v1/namespaces/ml/deployments/x"
    )
    error = api_failure(exc, delay=1)
    assert isinstance(error, Forbidden) and error.reason == "Forbidden" and error.external
    assert str(error).startswith(
        "forbidden: the operator may not patch deployments.apps in namespace ml"
    )
    assert DENIED in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(409, TransientError), (503, TransientError), (0, TransientError), (422, ApplyRefused)],
)
def test_api_failures_map_to_retried_or_reported_errors(status: int, kind: type) -> None:
    error = api_failure(ApiError(status, "boom", "PATCH", "/api/v1/namespaces/a/services/b"), 2.0)
    assert type(error) is kind
    if kind is TransientError:
        assert error.delay == 2.0 and error.kind == "temporary"
    else:
        assert error.kind == "permanent" and not error.external


def test_an_unexpected_exception_becomes_an_internal_error_keeping_its_cause() -> None:
    cause = KeyError("spec")
    error = as_reconcile_error(cause, 1.0)
    assert isinstance(error, InternalError) and error.kind == "unexpected"
    assert str(error) == "KeyError: 'spec'" and error.__cause__ is cause
