"""A run killed midway, a full disk, slices and a second model into the same output: published
shards are whole, a re-run fills exactly what is missing, and nothing is written twice."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.service.corpus.conftest import embed, embed_command, read_output
from tests.support.checkpoints import ARCH, tiny_state


def test_a_run_killed_midway_resumes_with_no_duplicate_and_no_gap(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    root, ids = pictures
    out = tmp_path / "out"
    args = (str(root), "--output", str(out), "--shard-size", "8")
    proc = subprocess.Popen(embed_command(*args), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first published shard: the run is midway
        if json.loads(line)["event"] == "shard":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = read_output(out)["manifests"]
    assert 1 <= len(before) < 39, "killed before the first or after the last shard"

    again = embed(*args)
    assert again.code == 0, again.stderr
    assert again.event("start")["skipped"] == len(before)
    assert again.event("done")["shards"] == 39 - len(before)
    got = read_output(out)
    counts = Counter(r["id"] for r in got["rows"])
    assert sorted(counts) == ids and set(counts.values()) == {1}
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        f"shard-{k:05d}.parquet" for k in range(39)
    ]  # the shard the kill interrupted left no temporary file behind either
    for k, manifest in before.items():  # published shards were not written again
        assert got["manifests"][k] == manifest


def _can_mount_a_tmpfs() -> bool:
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             "mount -t tmpfs -o size=64k tmpfs /mnt"]  # fmt: skip
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _can_mount_a_tmpfs(), reason="no unprivileged user namespaces here")
def test_a_full_disk_fails_the_run_naming_it_and_publishes_no_partial_shard(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    """A real full filesystem: a 96 KiB tmpfs mounted in a user namespace of our own (no root
    needed), the run writing its shards into it until the kernel says ENOSPC."""
    root, _ = pictures
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    command = shlex.join(embed_command(str(root), "--output", f"{disk}/out", "--shard-size", "8"))
    script = (
        f"mount -t tmpfs -o size=96k tmpfs {disk} && {command}; code=$?; "
        f"cp -a {disk}/out {copy}; exit $code"  # the tmpfs goes with the namespace: keep a copy
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "No space left on device" in last and "nothing of this shard is published" in last
    got = read_output(copy)  # every published shard reads whole
    assert 1 <= len(got["manifests"]) < 39
    assert len(got["rows"]) == sum(m["items"] for m in got["manifests"].values())
    assert [p.name for p in copy.rglob(".*.tmp")] == []


def test_slices_split_the_shards_and_together_cover_every_item(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    root, ids = pictures
    args = (str(root), "--output", str(tmp_path), "--shard-size", "100")
    first = embed(*args, "--slice", "1/3")
    assert first.code == 0, first.stderr
    assert sorted(read_output(tmp_path)["manifests"]) == [1]
    os.environ.update(JOB_COMPLETION_INDEX="0", CLIPSERVE_EMBED_SLICES="3")
    try:
        second = embed(*args)  # an Indexed Job's pod: the slice from its environment
    finally:
        del os.environ["JOB_COMPLETION_INDEX"], os.environ["CLIPSERVE_EMBED_SLICES"]
    assert second.event("start")["slice"] == "0/3"
    assert sorted(read_output(tmp_path)["manifests"]) == [0, 1, 3]
    assert embed(*args, "--slice", "2/3").code == 0
    assert sorted(r["id"] for r in read_output(tmp_path)["rows"]) == ids


def test_another_model_into_the_same_output_is_refused_naming_the_difference(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    root, _ = pictures
    assert embed(str(root), "--output", str(tmp_path), "--shard-size", "200").code == 0
    other = embed(str(root), "--output", str(tmp_path), "--shard-size", "100")
    assert other.code == 2
    assert "shard_size is 200 there, 100 here" in other.stderr
    assert "--no-normalize" not in other.stderr


def test_other_weights_under_the_same_spec_are_refused_naming_the_space(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    """A checkpoint replaced between a crash and the resume (as a moved hub tag): the spec is
    the same, the vectors would not be comparable, so the resume stops before mixing them."""
    root, _ = pictures
    checkpoint, out = tmp_path / "ckpt.pt", tmp_path / "out"
    torch.save(tiny_state(seed=1), checkpoint)
    spec, args = f"{ARCH}:{checkpoint}", (str(root), "--output", str(out), "--shard-size", "200")
    first = embed(*args, model=spec)
    assert first.code == 0, first.stderr
    space = read_output(out)["run"]["space"]
    assert space.startswith("sha256:")
    torch.save(tiny_state(seed=2), checkpoint)
    again = embed(*args, model=spec)
    assert again.code == 2
    assert f"space is {space!r} there, 'sha256:" in again.stderr
    assert read_output(out)["run"]["space"] == space


def test_unreadable_input_fails_at_once_naming_it(tmp_path: Path):
    ran = embed(str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    assert ran.code == 2
    assert ran.stderr.strip().splitlines() == [
        f"clipserve embed: {tmp_path / 'nowhere'}: no such file, folder or bucket prefix"
    ]
