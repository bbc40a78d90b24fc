"""A small async Kubernetes API client (httpx) sharing kopf's login; reads and raw requests."""

from __future__ import annotations

import base64
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import kopf

from .constants import Obj
from .errors import ApiError

# A kind the cluster lacks now may be installed later (KEDA, the Prometheus Operator's CRDs after
# the operator started): a miss is looked up again after this long; a kind found stays cached.
_MISS_RECHECK_S = 10.0


def connection_info(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """The in-cluster service account, else $KUBECONFIG / ~/.kube/config."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig found")
    return info


def _data(value: str | bytes) -> bytes:
    """kubeconfig *-data fields are base64; kopf passes them through as given."""
    raw = value.encode() if isinstance(value, str) else value
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """TLS settings from the connection info (client certificates need files for ssl)."""
    if info.insecure:
        return False
    ctx = ssl.create_default_context()
    if info.ca_path:
        ctx.load_verify_locations(cafile=str(info.ca_path))
    elif info.ca_data:
        ctx.load_verify_locations(cadata=_data(info.ca_data).decode())
    cert = info.certificate_path
    key = info.private_key_path
    if info.certificate_data or info.private_key_data:
        with tempfile.NamedTemporaryFile() as cf, tempfile.NamedTemporaryFile() as kf:
            cf.write(_data(info.certificate_data or b""))
            kf.write(_data(info.private_key_data or b""))
            cf.flush()
            kf.flush()
            ctx.load_cert_chain(cf.name, kf.name)
    elif cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def _http_client(info: kopf.ConnectionInfo, timeout_s: float) -> httpx.AsyncClient:
    """An httpx client for one set of credentials."""
    headers = {"User-Agent": "clipserve-operator"}
    if info.token:
        headers["Authorization"] = f"Bearer {info.token}"
    auth = httpx.BasicAuth(info.username, info.password or "") if info.username else None
    return httpx.AsyncClient(
        base_url=info.server,
        headers=headers,
        auth=auth,
        verify=_ssl_context(info),
        timeout=timeout_s,
    )


class KubeClient:
    """Async API client with per-group-version discovery (kind -> plural, namespaced)."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], timeout_s: float = 30.0) -> None:
        # login() is called again after a 401: projected ServiceAccount tokens rotate.
        self._login, self._timeout_s = login, timeout_s
        self._http = _http_client(login(), timeout_s)
        # api version -> (when discovered, kind -> (plural, namespaced))
        self._resources: dict[str, tuple[float, dict[str, tuple[str, bool]]]] = {}

    async def close(self) -> None:
        """Close connections."""
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Obj | None:
        """One API call; None on 404, ApiError with the apiserver's message otherwise."""
        resp = await self._send(
            method, path, params=params, json=json, content=content, content_type=content_type
        )
        if resp.status_code == 404:
            return None
        return resp.json() if resp.content else {}

    async def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last lines of a container's log; "" when there is none (yet, or any more)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        try:
            resp = await self._send(
                "GET", path, params={"container": container, "tailLines": lines}
            )
        except ApiError as exc:
            if exc.status == 403:
                raise  # missing RBAC is shown, not hidden as "no progress"
            return ""  # a pod not started or gone, a kubelet out of reach: no progress to show
        return resp.text if resp.status_code == 200 else ""

    async def log_head(
        self, namespace: str, pod: str, container: str, limit: int, timeout_s: float
    ) -> str:
        """The first `limit` bytes of a container's log; "" when it has none (a pod gone).
        ApiError when it cannot be read within `timeout_s` (a kubelet out of reach, no RBAC)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        params = {"container": container, "limitBytes": limit}
        resp = await self._send("GET", path, params=params, timeout_s=timeout_s)
        return resp.text if resp.status_code == 200 else ""

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """The call, logged in again once after a 401; ApiError for statuses >= 400 but 404."""
        headers = {"Content-Type": content_type} if content_type else None
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else httpx.Timeout(timeout_s)
        for attempt in range(2):
            try:
                resp = await self._http.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    content=content,
                    headers=headers,
                    timeout=timeout,
                )
            except httpx.HTTPError as exc:
                raise ApiError(0, f"{method} {path}: {exc!r}", method, path) from exc
            if resp.status_code != 401 or attempt:
                break
            old, self._http = self._http, _http_client(self._login(), self._timeout_s)
            await old.aclose()
        if resp.status_code >= 400 and resp.status_code != 404:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise ApiError(
                resp.status_code, f"{method} {path}: {resp.status_code} {message}", method, path
            )
        return resp

    async def _resource(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        """(plural, namespaced) of a kind; None when the cluster does not serve it."""
        seen_at, kinds = self._resources.get(api_version, (float("-inf"), {}))
        if kind not in kinds and time.monotonic() - seen_at >= _MISS_RECHECK_S:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            found = await self.request("GET", base)
            kinds = {
                r["kind"]: (r["name"], r["namespaced"])
                for r in (found or {}).get("resources", [])
                if "/" not in r["name"]
            }
            self._resources[api_version] = (time.monotonic(), kinds)
        return kinds.get(kind)

    async def path(
        self, api_version: str, kind: str, namespace: str | None, name: str | None = None
    ) -> str | None:
        """URL path of a collection or object; None when the cluster lacks that kind."""
        resource = await self._resource(api_version, kind)
        if resource is None:
            return None
        plural, namespaced = resource
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        return f"{base}/{name}" if name else base

    async def namespaced(self, api_version: str, kind: str) -> bool | None:
        """Whether a kind is namespaced; None when the cluster lacks it."""
        resource = await self._resource(api_version, kind)
        return None if resource is None else resource[1]

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """One object, or None."""
        path = await self.path(api_version, kind, namespace, name)
        return None if path is None else await self.request("GET", path)

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[Obj]:
        """Objects of a kind in a namespace matching a label selector ([] if the kind is absent)."""
        path = await self.path(api_version, kind, namespace)
        if path is None:
            return []
        found = await self.request("GET", path, params={"labelSelector": label_selector})
        return [] if found is None else found.get("items", [])
