"""A model's embedding space as one digest (`X-Clip-Space`, /models, the start-up log).

Vectors can be compared only when one set of weights, one preprocessing and one tokenizer made
them. The spec says none of that for sure: a hub tag moves to new weights, a checkpoint file is
replaced under its name. The digest covers what does: the architecture's config, QuickGELU,
the weights' content (sha256), the image preprocessing and the tokenizer; not where files live,
the device or the dtype (which change the numbers within one space, not the space). Random
weights get `random:...`, never `sha256:...`, so they cannot pass for real ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
from open_clip.constants import HF_CONFIG_NAME
from open_clip.factory import _find_checkpoint_in_dir

from clipserve.models.recipe import Preprocessing, TokenizerInfo

VERSION = 1  # of what the digest covers: a new field is a new version
RANDOM_WEIGHTS = "random (seed 0)"  # load.py draws ARCH:random from a fixed seed
_HEX64 = frozenset("0123456789abcdef")
_VOCABULARIES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")


@dataclass(frozen=True)
class Space:
    """What /models shows: the digest, and the weights' part of it."""

    digest: str  # "sha256:<64 hex>", or "random:<64 hex>" for random weights
    weights: str  # "sha256:<64 hex>" of the weights file, or RANDOM_WEIGHTS
    revision: str | None  # the hub commit the weights file came from, when from the hub

    def info(self) -> dict[str, Any]:
        return {"digest": self.digest, "weights": self.weights, "revision": self.revision}


def file_sha256(path: Path) -> str:
    """The file's sha256; free for a hub cache blob, which is named by it (and which
    sources/weights.py verified against that name before the model loaded)."""
    blob = path.resolve()
    if len(blob.name) == 64 and set(blob.name) <= _HEX64 and blob.parent.name == "blobs":
        return blob.name
    with blob.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hub_revision(path: Path) -> str | None:
    """The commit of a file in the hub cache's layout (`.../snapshots/<commit>/<name>`)."""
    parts = path.absolute().parts
    if "snapshots" in parts[:-1]:
        return parts[parts.index("snapshots") + 1]
    return None


def tokenizer_identity(info: TokenizerInfo) -> dict[str, Any]:
    """The tokenizer as the digest sees it: a hub repo by name, a local folder by its
    vocabulary's content (its path differs between caches holding the same files)."""
    name = info.name
    folder = Path(name)
    if info.kind == "huggingface" and folder.is_dir():
        found = next((folder / f for f in _VOCABULARIES if (folder / f).is_file()), None)
        name = f"sha256:{file_sha256(found)}" if found else "local tokenizer"
    return {"kind": info.kind, "name": name, "context_length": info.context_length}


def model_space(
    name: str,
    checkpoint: str | None,
    *,
    quick_gelu: bool,
    preprocessing: Preprocessing,
    tokenizer: TokenizerInfo,
) -> Space:
    """The space of open_clip model `name` loaded with `checkpoint` (a file; None: from a
    `local-dir:` folder as open_clip finds it there, or random weights)."""
    architecture: dict[str, Any] | str
    weights = Path(checkpoint) if checkpoint else None
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:"))
        # its model_cfg, as a built-in's config (its preprocess_cfg is in `preprocessing`)
        architecture = json.loads((folder / HF_CONFIG_NAME).read_text())["model_cfg"]
        found = _find_checkpoint_in_dir(folder)
        weights = weights or (Path(found) if found else None)
    else:
        architecture = open_clip.get_model_config(name) or name
    return embedding_space(
        architecture=architecture,
        quick_gelu=quick_gelu,
        weights=weights,
        preprocessing=preprocessing,
        tokenizer=tokenizer,
    )


def embedding_space(
    *,
    architecture: dict[str, Any] | str,  # open_clip's model config (or its name)
    quick_gelu: bool,
    weights: Path | None,
    preprocessing: Preprocessing,
    tokenizer: TokenizerInfo,
) -> Space:
    """The space of a model built from `architecture` with the weights file `weights` (None:
    random weights)."""
    weights_id = RANDOM_WEIGHTS if weights is None else f"sha256:{file_sha256(weights)}"
    preprocess = {k: v for k, v in preprocessing.info().items() if k != "source"}
    material = {
        "version": VERSION,
        "architecture": architecture,
        "quick_gelu": quick_gelu,
        "weights": weights_id,
        "preprocess": preprocess,
        "tokenizer": tokenizer_identity(tokenizer),
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    kind = "random" if weights is None else "sha256"
    return Space(
        digest=f"{kind}:{hashlib.sha256(canonical).hexdigest()}",
        weights=weights_id,
        revision=None if weights is None else hub_revision(weights),
    )
