"""`clipserve download` and weights from URLs, the hub and local folders, `--offline`.

Checkpoints are saved here from the tiny random-init model and served by a real local HTTP
server (tests/support/origin.py) that counts requests, honours Range, and can cut a connection
mid-body. The hub cannot be reached: the same server answers the hub's `resolve` URLs with the
headers the hub sends (commit, etag = sha256 for LFS files, size), through HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from clipserve import models
from clipserve.models import ModelLoadError, load_model, parse_spec
from clipserve.sources import weights
from clipserve.sources.download import DownloadError, Limits
from clipserve.sources.progress import Progress
from huggingface_hub import try_to_load_from_cache

from tests.support.origin import Origin, self_signed
from tests.support.server import MODEL_CONFIGS

models.add_model_configs(str(MODEL_CONFIGS))
ARCH = "Tiny-ViT-T"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAST = Limits(backoff_s=0.01)
CLI = (sys.executable, "-m", "clipserve.cli")


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, bytes]:
    """A random-init tiny model and its checkpoint bytes (a plain state dict)."""
    src = open_clip.create_model(ARCH, pretrained=None).eval()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    return src, buf.getvalue()


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_checkpoint(origin: Origin, data: bytes, path: str = "/w/tiny.pt", **route: object) -> str:
    """The checkpoint on `path` with Range support and a strong ETag; returns its URL."""
    etag = f'"{sha256(data)[:16]}"'
    return origin.add(path, data, ranges=True, headers={"ETag": etag}, **route)


def hub_file(
    origin: Origin, repo: str, name: str, data: bytes, *, lfs: bool = True, body: bytes = b""
) -> None:
    """Answer the hub's resolve URL of `repo/name` as the hub does (HEAD and GET); `body`:
    bytes sent instead of `data` (whose sha256 and size the headers announce)."""
    if lfs:  # LFS files: the etag is the content's sha256
        headers = {"X-Linked-Etag": f'"{sha256(data)}"', "X-Linked-Size": str(len(data))}
    else:  # files in git: the etag is git's blob sha1
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        headers = {"ETag": f'"{blob}"'}
    origin.add(
        f"/{repo}/resolve/main/{name}",
        body or data,
        ranges=True,
        headers={"X-Repo-Commit": COMMIT, **headers},
    )


def parts_of(dest: Path) -> list[Path]:
    """The part files (and their validators) beside a cache file."""
    return sorted(dest.parent.glob(f"{dest.name}.part*")) if dest.parent.is_dir() else []


def gets(origin: Origin, path: str) -> list[dict[str, str]]:
    return [r.headers for r in origin.requests if r.path == path and r.method == "GET"]


def configs(cache: Path) -> tuple[str, ...]:
    return ("--cache-dir", str(cache), "--model-config-dir", str(MODEL_CONFIGS))


def download_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "download", "--model-config-dir", str(MODEL_CONFIGS), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_same_text_embedding(model: models.ClipModel, src: torch.nn.Module) -> None:
    tokens = model.tokenize(["a photo of a dog"])
    torch.testing.assert_close(model.encode_text(tokens), src.encode_text(tokens))


@pytest.mark.slow
def test_download_fetches_a_url_once_and_serve_offline_loads_it(tmp_path, tiny, origin):
    src, data = tiny
    url = serve_checkpoint(origin, data)
    spec = f"{ARCH}:{url}#sha256={sha256(data)}"
    first = download_cli("--model", spec, "--cache-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "1 file(s) fetched" in first.stdout
    assert f"progress {len(data)}/{len(data)} bytes (100%)" in first.stderr  # not a terminal
    again = download_cli("--model", spec, "--cache-dir", str(tmp_path))
    assert again.returncode == 0 and "1 already cached" in again.stdout
    assert len(gets(origin, "/w/tiny.pt")) == 1
    cached = weights.url_path(weights.parse_url(f"{url}#sha256={sha256(data)}"), str(tmp_path))
    assert cached.read_bytes() == data and cached.name == "tiny.pt"
    assert sorted(p.name for p in cached.parent.iterdir()) == ["tiny.pt"]  # no .part left
    origin.close()  # offline really means no server needed
    model = load_model(parse_spec(spec), cache_dir=str(tmp_path), offline=True)
    assert_same_text_embedding(model, src)


def test_a_cut_connection_is_resumed_with_a_range_request(tmp_path, tiny, origin):
    _, data = tiny
    url = serve_checkpoint(origin, data, cut_after=100_000)
    src = weights.parse_url(f"{url}#sha256={sha256(data)}")
    report = weights.download([("tiny", src)], str(tmp_path), limits=FAST, out=io.StringIO())
    assert report.fetched == ["tiny"]
    first, second = gets(origin, "/w/tiny.pt")
    assert "Range" not in first
    assert second["Range"] == "bytes=100000-" and second["If-Range"] == f'"{sha256(data)[:16]}"'
    assert origin.sent_bytes("/w/tiny.pt") == len(data)  # nothing sent twice
    assert weights.cached(src, str(tmp_path)).read_bytes() == data


def test_a_later_run_resumes_what_an_earlier_run_left(tmp_path, tiny, origin):
    _, data = tiny
    url = serve_checkpoint(origin, data, cut_after=50_000)
    src = weights.parse_url(url)
    once = Limits(attempts=1)
    with pytest.raises(DownloadError, match="gave up after 1 tries"):
        weights.download([("tiny", src)], str(tmp_path), limits=once, out=io.StringIO())
    part, validator = parts_of(weights.url_path(src, str(tmp_path)))
    assert validator.name == part.name + ".etag"
    assert part.stat().st_size == 50_000
    weights.download([("tiny", src)], str(tmp_path), limits=once, out=io.StringIO())
    assert gets(origin, "/w/tiny.pt")[1]["Range"] == "bytes=50000-"
    assert weights.cached(src, str(tmp_path)).read_bytes() == data
    assert parts_of(weights.url_path(src, str(tmp_path))) == []


def test_a_file_changed_since_the_cut_is_fetched_whole_again(tmp_path, tiny, origin):
    _, data = tiny
    url = serve_checkpoint(origin, data, cut_after=50_000)
    src = weights.parse_url(url)
    with pytest.raises(DownloadError):
        weights.download([("t", src)], str(tmp_path), limits=Limits(attempts=1), out=io.StringIO())
    changed = data[::-1]
    serve_checkpoint(origin, changed)  # a new ETag: If-Range no longer matches
    weights.download([("t", src)], str(tmp_path), limits=FAST, out=io.StringIO())
    assert weights.cached(src, str(tmp_path)).read_bytes() == changed


def test_a_sha256_mismatch_is_refused_and_nothing_is_kept(tmp_path, tiny, origin):
    _, data = tiny
    url = serve_checkpoint(origin, data)
    src = weights.parse_url(f"{url}#sha256={'0' * 64}")
    with pytest.raises(DownloadError) as err:
        weights.download([("tiny", src)], str(tmp_path), limits=FAST, out=io.StringIO())
    assert f"sha256 mismatch: expected {'0' * 64}, got {sha256(data)}" in str(err.value)
    folder = weights.url_path(src, str(tmp_path)).parent
    assert list(folder.iterdir()) == []


def test_a_busy_server_is_asked_again_and_a_missing_file_is_not(tmp_path, tiny, origin):
    _, data = tiny
    url = serve_checkpoint(origin, data, busy=2)  # 503, 503, then the file
    report = weights.download(
        [("x", weights.parse_url(url))], str(tmp_path), limits=FAST, out=io.StringIO()
    )
    assert report.fetched == ["x"] and len(gets(origin, "/w/tiny.pt")) == 3


def test_a_missing_url_fails_naming_the_status(tmp_path, origin):
    src = weights.parse_url(origin.url("/nope.pt"))
    with pytest.raises(DownloadError, match=r"nope.pt answered 404 Not Found"):
        weights.download([("x", src)], str(tmp_path), limits=FAST, out=io.StringIO())
    assert len(gets(origin, "/nope.pt")) == 1  # a 404 is final


def test_a_file_over_the_size_cap_is_refused_before_writing(tmp_path, tiny, origin):
    _, data = tiny
    src = weights.parse_url(serve_checkpoint(origin, data))
    small = Limits(max_bytes=1000)
    with pytest.raises(DownloadError, match="over the 1000-byte cap"):
        weights.download([("x", src)], str(tmp_path), limits=small, out=io.StringIO())
    assert parts_of(weights.url_path(src, str(tmp_path))) == []


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise():
    lines, bar = io.StringIO(), io.StringIO()
    for out, is_bar in ((lines, False), (bar, True)):
        progress = Progress(4_000_000, out=out, bar=is_bar, every_s=0)
        progress.add(1_000_000)
        progress.add(3_000_000)
        progress.finish()
    assert lines.getvalue().splitlines()[0].startswith("progress 1000000/4000000 bytes (25%)")
    assert "\r[#######" in bar.getvalue() and "100.0% 4.0/4.0 MB" in bar.getvalue()


@pytest.mark.parametrize(
    ("tag", "words"),
    [
        ("ftp://host/x.pt", "not an http(s) URL"),
        ("https://host/x.pt#md5=abc", "#sha256=<64 hex digits>"),
        ("https://host/x.pt#sha256=12ab", "#sha256=<64 hex digits>"),
    ],
)
def test_malformed_url_sources_are_refused_when_parsed(tag, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        weights.parse_url(tag)
    if tag.startswith("https"):
        with pytest.raises(ValueError):
            parse_spec(f"{ARCH}:{tag}")


@pytest.mark.slow
def test_hub_files_land_in_the_hub_cache_layout_verified(tmp_path, tiny, origin):
    """An hf-hub: model (config + weights), as the hub serves it, is served --offline after."""
    src, data = tiny
    repo = "clipserve-test/tiny"
    config = open_clip.get_model_config(ARCH)
    config_bytes = (
        b'{"model_cfg": ' + str(config).replace("'", '"').encode() + b', "preprocess_cfg": {}}'
    )
    hub_file(origin, repo, "open_clip_config.json", config_bytes, lfs=False)
    hub_file(origin, repo, "open_clip_pytorch_model.bin", data)  # no safetensors twin: 404
    proc = download_cli(
        "--model",
        f"hf-hub:{repo}",
        "--cache-dir",
        str(tmp_path),
        env={"HF_ENDPOINT": origin.base_url},
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 file(s) fetched" in proc.stdout
    blob = tmp_path / "models--clipserve-test--tiny" / "blobs" / sha256(data)
    assert blob.read_bytes() == data
    found = try_to_load_from_cache(repo, "open_clip_pytorch_model.bin", cache_dir=tmp_path)
    assert Path(found).resolve() == blob and COMMIT in found  # huggingface_hub reads it
    origin.close()
    model = load_model(parse_spec(f"hf-hub:{repo}"), cache_dir=str(tmp_path), offline=True)
    assert_same_text_embedding(model, src)
    # its embedding space (X-Clip-Space) knows the weights by the blob's name and the commit
    assert (model.space.weights, model.space.revision) == (f"sha256:{sha256(data)}", COMMIT)


def test_a_pretrained_tags_file_is_fetched_where_open_clip_looks(tmp_path, origin):
    # Not a real ViT-B-32 (600 MB): the download and its place in the cache are what is tested.
    data = os.urandom(300_000)
    repo = "timm/vit_base_patch32_clip_224.openai"
    hub_file(origin, repo, "open_clip_model.safetensors", data)
    proc = download_cli(
        "--model",
        "ViT-B-32:openai",
        "--cache-dir",
        str(tmp_path),
        env={"HF_ENDPOINT": origin.base_url},
    )
    assert proc.returncode == 0, proc.stderr
    found = try_to_load_from_cache(repo, "open_clip_model.safetensors", cache_dir=tmp_path)
    assert Path(found).read_bytes() == data
    [hub_src] = models.weight_sources(parse_spec("ViT-B-32:openai"))
    assert weights.cached(hub_src, str(tmp_path)) == Path(found)


def test_a_hub_file_that_does_not_match_its_sha256_is_refused(tmp_path, origin):
    data = os.urandom(10_000)
    repo = "timm/vit_base_patch32_clip_224.openai"
    # The last byte flipped: a fixed replacement byte would equal a random one once in 256 runs.
    corrupt = data[:-1] + bytes([data[-1] ^ 0xFF])
    hub_file(origin, repo, "open_clip_model.safetensors", data, body=corrupt)
    proc = download_cli(
        "--model",
        "ViT-B-32:openai",
        "--cache-dir",
        str(tmp_path),
        env={"HF_ENDPOINT": origin.base_url},
    )
    assert proc.returncode == 1
    assert f"sha256 mismatch: expected {sha256(data)}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_names_the_missing_file(tmp_path):
    cases = {
        "ViT-B-32:openai": "timm/vit_base_patch32_clip_224.openai/open_clip_model.safetensors",
        f"{ARCH}:http://127.0.0.1:9/x.pt": "http://127.0.0.1:9/x.pt",
    }
    for raw, named in cases.items():
        with pytest.raises(ModelLoadError) as err:
            load_model(parse_spec(raw), cache_dir=str(tmp_path), offline=True)
        message = str(err.value)
        assert named in message and str(tmp_path) in message and "--offline" in message


def test_a_folder_with_one_checkpoint_loads_it_and_an_ambiguous_one_is_refused(tmp_path, tiny):
    src, data = tiny
    (tmp_path / "model.pt").write_bytes(data)
    (tmp_path / "README.md").write_text("model image")
    assert_same_text_embedding(load_model(parse_spec(f"{ARCH}:{tmp_path}")), src)
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(
        ModelLoadError, match=r"exactly one weights file.*model\.pt, other\.safetensors"
    ):
        load_model(parse_spec(f"{ARCH}:{tmp_path}"))


def test_download_refuses_unknown_models_before_fetching(tmp_path):
    proc = download_cli("--model", "ViT-B-32:nope", "--cache-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "unknown pretrained tag 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_serve_offline_asks_nothing_of_the_network_and_names_the_missing_file(tmp_path, origin):
    url = serve_checkpoint(origin, b"never fetched")
    proc = subprocess.run(
        [*CLI, "serve", "--offline", "--model", f"{ARCH}:{url}", "--port", "0", *configs(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert f"start-up failed: {ARCH}:{url}: {url} is not in the cache {tmp_path}" in proc.stderr
    assert "--offline forbids downloading it" in proc.stderr
    assert origin.requests == []


def test_a_paced_origin_shares_one_link_between_downloads(tmp_path):
    # the origin the cold-start benchmark throttles to a hub's bandwidth
    with Origin(rate_bps=2_000_000) as paced:
        for i in range(2):
            paced.add(f"/w/{i}.pt", os.urandom(500_000), ranges=True)
        start = time.monotonic()
        sources = [(str(i), weights.parse_url(paced.url(f"/w/{i}.pt"))) for i in range(2)]
        weights.download(sources, str(tmp_path), limits=FAST, out=io.StringIO())
        assert time.monotonic() - start >= 0.45  # 1 MB over 2 MB/s, whichever order


# -- what decides a cache hit: the pin, the hub blob's name (#25 items 7, 8) --------------------


@pytest.mark.slow
def test_a_pin_decides_what_is_served_from_the_cache(tmp_path, tiny, origin):
    src, data = tiny
    url = serve_checkpoint(origin, data)
    cache = str(tmp_path)
    weights.download(
        [("a", weights.parse_url(f"{url}#sha256={sha256(data)}"))], cache, out=io.StringIO()
    )
    wrong = "0" * 64
    proc = download_cli("--model", f"{ARCH}:{url}#sha256={wrong}", "--cache-dir", cache)
    assert proc.returncode == 1 and "already cached" not in proc.stdout
    assert f"sha256 mismatch: expected {wrong}, got {sha256(data)}" in proc.stderr
    # upstream changes; a new pin fetches the new file, and the old pin still has the old one
    newer = open_clip.create_model(ARCH, pretrained=None).eval()
    buf = io.BytesIO()
    torch.save(newer.state_dict(), buf)
    serve_checkpoint(origin, buf.getvalue())
    new_spec = f"{ARCH}:{url}#sha256={sha256(buf.getvalue())}"
    report = weights.download(
        [("b", weights.parse_url(new_spec.partition(":")[2]))], cache, out=io.StringIO()
    )
    assert report.fetched == ["b"]
    origin.close()
    assert_same_text_embedding(
        load_model(parse_spec(new_spec), cache_dir=cache, offline=True), newer
    )
    old_spec = f"{ARCH}:{url}#sha256={sha256(data)}"
    assert_same_text_embedding(load_model(parse_spec(old_spec), cache_dir=cache, offline=True), src)


def test_a_cached_file_that_fails_its_pin_is_fetched_again_or_refused_offline(
    tmp_path, tiny, origin
):
    src, data = tiny
    spec = f"{ARCH}:{serve_checkpoint(origin, data)}#sha256={sha256(data)}"
    pinned = weights.parse_url(spec.partition(":")[2])
    weights.download([("a", pinned)], str(tmp_path), out=io.StringIO())
    path = weights.url_path(pinned, str(tmp_path))
    path.write_bytes(data[:-4] + b"rot!")  # what bit rot or an old race left
    with pytest.raises(ModelLoadError) as err:
        load_model(parse_spec(spec), cache_dir=str(tmp_path), offline=True)
    assert f"sha256 mismatch: expected {sha256(data)}" in str(err.value)
    assert "--offline forbids fetching it again" in str(err.value)
    assert_same_text_embedding(load_model(parse_spec(spec), cache_dir=str(tmp_path)), src)
    assert len(gets(origin, "/w/tiny.pt")) == 2 and path.read_bytes() == data


@pytest.mark.slow
def test_a_corrupt_hub_blob_in_the_cache_is_refused_offline_and_fetched_again(tmp_path, origin):
    data = os.urandom(300_000)
    repo = "timm/vit_base_patch32_clip_224.openai"
    hub_file(origin, repo, "open_clip_model.safetensors", data)
    args = ("--model", "ViT-B-32:openai", "--cache-dir", str(tmp_path))
    env = {"HF_ENDPOINT": origin.base_url}
    assert download_cli(*args, env=env).returncode == 0
    blob = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "blobs" / sha256(data)
    blob.write_bytes(os.urandom(len(data)))  # the right size, other bytes: an interleaved publish
    [hub_src] = models.weight_sources(parse_spec("ViT-B-32:openai"))
    with pytest.raises(weights.WeightsMissing, match=f"sha256 mismatch: expected {sha256(data)}"):
        weights.ensure("ViT-B-32:openai", hub_src, str(tmp_path), offline=True)
    again = download_cli(*args, env=env)
    assert again.returncode == 0 and "1 file(s) fetched" in again.stdout, again.stderr
    assert blob.read_bytes() == data


# -- smaller holes (#25 item 9) ---------------------------------------------------------------


def test_a_body_without_length_or_framing_is_refused_unless_a_pin_can_check_it(tmp_path, origin):
    data = os.urandom(200_000)
    cut = origin.add("/w/cut.pt", data, declare_length=False, cut_after=100_000)
    with pytest.raises(DownloadError, match="neither its length nor chunked framing"):
        weights.download([("x", weights.parse_url(cut))], str(tmp_path), out=io.StringIO())
    assert list(tmp_path.rglob("*.pt*")) == []
    whole = origin.add("/w/whole.pt", data, declare_length=False)
    pinned = weights.parse_url(f"{whole}#sha256={sha256(data)}")
    weights.download([("x", pinned)], str(tmp_path), out=io.StringIO())
    assert weights.cached(pinned, str(tmp_path)).read_bytes() == data


def test_a_cut_chunked_body_of_unknown_size_is_resumed_not_taken_as_whole(tmp_path, origin):
    data = os.urandom(200_000)
    url = origin.add("/w/x.pt", data, declare_length=None, ranges=True, cut_after=100_000)
    src = weights.parse_url(url)
    weights.download([("x", src)], str(tmp_path), limits=FAST, out=io.StringIO())
    assert weights.cached(src, str(tmp_path)).read_bytes() == data
    assert gets(origin, "/w/x.pt")[1]["Range"] == "bytes=100000-"


def test_a_part_longer_than_the_remote_file_is_fetched_again_from_the_start(tmp_path, origin):
    url = origin.add("/w/x.pt", os.urandom(100_000), ranges=True, cut_after=60_000)  # no ETag
    src = weights.parse_url(url)
    with pytest.raises(DownloadError, match="gave up after 1 tries"):
        weights.download([("x", src)], str(tmp_path), limits=Limits(attempts=1), out=io.StringIO())
    smaller = os.urandom(30_000)  # the file changed upstream, and shrank
    origin.add("/w/x.pt", smaller, ranges=True)
    weights.download([("x", src)], str(tmp_path), limits=FAST, out=io.StringIO())
    assert weights.cached(src, str(tmp_path)).read_bytes() == smaller
    assert [h.get("Range") for h in gets(origin, "/w/x.pt")] == [None, "bytes=60000-", None]


def test_a_redirect_from_https_to_http_is_refused(tmp_path, tiny, origin, monkeypatch):
    _, data = tiny
    plain = serve_checkpoint(origin, data)
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # how a private mirror's CA is trusted
    with Origin(tls=(cert, key)) as secure:
        secure.redirect("/w/down.pt", plain)
        with pytest.raises(DownloadError, match="redirected from https to http"):
            weights.download(
                [("x", weights.parse_url(secure.url("/w/down.pt")))],
                str(tmp_path / "a"),
                out=io.StringIO(),
            )
        assert gets(origin, "/w/tiny.pt") == []
        secure.add("/w/tiny.pt", data)
        secure.redirect("/w/moved.pt", "/w/tiny.pt")  # https to https is followed
        src = weights.parse_url(secure.url("/w/moved.pt"))
        weights.download([("x", src)], str(tmp_path / "b"), out=io.StringIO())
        assert weights.cached(src, str(tmp_path / "b")).read_bytes() == data
