"""Model specs: what the user wrote (`ARCH:TAG`, `hf-hub:org/repo`, `local-dir:/path`), parsed.

TAG is an open_clip pretrained tag, an http(s) URL of a checkpoint (`#sha256=` optional), a path
to a checkpoint file or to a folder holding one, or `random`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clipserve.redact import redact
from clipserve.sources import weights

RANDOM_TAG = "random"
_SCHEMAS = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. `raw` is what the user wrote with a URL's credentials redacted:
    the model's name in the API, metrics and logs; `tag` keeps the URL to download as given."""

    raw: str
    arch: str
    tag: str | None  # pretrained tag, URL, checkpoint path, "random", or None for hf-hub/local-dir

    @property
    def shown_tag(self) -> str | None:
        """The tag as /models and /metrics show it (a URL's credentials redacted)."""
        return None if self.tag is None else redact(self.tag)

    @property
    def kind(self) -> str:
        """One of `schema`, `random`, `url`, `checkpoint`, `pretrained`."""
        if self.tag is None:
            return "schema"
        if self.tag == RANDOM_TAG:
            return "random"
        if self.tag.startswith(("http://", "https://")):
            return "url"
        if _looks_like_path(self.tag):
            return "checkpoint"
        return "pretrained"


def _looks_like_path(tag: str) -> bool:
    return (
        tag.startswith(("/", "./", "../", "~"))
        or os.sep in tag
        or Path(tag).suffix in {".pt", ".pth", ".bin", ".safetensors"}
    )


def parse_spec(raw: str) -> ModelSpec:
    """Parse `ARCH:TAG`, `hf-hub:org/repo` or `local-dir:/path`; raise ValueError if malformed."""
    raw = raw.strip()
    if raw.startswith(_SCHEMAS):
        return ModelSpec(raw=raw, arch=raw, tag=None)
    arch, sep, tag = raw.partition(":")
    if not sep or not arch or not tag:
        raise ValueError(
            f"model spec {redact(raw)!r} must be ARCH:TAG (e.g. ViT-B-32:openai, "
            "ViT-B-32:/path/ckpt.pt, ViT-B-32:random) or hf-hub:org/repo"
        )
    spec = ModelSpec(raw=redact(raw), arch=arch, tag=tag)
    if spec.kind == "url":
        try:  # a malformed URL or #sha256= is refused before anything loads
            weights.parse_url(tag)
        except ValueError as exc:
            raise ValueError(redact(str(exc))) from None  # its words quote the URL
    return spec
