"""How a model was trained, read from open_clip's own configs: image preprocessing and tokenizer.

A pretrained tag carries its preprocess config (SigLIP, CLIPA, PE-Core and DFN squash the image;
MobileCLIP, CLIPA and PE-Core resize with BILINEAR; mean/std differ by family); `hf-hub:` and
`local-dir:` models carry theirs in open_clip_config.json. A checkpoint file or `random` has
none: they get the one every pretrained tag of the architecture agrees on, else open_clip's
default, and /models says which (`preprocess.source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from open_clip.transform import PreprocessCfg, merge_preprocess_dict

from clipserve.models.images import Geometry
from clipserve.models.spec import ModelSpec
from clipserve.sources.hub import fetch_tokenizer

# The fields of a pretrained config that say how images were preprocessed.
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass(frozen=True)
class Preprocessing:
    """A model's image preprocessing: the geometry (done on the CPU) and mean/std (on device)."""

    geometry: Geometry
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # where the config came from, as /models reports it

    def info(self) -> dict[str, Any]:
        """What /models shows."""
        g = self.geometry
        return {
            "size": [g.height, g.width],
            "resize_mode": g.resize_mode,
            "interpolation": g.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "fill_color": g.fill,
            "source": self.source,
        }


def preprocessing_from_cfg(cfg: dict[str, Any], source: str) -> Preprocessing:
    """open_clip's preprocess config (PreprocessCfg fields) -> Preprocessing."""
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mean, std = cfg["mean"], cfg["std"]
    fill = cfg.get("fill_color", 0)
    return Preprocessing(
        geometry=Geometry(
            height,
            width,
            resize_mode=cfg.get("resize_mode", "shortest"),
            interpolation=cfg.get("interpolation", "bicubic"),
            fill=int(fill),
        ),
        mean=_triple(mean),
        std=_triple(std),
        source=source,
    )


def _triple(v: float | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    values = (float(v),) * 3 if isinstance(v, int | float) else tuple(float(x) for x in v)
    if len(values) != 3:
        raise ValueError(f"mean/std must have 3 channels, got {values}")
    return values


def tag_preprocess_cfg(arch: str, tag: str, size: int | tuple[int, int]) -> dict[str, Any]:
    """The preprocess config open_clip applies for `arch:tag` at the model's image `size`."""
    cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(arch, tag))
    return {**cfg, "size": size}


def model_preprocessing(spec: ModelSpec, model: torch.nn.Module) -> Preprocessing:
    """The preprocessing `model` (loaded for `spec`) was trained with, as far as can be known."""
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    if spec.kind == "pretrained":
        assert spec.tag is not None
        return preprocessing_from_cfg(
            tag_preprocess_cfg(spec.arch, spec.tag, cfg["size"]), f"pretrained tag {spec.tag}"
        )
    if spec.kind == "schema":
        return preprocessing_from_cfg(cfg, "the model's open_clip_config.json")
    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    per_tag = {
        tuple(str(open_clip.get_pretrained_cfg(spec.arch, t).get(k)) for k in _PREPROCESS_KEYS)
        for t in tags
    }
    if len(per_tag) == 1:
        agreed = tag_preprocess_cfg(spec.arch, tags[0], cfg["size"])
        return preprocessing_from_cfg(agreed, f"every pretrained tag of {spec.arch}")
    why = "tags disagree" if tags else "no pretrained tags"
    return preprocessing_from_cfg(cfg, f"open_clip's default ({spec.arch}: {why})")


@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer a model uses, as /models reports it."""

    kind: str  # "clip-bpe" (open_clip's own, bundled) or "huggingface"
    name: str  # the HF repo, or open_clip's tokenizer class
    context_length: int
    pad_id: int

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "context_length": self.context_length}


def _text_cfg(name: str) -> dict[str, Any]:
    """The text config of open_clip model `name` (built-in, or local-dir: with its json)."""
    if name.startswith("hf-hub:"):
        return {}  # not in the cache: open_clip's to fetch
    return (open_clip.get_model_config(name) or {}).get("text_cfg", {})


def tokenizer_repo(spec: ModelSpec) -> str | None:
    """The Hugging Face repo of a built-in architecture's tokenizer, if it has one (what a
    download step fetches with `hub.fetch_tokenizer` ahead of `serve --offline`)."""
    return None if spec.kind == "schema" else _text_cfg(spec.arch).get("hf_tokenizer_name")


def build_tokenizer(
    spec: ModelSpec, name: str, *, cache_dir: str | None, offline: bool
) -> tuple[Any, TokenizerInfo]:
    """The model's own tokenizer and context length, for `spec` loaded as open_clip's `name`.

    HF tokenizer files are fetched into the cache like weights (hub.HubFileMissing when they
    are not there and may not be fetched); a local-dir: model of the user's holds its own.
    """
    text_cfg = _text_cfg(name)
    repo = text_cfg.get("hf_tokenizer_name")
    if repo and not spec.arch.startswith("local-dir:"):
        # open_clip's get_tokenizer would download the files itself, out of --offline's reach
        folder = fetch_tokenizer(repo, cache_dir=cache_dir, offline=offline)
        tokenizer: Any = HFTokenizer(
            str(folder),
            context_length=text_cfg.get("context_length", 77),
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **text_cfg.get("tokenizer_kwargs", {}),
        )
    else:
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
        repo = getattr(getattr(tokenizer, "tokenizer", None), "name_or_path", None)
    if isinstance(tokenizer, SimpleTokenizer):
        return tokenizer, TokenizerInfo("clip-bpe", "open_clip SimpleTokenizer", _ctx(tokenizer), 0)
    pad = getattr(tokenizer.tokenizer, "pad_token_id", None)
    return tokenizer, TokenizerInfo("huggingface", str(repo), _ctx(tokenizer), int(pad or 0))


def _ctx(tokenizer: Any) -> int:
    return int(tokenizer.context_length)
