"""`clipserve embed` on a generated folder and on list files: every id exactly once, bad items
as rows, the server's own vectors, and the output contract of docs/corpus.md."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.service.corpus.conftest import BAD, Ran, embed, read_output
from tests.support.origin import Origin
from tests.support.server import Server


@pytest.fixture(scope="module")
def folder_run(
    pictures: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Ran, Path]:
    out = tmp_path_factory.mktemp("out") / "vectors"
    return embed(str(pictures[0]), "--output", str(out), "--shard-size", "64"), out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_every_picture_is_one_row_in_sorted_order_and_bad_ones_say_why(
    folder_run: tuple[Ran, Path], pictures: tuple[Path, list[str]]
):
    ran, out = folder_run
    assert ran.code == 0, ran.stderr
    got = read_output(out)
    assert [r["id"] for r in got["rows"]] == pictures[1]  # README, hidden, notes.txt: not items
    errors = {r["id"]: r["error"] for r in got["rows"] if r["error"] is not None}
    assert set(errors) == set(BAD)
    for name, words in BAD.items():
        assert words in errors[name], (name, errors[name])
    for row in got["rows"]:
        assert (row["embedding"] is None) == (row["error"] is not None)
    done = ran.event("done")
    assert (done["items"], done["failed"], done["shards"]) == (310, 10, 5)


def test_shards_manifests_and_run_json_follow_the_contract(folder_run: tuple[Ran, Path]):
    ran, out = folder_run
    got = read_output(out)
    assert sorted(got["manifests"]) == [0, 1, 2, 3, 4]
    assert [m["items"] for m in got["manifests"].values()] == [64, 64, 64, 64, 54]
    assert sum(m["failed"] for m in got["manifests"].values()) == 10
    run = got["run"]
    assert (run["model"], run["dimension"], run["total_shards"], run["total_items"]) == (
        "Tiny-ViT-T:random",
        32,
        5,
        310,
    )
    assert (run["dtype"], run["output_dtype"], run["normalization"]) == ("fp32", "float32", "l2")
    table = pq.read_table(out / "shards" / "shard-00000.parquet")
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[32]"
    meta = table.schema.metadata
    assert meta[b"clipserve.model"] == b"Tiny-ViT-T:random"
    assert run["space"].startswith("random:") and meta[b"clipserve.space"] == run["space"].encode()
    assert {m["space"] for m in got["manifests"].values()} == {run["space"]}
    assert json.loads(meta[b"clipserve.preprocessing"]) == run["preprocessing"]
    shard_events = [e for e in ran.events if e["event"] == "shard"]
    assert sorted(e["shard"] for e in shard_events) == [0, 1, 2, 3, 4]
    assert {"items", "failed", "items_per_s"} <= set(shard_events[0])
    assert list(out.rglob(".*.tmp")) == []


def test_vectors_equal_the_servers_encode(
    folder_run: tuple[Ran, Path], pictures: tuple[Path, list[str]], server: Server
):
    root, _ = pictures
    rows = [r for r in read_output(folder_run[1])["rows"] if r["error"] is None][::15]
    items = [{"img_blob": base64.b64encode((root / r["id"]).read_bytes()).decode()} for r in rows]
    with server.client() as client:
        response = client.post("/encode", json={"items": items, "normalize": True})
    served = response.json()
    # the digest a client compares with the server's, to know these vectors are comparable
    assert read_output(folder_run[1])["run"]["space"] == response.headers["X-Clip-Space"]
    for row, vector in zip(rows, served, strict=True):
        assert _cos(np.array(row["embedding"]), np.array(vector)) >= 0.9999, row["id"]
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)


def test_a_texts_file_embeds_each_line_as_the_server_does(tmp_path: Path, server: Server):
    lines = [f"a photo of thing number {i}" for i in range(40)] + ["", "  ", "the end"]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    ran = embed(
        str(tmp_path / "texts.txt"), "--output", str(tmp_path / "out"), "--shard-size", "16",
        "--output-dtype", "float16",
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    rows = read_output(tmp_path / "out")["rows"]
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 44)]
    assert [r["id"] for r in rows if r["error"]] == ["41", "42"]
    assert rows[40]["error"] == "text: empty"
    with server.client() as client:
        served = client.post(
            "/encode", json={"items": [{"text": t} for t in lines], "normalize": True}
        ).json()
    for row, vector, text in zip(rows, served, lines, strict=True):
        if text.strip():  # float16 storage: ~3 significant digits
            assert _cos(np.array(row["embedding"]), np.array(vector)) >= 0.9999
    table = pq.read_table(tmp_path / "out" / "shards" / "shard-00000.parquet")
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[32]"


def test_a_jsonl_list_reads_its_columns_and_paths_and_a_bad_row_is_a_row(
    tmp_path: Path, pictures: tuple[Path, list[str]]
):
    root, ids = pictures
    rows = [{"key": f"k{i}", "image": str(root / ids[-1 - i])} for i in range(5)]
    rows.append({"key": "missing", "image": "no/such/file.png"})
    rows.append({"key": "refused", "image": "http://127.0.0.1:9/x.png"})  # SSRF guard: loopback
    rows.append({"key": "nothing"})
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    ran = embed(
        str(tmp_path / "list.jsonl"), "--output", str(tmp_path / "out"), "--id-column", "key"
    )
    assert ran.code == 0, ran.stderr
    got = {r["id"]: r["error"] for r in read_output(tmp_path / "out")["rows"]}
    assert list(got) == [f"k{i}" for i in range(5)] + ["missing", "refused", "nothing", ""]
    assert [got[f"k{i}"] for i in range(5)] == [None] * 5
    assert "cannot read" in got["missing"]
    assert "127.0.0.1" in got["refused"] or "refused" in got["refused"], got["refused"]
    assert got["nothing"] == "image: missing"
    assert got[""] == "row 9: no 'key'"  # the line that is not JSON


def test_a_parquet_list_with_a_named_text_column(tmp_path: Path):
    import pyarrow as pa

    pq.write_table(
        pa.table({"doc": ["a", "b", "c"], "body": ["one", "two", "three"]}), tmp_path / "l.parquet"
    )
    ran = embed(
        str(tmp_path / "l.parquet"), "--output", str(tmp_path / "o"),
        "--id-column", "doc", "--text-column", "body",
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert [r["id"] for r in read_output(tmp_path / "o")["rows"]] == ["a", "b", "c"]


def test_a_csv_with_both_default_columns_is_refused_naming_them(tmp_path: Path):
    (tmp_path / "l.csv").write_text("id,text,image\n1,hi,x.png\n")
    ran = embed(str(tmp_path / "l.csv"), "--output", str(tmp_path / "o"))
    assert ran.code == 2
    assert "both text and image" in ran.stderr and "--text-column" in ran.stderr


def test_image_urls_are_fetched_through_the_allow_list_and_failures_are_rows(
    tmp_path: Path, pictures: tuple[Path, list[str]], server: Server
):
    root, ids = pictures
    good = root / ids[-1]
    with Origin() as origin:  # an in-cluster image store on a private (loopback) address
        origin.add("/a.png", good.read_bytes(), content_type="image/png")
        origin.add("/gone.png", b"not here", status=404)
        lines = [origin.url("/a.png"), origin.url("/gone.png"), "http://127.0.0.1:9/closed.png"]
        (tmp_path / "urls.txt").write_text("\n".join(lines) + "\n")
        args = (str(tmp_path / "urls.txt"), "--lines", "images", "--fetch-timeout-s", "5")
        guarded = embed(*args, "--output", str(tmp_path / "guarded"))
        allowed = embed(*args, "--output", str(tmp_path / "allowed"), "--fetch-allow", "127.0.0.1")
    assert guarded.code == allowed.code == 0, guarded.stderr + allowed.stderr
    refused = [r["error"] for r in read_output(tmp_path / "guarded")["rows"]]
    assert all(e and "127.0.0.1" in e for e in refused), refused  # the SSRF guard, by default
    rows = read_output(tmp_path / "allowed")["rows"]
    assert rows[0]["error"] is None
    assert "404" in rows[1]["error"]
    assert rows[2]["error"] and rows[2]["embedding"] is None
    with server.client() as client:
        item = {"img_blob": base64.b64encode(good.read_bytes()).decode()}
        [served] = client.post("/encode", json={"items": [item], "normalize": True}).json()
    assert _cos(np.array(rows[0]["embedding"]), np.array(served)) >= 0.9999
