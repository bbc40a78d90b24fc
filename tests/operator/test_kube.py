"""The operator's API client against a small real HTTP server standing in for the apiserver."""

from __future__ import annotations

import asyncio

import kopf
from aiohttp import web
from clipserve_operator.kube import ApiError, KubeClient


async def _serve(tokens_seen: list[str]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "")
        tokens_seen.append(token)
        if token != "Bearer fresh":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if request.path.endswith("/missing"):
            return web.json_response({"message": "not found"}, status=404)
        if request.path.endswith("/invalid"):
            return web.json_response({"message": 'spec.replicas: Invalid value: "x"'}, status=422)
        return web.json_response({"kind": "Thing"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_rotated_token_is_reread_after_a_401_and_errors_carry_the_message() -> None:
    async def scenario() -> tuple[list[str], list[object]]:
        seen: list[str] = []
        runner, server = await _serve(seen)
        tokens = iter(["stale", "fresh"])
        client = KubeClient(lambda: kopf.ConnectionInfo(server=server, token=next(tokens)))
        try:
            results: list[object] = [await client.request("GET", "/api/v1/thing")]
            results.append(await client.request("GET", "/api/v1/missing"))
            try:
                await client.request("PATCH", "/api/v1/invalid")
            except ApiError as exc:
                results.append(exc)
        finally:
            await client.close()
            await runner.cleanup()
        return seen, results

    seen, results = asyncio.run(scenario())
    assert seen[:2] == ["Bearer stale", "Bearer fresh"]
    assert results[0] == {"kind": "Thing"} and results[1] is None
    error = results[2]
    assert isinstance(error, ApiError) and error.status == 422 and not error.transient
    assert "spec.replicas: Invalid value" in str(error)
