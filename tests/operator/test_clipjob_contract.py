"""The operator reads what `clipserve embed` really prints: the command a ClipJob's pods run,
run here for both slices of a 2-pod job (JOB_COMPLETION_INDEX / CLIPSERVE_EMBED_SLICES, as in
an Indexed Job), its stdout given to the operator's progress reader (a tiny random model)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clipserve_operator.clipjob.job import embed_command
from clipserve_operator.clipjob.progress import collect, progress_of, space_of
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
MODEL = "Tiny-ViT-T:random"

pytestmark = [pytest.mark.slow]


def _pod(index: int, log_name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": log_name,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "embed", "state": {"terminated": {"exitCode": 0}}}],
        },
    }


def test_the_embed_clis_lines_give_the_clipjobs_counts(tmp_path: Path) -> None:
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for i in range(10):
        buf = io.BytesIO()
        Image.new("RGB", (20 + i, 20), (i * 20, 3, 4)).save(buf, "PNG")
        (source / f"{i}.png").write_bytes(buf.getvalue())
    (source / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    command = embed_command({"shardSize": 3}, MODEL, str(source), str(target))
    clipserve = Path(sys.executable).with_name("clipserve")
    logs, pods = {}, []
    for index in (0, 1):
        env = {
            **os.environ,
            "CLIPSERVE_MODEL_CONFIG_DIR": str(REPO / "tests/support/model_configs"),
            "CLIPSERVE_DEVICE": "cpu",
            "JOB_COMPLETION_INDEX": str(index),
            "CLIPSERVE_EMBED_SLICES": "2",
        }
        run = subprocess.run(
            [str(clipserve), *command[1:]], env=env, capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-2000:]
        logs[f"p{index}"] = run.stdout
        pods.append(_pod(index, f"p{index}"))
    indexes, total = collect(pods, logs, "embed")
    progress = progress_of(indexes, total)
    assert (progress.shards_done, progress.shards_total) == (4, 4)
    assert (progress.items_done, progress.items_failed) == (11, 1)
    # the space the vectors are in, as the output's run.json says, from the lines alone
    run = json.loads((target / "run.json").read_text())
    assert run["space"].startswith("random:") and space_of(indexes) == run["space"]
    assert space_of(collect(pods, {}, "embed")[0]) == ""  # nothing read: unknown, not a guess
    # a re-run of slice 0 publishes nothing and says so: its shards count as skipped
    env = {**env, "JOB_COMPLETION_INDEX": "0"}
    again = subprocess.run(
        [str(clipserve), *command[1:]], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    retried = _pod(0, "p0-retry")
    retried["metadata"]["creationTimestamp"] = "2026-01-01T00:01:00Z"
    indexes, total = collect([*pods, retried], {**logs, "p0-retry": again.stdout}, "embed")
    assert progress_of(indexes, total) == progress
    # ... even when the first pod's lines were never read (a pod lost with its log)
    indexes, total = collect([retried], {"p0-retry": again.stdout}, "embed")
    assert indexes[0].totals() == (2, 6, 0)
