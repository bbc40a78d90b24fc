"""The batcher in-process, with deterministic encoders so failures can be injected exactly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from clipserve.engine.batching import ItemFailed, ModelBatcher
from clipserve.engine.faults import device_failure
from clipserve.errors import Overloaded
from clipserve.metrics import Metrics

POISON = -1.0


def _double(values: list[float]) -> torch.Tensor:
    """A stand-in forward pass: fails the whole batch if any item is POISON."""
    if POISON in values:
        raise ValueError("poisoned item")
    return torch.tensor(values).unsqueeze(1) * 2


def _batcher(encode=_double, **kw) -> ModelBatcher:
    opts = {"max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 64, "metrics": Metrics(), **kw}
    b = ModelBatcher("m", {"text": encode}, **opts)
    b.start()
    return b


def _recording(
    log: list,
    *,
    block_first: threading.Event | None = None,
    barrier: threading.Barrier | None = None,
):
    """An encoder that records (worker thread, its intra-op threads, batch) for each pass."""

    def encode(values):
        log.append((threading.current_thread().name, torch.get_num_threads(), list(values)))
        if block_first is not None and len(log) == 1:
            block_first.wait(5)
        if barrier is not None:
            barrier.wait()  # every party must be inside a pass at the same time
        return _double(values)

    return encode


def _two_workers_in_lockstep(log: list, max_wait_s: float) -> ModelBatcher:
    """Two workers whose every pass must meet another at a barrier: a batch that ran alone
    (its items not shared between the workers) fails."""
    return _batcher(
        _recording(log, barrier=threading.Barrier(2, timeout=5)),
        workers=2,
        threads=2,
        max_batch_size=16,
        max_wait_s=max_wait_s,
    )


def _eight_at_once(b: ModelBatcher) -> None:
    """Submit items 0..7 concurrently, check each gets its own result, then stop the batcher."""

    async def main():
        try:
            return await asyncio.gather(*(b.submit("text", [float(i)]) for i in range(8)))
        finally:
            b.stop()

    results = asyncio.run(main())
    assert [float(r[0][0]) for r in results] == [2.0 * i for i in range(8)]


def test_items_from_concurrent_submits_share_a_batch_and_get_their_own_results():
    seen: list = []
    _eight_at_once(_batcher(_recording(seen)))
    sizes = [len(batch) for _, _, batch in seen]
    assert sum(sizes) == 8 and len(sizes) < 8


def test_a_poisoned_item_fails_only_its_own_request():
    async def main():
        b = _batcher()
        try:
            return await asyncio.gather(
                b.submit("text", [1.0]),
                b.submit("text", [2.0, POISON]),
                b.submit("text", [3.0]),
                return_exceptions=True,
            )
        finally:
            b.stop()

    good1, bad, good2 = asyncio.run(main())
    assert float(good1[0][0]) == 2.0 and float(good2[0][0]) == 6.0
    assert isinstance(bad, ItemFailed) and "poisoned item" in str(bad)


def test_a_full_queue_is_refused_at_once():
    gate = threading.Event()

    def slow(values):
        gate.wait(5)
        return _double(values)

    async def main():
        b = _batcher(slow, max_queue=3, max_batch_size=1, max_wait_s=0)
        try:
            first = asyncio.ensure_future(b.submit("text", [1.0]))
            await asyncio.sleep(0.1)  # the compute thread now holds item 1
            with pytest.raises(Overloaded, match="queue is full"):
                await b.submit("text", [2.0, 3.0, 4.0, 5.0])
            gate.set()
            return await first
        finally:
            gate.set()
            b.stop()

    assert float(asyncio.run(main())[0][0]) == 2.0


def test_items_of_a_cancelled_request_are_not_computed():
    computed: list[float] = []
    gate = threading.Event()

    def encode(values):
        gate.wait(5)
        computed.extend(values)
        return _double(values)

    async def main():
        b = _batcher(encode, max_batch_size=1, max_wait_s=0)
        try:
            first = asyncio.ensure_future(b.submit("text", [1.0]))
            await asyncio.sleep(0.1)
            gone = asyncio.ensure_future(b.submit("text", [7.0, 8.0]))
            await asyncio.sleep(0.05)
            gone.cancel()  # the client disconnected while its items were queued
            gate.set()
            await first
            await b.submit("text", [3.0])
        finally:
            gate.set()
            b.stop()

    asyncio.run(main())
    assert computed == [1.0, 3.0]


def test_a_dead_compute_thread_is_reported_and_refuses_work():
    b = ModelBatcher(
        "m", {"text": _double}, max_batch_size=4, max_wait_s=0, max_queue=8, metrics=Metrics()
    )
    b._next_batch = lambda worker: (_ for _ in ()).throw(MemoryError("boom"))  # a bug in the loop
    b.start()
    b._threads[0].join(5)
    assert not b.alive

    async def main():
        with pytest.raises(Overloaded):
            await b.submit("text", [1.0])

    asyncio.run(main())


def test_stop_finishes_queued_items_first():
    async def main():
        b = _batcher(max_wait_s=10)  # would wait long for a full batch...
        task = asyncio.ensure_future(b.submit("text", [5.0]))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(b.stop)  # ...but stopping flushes it
        return await task

    assert float(asyncio.run(main())[0][0]) == 10.0


def test_a_worker_waits_for_the_cohort_of_its_last_batch_and_no_longer():
    seen: list = []

    async def main():
        b = _batcher(_recording(seen), max_batch_size=8, max_wait_s=0.3)
        try:
            # before any batch the target is a full one: a lone item waits max_wait_s
            t0 = time.monotonic()
            await b.submit("text", [1.0])
            first = time.monotonic() - t0
            # a lone client's next item is its whole cohort: served at once
            t0 = time.monotonic()
            await b.submit("text", [2.0])
            second = time.monotonic() - t0
            # a group of three is served whole; then its next round needs three again
            await asyncio.gather(*(b.submit("text", [float(i)]) for i in range(3)))
            t0 = time.monotonic()
            await asyncio.gather(*(b.submit("text", [float(i)]) for i in range(3)))
            group = time.monotonic() - t0
        finally:
            b.stop()
        return first, second, group

    first, second, group = asyncio.run(main())
    assert first >= 0.3 and second < 0.15 and group < 0.15
    assert [len(batch) for _, _, batch in seen] == [1, 1, 3, 3]


def _batcher_with_quiet_gap(gap_s: float, log: list) -> ModelBatcher:
    """One recording worker (max batch 8, max wait 1 s) with the quiet gap widened to gap_s,
    so waiting it out and not waiting are far apart in time."""
    return _batcher(_recording(log), max_batch_size=8, max_wait_s=1, quiet_s=gap_s)


def test_only_a_lone_client_skips_the_quiet_gap():
    """A lone client's item goes at once; two items of cohort size still wait out the gap."""
    seen: list = []

    async def main():
        b = _batcher_with_quiet_gap(0.4, seen)
        try:
            await asyncio.gather(b.submit("text", [1.0]), b.submit("text", [2.0]))
            await b.submit("text", [3.0])  # under the cohort of 2: waits max_wait_s
            t0 = time.monotonic()
            await b.submit("text", [4.0])  # cohort 1, nothing else queued or computing
            lone = time.monotonic() - t0
            t0 = time.monotonic()
            await asyncio.gather(b.submit("text", [5.0]), b.submit("text", [6.0]))
            pair = time.monotonic() - t0  # the cohort is in, but it may still grow
        finally:
            b.stop()
        return lone, pair

    lone, pair = asyncio.run(main())
    assert lone < 0.2 and 0.4 <= pair < 1
    assert [len(batch) for _, _, batch in seen] == [2, 1, 1, 2]


def test_items_trickling_in_closer_than_the_quiet_gap_are_batched():
    """After a lone item, one arriving soon after the last is no longer alone: it waits."""
    seen: list = []

    async def main():
        b = _batcher_with_quiet_gap(0.3, seen)
        try:
            await b.submit("text", [1.0])  # the first batch waits max_wait_s: cohort 1
            await asyncio.sleep(0.4)
            await b.submit("text", [2.0])  # alone, after a quiet spell: at once
            first = asyncio.ensure_future(b.submit("text", [3.0]))  # right after the last
            await asyncio.sleep(0.05)
            await asyncio.gather(first, b.submit("text", [4.0]))
        finally:
            b.stop()

    asyncio.run(main())
    assert [batch for _, _, batch in seen] == [[1.0], [2.0], [3.0, 4.0]]


def test_a_second_worker_serves_while_the_first_is_busy():
    seen: list = []
    gate = threading.Event()

    async def main():
        b = _batcher(_recording(seen, block_first=gate), workers=2, threads=2, max_wait_s=0)
        try:
            first = asyncio.ensure_future(b.submit("text", [1.0]))
            await asyncio.sleep(0.1)  # worker 0 holds item 1 behind the gate
            second = await asyncio.wait_for(b.submit("text", [2.0]), 5)
            gate.set()
            return await first, second
        finally:
            gate.set()
            b.stop()

    first, second = asyncio.run(main())
    assert float(first[0][0]) == 2.0 and float(second[0][0]) == 4.0
    # a lone item gets every intra-op thread; the overflow worker runs single-threaded
    assert seen[0] == ("compute-m-0", 2, [1.0])
    assert seen[1] == ("compute-m-1", 1, [2.0])


def test_a_lone_client_always_gets_the_first_worker_with_every_thread():
    seen: list = []

    async def main():
        b = _batcher(_recording(seen), workers=2, threads=2, max_wait_s=0)
        try:
            for i in range(6):
                await b.submit("text", [float(i)])
        finally:
            b.stop()

    asyncio.run(main())
    assert [(name, threads) for name, threads, _ in seen] == [("compute-m-0", 2)] * 6


def test_ready_items_are_shared_between_idle_workers_and_run_at_once():
    seen: list = []
    _eight_at_once(_two_workers_in_lockstep(seen, max_wait_s=0.2))
    # two single-threaded batches of 4 that met at the barrier (so they ran concurrently)
    assert sorted((name, threads, len(batch)) for name, threads, batch in seen) == [
        ("compute-m-0", 1, 4),
        ("compute-m-1", 1, 4),
    ]


def test_a_cohort_larger_than_its_share_is_split_once_the_other_worker_starves():
    seen: list = []

    async def main():
        b = _two_workers_in_lockstep(seen, max_wait_s=0.05)
        try:
            await b.submit("text", [float(i) for i in range(16)])  # two batches of 8
            await asyncio.sleep(0.1)  # longer than max_wait_s: no cohort comes back
            for _ in range(2):  # now 8 clients: 4 each, not 8 on one worker
                await asyncio.gather(*(b.submit("text", [float(i)]) for i in range(8)))
        finally:
            b.stop()

    asyncio.run(main())
    assert [len(batch) for _, _, batch in seen] == [8, 8, 4, 4, 4, 4]


ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


class _Device:
    """A stand-in forward pass on a device that breaks on demand (a real GPU cannot be broken
    here): while `broken`, every pass raises what torch raises after an illegal memory
    access; `bad` values raise the same error alone (an item that trips the kernels)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.broken = False
        self.error = error or RuntimeError(ILLEGAL_ACCESS)
        self.passes = 0

    def __call__(self, values: list[float]) -> torch.Tensor:
        self.passes += 1
        if self.broken or POISON in values:
            raise self.error
        return _double(values)


def _outcomes(b: ModelBatcher, values: list[float]) -> list:
    """Each value submitted alone, one after the other: its result or its error."""

    async def main():
        out = []
        for v in values:
            try:
                out.append(float((await b.submit("text", [v]))[0][0]))
            except Exception as exc:
                out.append(exc)
        return out

    return asyncio.run(main())


def _failed_gauge(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "clipserve_batcher_failed", {"model": "m", "reason": reason}
    )


def test_a_device_failing_every_batch_takes_the_model_out_of_service():
    device, metrics = _Device(), Metrics()
    b = _batcher(device, max_wait_s=0, fail_after=2, metrics=metrics)
    try:
        assert _outcomes(b, [1.0]) == [2.0]  # an item it embeds: known good
        assert b.failure is None and _failed_gauge(metrics, "device_error") == 0
        device.broken = True
        first, second = _outcomes(b, [2.0, 3.0])
        assert isinstance(first, ItemFailed) and isinstance(second, ItemFailed)
        # decided before the second answer came back: no waiting for the verdict
        assert b.failure is not None and "2 text batches in a row" in b.failure
        assert ILLEGAL_ACCESS in b.failure and "embedded before" in b.failure
        assert not b.alive and _failed_gauge(metrics, "device_error") == 1
        passes = device.passes
        (after,) = _outcomes(b, [4.0])
    finally:
        b.stop()
    assert isinstance(after, Overloaded) and "out of service" in str(after)
    assert device.passes == passes  # refused at once: no pass on a broken device


def test_one_failed_batch_between_good_ones_never_takes_the_model_down():
    device = _Device()

    def flaky(values):
        device.broken = 5.0 in values  # every 5.0 meets a device error, alone
        return device(values)

    b = _batcher(flaky, max_wait_s=0, fail_after=2)
    try:
        out = _outcomes(b, [1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 4.0])
    finally:
        b.stop()
    assert [o for i, o in enumerate(out) if i % 2 == 0] == [2.0, 4.0, 6.0, 8.0]
    assert all(isinstance(o, ItemFailed) for o in out[1::2])
    assert b.failure is None


def test_items_that_fail_while_a_known_good_item_still_embeds_never_take_the_model_down():
    """A client sending only items that trip the kernels cannot restart the pod: the model
    embeds an item it embedded before, so the items are to blame."""
    device = _Device()
    b = _batcher(device, max_wait_s=0, fail_after=2)
    try:
        out = _outcomes(b, [1.0, POISON, POISON, POISON, POISON, 2.0])
    finally:
        b.stop()
    assert out[0] == 2.0 and out[-1] == 4.0
    assert all(isinstance(o, ItemFailed) for o in out[1:-1])
    assert b.failure is None


def test_out_of_memory_never_takes_the_model_down():
    device = _Device(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    b = _batcher(device, max_wait_s=0, fail_after=2)
    try:
        _outcomes(b, [1.0])
        device.broken = True
        out = _outcomes(b, [2.0] * 4)
        device.broken = False
        (later,) = _outcomes(b, [3.0])
    finally:
        b.stop()
    assert all(isinstance(o, ItemFailed) for o in out) and later == 6.0
    assert b.failure is None


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (RuntimeError(ILLEGAL_ACCESS), True),
        (RuntimeError("CUDA error: unspecified launch failure"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
        (RuntimeError("CUDA error: out of memory"), False),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), False),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), False),
        (MemoryError(), False),
        (ValueError("poisoned item"), False),
        (NotImplementedError("no kernel for this dtype"), False),
        (None, False),
    ],
)
def test_device_failures_are_told_from_item_and_memory_errors(error, fatal):
    assert device_failure(error) is fatal
