"""A checkpoint URL's credentials never show: not in 401s, /metrics, /models, headers or logs.

Real `clipserve serve` processes load the tiny model from a local origin (tests/support/origin.py)
through a URL with a user, a password and a presigned-style query; the origin ignores both.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from clipserve import models
from clipserve.redact import redact
from clipserve_operator.redact import redact as operator_redact

from tests.support.origin import Origin
from tests.support.server import MODEL_CONFIGS, start_server

models.add_model_configs(str(MODEL_CONFIGS))
ARCH = "Tiny-ViT-T"
# Distinct words, so that finding one anywhere is a leak and not a coincidence.
USER, PASSWORD, SIGNATURE = "alice7", "s3cr3tpass", "sig0nly4me"
SECRETS = (USER, PASSWORD, SIGNATURE, "X-Amz-Signature")
KEY = "the-api-key"


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    """The tiny model's random-init state dict, as a checkpoint file's bytes."""
    buf = io.BytesIO()
    torch.save(open_clip.create_model(ARCH, pretrained=None).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def secret_url(origin: Origin, path: str) -> str:
    """`path` on the origin, with credentials and a presigned-style query."""
    url = origin.url(path).replace("http://", f"http://{USER}:{PASSWORD}@")
    return f"{url}?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=600"


def assert_no_secret(where: str, text: str) -> None:
    for word in SECRETS:
        assert word not in text, f"{word!r} leaks in {where}: {text[:2000]}"


@pytest.mark.parametrize(
    ("shown", "hidden"),
    [
        ("ViT-B-32:https://u:p@host/x.pt", "ViT-B-32:https://***@host/x.pt"),
        ("ViT-B-32:https://token@host:8443/x.pt", "ViT-B-32:https://***@host:8443/x.pt"),
        (
            "ViT-B-32:https://h/x.pt?X-Amz-Signature=abc&b=1#sha256=" + "a" * 64,
            "ViT-B-32:https://h/x.pt?***#sha256=" + "a" * 64,
        ),
        ("GET https://u:p@h/a?s=1 answered 403", "GET https://***@h/a?*** answered 403"),
        ("(at https://u:p@h/a?s=1): 403", "(at https://***@h/a?***): 403"),
        ("s3://key:secret@bucket/k", "s3://***@bucket/k"),
        ("ViT-B-32:https://h/x.pt", "ViT-B-32:https://h/x.pt"),
        ("ViT-B-32:openai", "ViT-B-32:openai"),
        ("hf-hub:org/repo", "hf-hub:org/repo"),
    ],
)
def test_redact_hides_userinfo_and_query_and_keeps_which_file(shown, hidden):
    # the operator's copy (its image has no clipserve package) must say the same
    assert redact(shown) == hidden == operator_redact(shown)


def test_a_spec_with_credentials_is_shown_redacted_everywhere(
    tmp_path: Path, origin: Origin, checkpoint: bytes
):
    url = origin.add("/w/tiny.pt", checkpoint, ranges=True)
    sha = hashlib.sha256(checkpoint).hexdigest()
    spec = f"{ARCH}:{secret_url(origin, '/w/tiny.pt')}#sha256={sha}"
    shown = f"{ARCH}:{url.replace('http://', 'http://***@')}?***#sha256={sha}"
    srv = start_server(
        "--cache-dir", str(tmp_path), "--api-key", KEY, "--log-level", "debug", model=spec
    )
    auth = {"authorization": f"Bearer {KEY}"}
    try:
        with srv.client() as c:
            denied = [c.post("/encode", json=[{"text": "a"}]), c.get("/v1/models")]
            metrics = c.get("/metrics")
            listed = c.get("/models", headers=auth)
            openai = c.get("/v1/models", headers=auth)
            encoded = c.post("/encode", json=[{"text": "a"}], headers=auth)
            # a client that names the model as it was configured still reaches it
            named = c.post("/encode", json={"items": [{"text": "a"}], "model": spec}, headers=auth)
    finally:
        srv.stop()
    assert origin.hits("/w/tiny.pt") >= 1  # the real URL was fetched, credentials and all
    for r in denied:
        assert r.status_code == 401
        assert "x-clip-model" not in r.headers  # a client without a key learns no model
        assert_no_secret("a 401", f"{r.headers} {r.text}")
    assert metrics.status_code == 200 and f'model="{shown}"' in metrics.text
    assert_no_secret("/metrics", metrics.text)
    assert listed.status_code == 200, listed.text
    info = listed.json()["models"][0]
    assert (info["spec"], info["pretrained"]) == (shown, shown.split(":", 1)[1])
    assert_no_secret("/models", listed.text)
    assert [m["id"] for m in openai.json()["data"]] == [shown]
    for r in (encoded, named):
        assert r.status_code == 200 and r.headers["x-clip-model"] == shown
    assert_no_secret("the log", srv.log())


def test_a_failed_download_names_its_url_without_credentials(tmp_path: Path, origin: Origin):
    spec = f"{ARCH}:{secret_url(origin, '/w/missing.pt')}"
    srv = start_server("--cache-dir", str(tmp_path), model=spec, wait_ready=False)
    code = srv.proc.wait(300)
    log = srv.log()
    assert code == 1 and origin.hits("/w/missing.pt") >= 1
    failed = log.strip().splitlines()[-1]
    assert failed.startswith("clipserve: start-up failed") and "404" in failed, failed
    assert f"http://***@127.0.0.1:{origin.port}/w/missing.pt?***" in failed, failed
    assert_no_secret("the log", log)
