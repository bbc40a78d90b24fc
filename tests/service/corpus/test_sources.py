"""`clipserve embed` on WebDataset shards and on S3-compatible storage (a real S3Proxy): the
same rows as from a folder, and clear errors for wrong credentials and a missing bucket."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FileSelector

from tests.service.corpus.conftest import BAD, embed, embed_command, read_output
from tests.support.s3 import S3, running_s3


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_give_one_output_shard_each_and_a_row_per_sample(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    root, ids = pictures
    good = [i for i in ids if i.startswith("set")][:6]
    wds = tmp_path / "wds"
    wds.mkdir()
    first = {f"s/{n:03d}.jpg" if n % 2 else f"s/{n:03d}.png": (root / good[n]).read_bytes()
             for n in range(3)}  # fmt: skip
    first |= {f"s/{n:03d}.txt": b"a caption" for n in range(3)}  # captions beside the images
    _tar(wds / "part-000.tar", dict(sorted(first.items())))
    _tar(wds / "part-001.tar", {
        "100.webp": (root / good[3]).read_bytes(), "100.json": b"{}",
        "101.txt": b"a sample without an image",
        "102.jpg": (root / "bad/truncated.png").read_bytes(),
    })  # fmt: skip
    ran = embed(str(wds), "--output", str(tmp_path / "out"))
    assert ran.code == 0, ran.stderr
    got = read_output(tmp_path / "out")
    assert [(m["shard"], m["items"]) for m in got["manifests"].values()] == [(0, 3), (1, 3)]
    errors = {r["id"]: r["error"] for r in got["rows"]}
    assert list(errors) == ["s/000", "s/001", "s/002", "100", "101", "102"]
    assert [errors[k] for k in ("s/000", "s/001", "s/002", "100")] == [None] * 4
    assert "no image member" in errors["101"] and "cannot decode" in errors["102"]


# `clipserve embed` in a process of its own that says its peak RSS (kB) when it ends.
PEAK = """
import resource, sys
from clipserve.cli import main
code = main(sys.argv[1:])
print("peak-rss-kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _peak_mb(tar: Path, out: Path) -> float:
    command = embed_command(str(tar), "--output", str(out), "--in-flight", "8")
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *command[3:]], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.rsplit("peak-rss-kb ", 1)[1].split()[0]) / 1024


def test_a_webdataset_tar_is_streamed_not_held(tmp_path: Path):
    """A 240 MiB .tar of 1 MiB samples costs the run about --in-flight samples of memory, not
    the .tar: its peak RSS is within 150 MiB of a run over a .tar of 8 such samples (+81 MiB
    measured; +361 MiB when a shard was read whole)."""
    sample = os.urandom(2**20)  # not an image: each is a row with its error, quickly
    for name, count in (("small", 8), ("big", 240)):
        _tar(tmp_path / f"{name}.tar", {f"{i:04d}.jpg": sample for i in range(count)})
    small = _peak_mb(tmp_path / "small.tar", tmp_path / "out-small")
    big = _peak_mb(tmp_path / "big.tar", tmp_path / "out-big")
    (tmp_path / "big.tar").unlink()  # pytest keeps the last runs' folders
    print(f"peak RSS: {small:.0f} MiB over 8 MiB of samples, {big:.0f} MiB over 240 MiB")
    assert big - small < 150, (small, big)
    rows = read_output(tmp_path / "out-big")["rows"]
    assert len(rows) == 240 and all(r["error"] for r in rows)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def test_a_folder_on_s3_embeds_into_s3_with_the_same_rows_as_from_disk(
    s3_env: S3, pictures: tuple[Path, list[str]]
):
    root, ids = pictures
    fs = s3_env.filesystem()
    src, dst = s3_env.bucket("corpus"), s3_env.bucket("vectors")
    for rel in ids:  # uploaded through the S3 API, as a user would
        with fs.open_output_stream(f"{src}/pics/{rel}") as out:
            out.write((root / rel).read_bytes())
    ran = embed(f"s3://{src}/pics", "--output", f"s3://{dst}/run1", "--shard-size", "128")
    assert ran.code == 0, ran.stderr
    assert ran.event("done")["items"] == 310 and ran.event("done")["failed"] == len(BAD)
    names = sorted(
        i.path for i in fs.get_file_info(FileSelector(f"{dst}/run1", recursive=True)) if i.size
    )
    assert names == [
        f"{dst}/run1/{p}"
        for p in ("manifest/shard-00000.json", "manifest/shard-00001.json",
                  "manifest/shard-00002.json", "run.json", "shards/shard-00000.parquet",
                  "shards/shard-00001.parquet", "shards/shard-00002.parquet")
    ]  # fmt: skip
    rows = []
    for k in range(3):
        with fs.open_input_file(f"{dst}/run1/shards/shard-{k:05d}.parquet") as fh:
            rows += pq.read_table(fh).to_pylist()
    assert [r["id"] for r in rows] == ids
    again = embed(f"s3://{src}/pics", "--output", f"s3://{dst}/run1", "--shard-size", "128")
    assert (again.code, again.event("start")["skipped"], again.event("done")["items"]) == (0, 3, 0)


def test_wrong_credentials_fail_at_once_naming_the_bucket(
    s3: S3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    for name, value in s3.env(secret="not-the-secret").items():
        monkeypatch.setenv(name, value)
    bucket = s3.bucket("private")
    ran = embed(f"s3://{bucket}/pics", "--output", str(tmp_path))
    assert ran.code == 2
    [line] = ran.stderr.strip().splitlines()
    assert line.startswith(f"clipserve embed: s3://{bucket}/pics: ")
    assert "ACCESS_DENIED" in line or "SIGNATURE_DOES_NOT_MATCH" in line, line


def test_a_missing_bucket_fails_at_once_naming_it(s3_env: S3, tmp_path: Path):
    ran = embed("s3://no-such-bucket/pics", "--output", str(tmp_path))
    assert ran.code == 2
    assert (
        ran.stderr.strip()
        == "clipserve embed: s3://no-such-bucket/pics: no such bucket 'no-such-bucket'"
    )
    (tmp_path / "a.txt").write_text("hello\n")
    out = embed(str(tmp_path / "a.txt"), "--output", "s3://no-such-bucket/out")
    assert out.code == 2 and "no such bucket" in out.stderr


def test_a_lancedb_table_on_s3_takes_the_vectors_once(
    s3_env: S3, pictures: tuple[Path, list[str]], tmp_path: Path
):
    """--lancedb s3://...: LanceDB's own S3 client against the same S3Proxy (endpoint and
    credentials from the AWS_* variables), upserting again when a shard is redone."""
    bucket = s3_env.bucket("tables")
    args = (str(pictures[0]), "--output", str(tmp_path / "out"), "--shard-size", "128",
            "--lancedb", f"s3://{bucket}/db")  # fmt: skip
    assert embed(*args).code == 0
    (tmp_path / "out" / "manifest" / "shard-00001.json").unlink()  # killed before this manifest
    assert embed(*args).code == 0
    options = {"endpoint": s3_env.endpoint, "allow_http": "true"}
    table = lancedb.connect(f"s3://{bucket}/db", storage_options=options).open_table("clipserve")
    ids = table.to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 310 - len(BAD)
    assert any((s3_env.data / bucket / "db").rglob("*.lance"))  # the data is in the bucket
