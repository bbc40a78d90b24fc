"""Each slot's embedding space in the ClipService status, from its server pods' start-up line.

The log reads go through the operator's real KubeClient to a small real HTTP server standing in
for the apiserver's pod log endpoint: the control-plane tests' pods have no kubelet to serve
logs. tests/service/models/test_space.py checks that a real server logs the line parsed here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from aiohttp import web
from clipserve_operator.constants import SLOT_LABEL
from clipserve_operator.kube import KubeClient
from clipserve_operator.spaces import (
    HEAD_BYTES,
    RETRY_S,
    SERVER_CONTAINER,
    Readings,
    read_spaces,
    reported_space,
    slot_space,
)
from clipserve_operator.status import Observed, compute_status
from clipserve_operator.swap import SwapState

A, B = "ViT-B-32:openai", "ViT-L-14:openai"
SPACE_A, SPACE_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
RANDOM = "random:" + "0" * 64
LOG = (
    "2026-01-01 00:00:00,000 INFO clipserve.cli: loading ViT-B-32:openai\n"
    f"2026-01-01 00:00:05,000 INFO clipserve.models.load: ViT-B-32:openai: embedding space "
    f"{SPACE_A} (weights sha256:{'c' * 64})\n"
    "2026-01-01 00:00:06,000 INFO clipserve.engine.startup: ViT-B-32:openai ready on cpu\n"
)


def _pod(uid: str, slot: str | None, *, ready: bool = True, gone: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"pod-{uid}", "uid": uid, "labels": {}}
    if slot:
        meta["labels"][SLOT_LABEL] = slot
    if gone:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ready_cond = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": meta, "status": {"conditions": [ready_cond]}}


def test_the_start_up_line_gives_the_digest_and_anything_else_gives_nothing() -> None:
    assert reported_space(LOG) == SPACE_A
    assert reported_space(f"x: embedding space {RANDOM} (weights random (seed 0))\n") == RANDOM
    assert reported_space("INFO clipserve.cli: loading\n") == ""
    assert reported_space("x: embedding space sha256:abc (weights ...)\n") == ""  # not a digest


def test_a_slots_space_is_what_its_live_pods_reported() -> None:
    pods = [_pod("1", "blue"), _pod("2", "blue"), _pod("3", "green"), _pod("4", "blue", gone=True)]
    spaces = {"1": SPACE_A, "2": SPACE_A, "3": SPACE_B, "4": SPACE_B}
    assert slot_space(pods, spaces, SLOT_LABEL, "blue") == SPACE_A
    assert slot_space(pods, spaces, SLOT_LABEL, "green") == SPACE_B
    mixed = {**spaces, "2": SPACE_B}  # a rolling swap half way
    assert slot_space(pods, mixed, SLOT_LABEL, "blue") == f"{SPACE_A},{SPACE_B}"
    assert slot_space(pods, {"1": ""}, SLOT_LABEL, "blue") == ""  # nothing reported yet


def _status(state: SwapState, spaces: dict[str, str]) -> dict[str, Any]:
    pods = (_pod("1", "blue"), _pod("2", "green"))
    deploy = {"spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    return compute_status(
        generation=1,
        state=state,
        observed=Observed(active=deploy, pending=deploy, pods=pods, spaces=spaces),
        endpoint="http://x:3000",
        selector="a=b",
        slot_label=SLOT_LABEL,
        previous=None,
        now="2026-01-01T00:00:00Z",
    )


def test_the_status_shows_the_serving_and_the_pending_slots_space() -> None:
    swapping = _status(SwapState("blue", A, "green", B), {"1": SPACE_A, "2": SPACE_B})
    assert (swapping["activeSpace"], swapping["pendingSpace"]) == (SPACE_A, SPACE_B)
    done = _status(SwapState("green", B), {"1": SPACE_A, "2": SPACE_B})
    assert (done["activeSpace"], done["pendingSpace"]) == (SPACE_B, "")
    unknown = _status(SwapState("blue", A), {})
    assert unknown["activeSpace"] == ""


async def _log_server(asked: list[dict[str, str]]) -> tuple[web.AppRunner, str]:
    """Pod logs as the apiserver serves them: pod-a's is LOG, pod-b's kubelet is unreachable."""

    async def handler(request: web.Request) -> web.Response:
        pod = request.match_info["pod"]
        asked.append({"pod": pod, **request.query})
        if pod == "pod-b":
            return web.json_response({"message": "dial tcp: i/o timeout"}, status=500)
        limit = int(request.query["limitBytes"])
        return web.Response(text=LOG[:limit])

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/log", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_each_ready_server_pod_is_read_once_and_an_unreadable_one_after_a_while() -> None:
    pods = [
        _pod("a", "blue"),
        _pod("b", "blue"),  # its log cannot be read now
        _pod("c", "blue", ready=False),  # still loading: read once ready
        _pod("d", None),  # a prefetch Job's pod: no slot
        _pod("e", "blue", gone=True),
    ]

    async def scenario() -> tuple[list[dict[str, str]], list[Readings]]:
        asked: list[dict[str, str]] = []
        runner, server = await _log_server(asked)
        client = KubeClient(lambda: kopf.ConnectionInfo(server=server, token="t"))
        reads = [Readings()]
        try:
            for now in (100.0, 101.0, 100.0 + RETRY_S):  # a pass, the next, one RETRY_S later
                reads.append(await read_spaces(client, "ns", pods, SLOT_LABEL, reads[-1], now))
        finally:
            await client.close()
            await runner.cleanup()
        return asked, reads[1:]

    asked, (first, second, later) = asyncio.run(scenario())
    assert first.spaces == second.spaces == later.spaces == {"a": SPACE_A}
    assert first.failed_at == second.failed_at == {"b": 100.0} and later.failed_at == {"b": 400.0}
    assert [q["pod"] for q in asked] == ["pod-a", "pod-b", "pod-b"]
    assert asked[0] == {
        "pod": "pod-a",
        "container": SERVER_CONTAINER,
        "limitBytes": str(HEAD_BYTES),
    }


def test_pods_gone_are_forgotten() -> None:
    before = Readings(spaces={"a": SPACE_A, "old": SPACE_B}, failed_at={"older": 1.0})

    async def scenario() -> Readings:
        client = KubeClient(lambda: kopf.ConnectionInfo(server="http://127.0.0.1:9", token="t"))
        try:  # nothing is read: "a" is known
            return await read_spaces(client, "ns", [_pod("a", "blue")], SLOT_LABEL, before, 2.0)
        finally:
            await client.close()

    assert asyncio.run(scenario()) == Readings(spaces={"a": SPACE_A})
