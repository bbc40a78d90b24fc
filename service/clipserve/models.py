"""Model specs and the one wrapper around open_clip: load a model, encode text and images.

Nothing else in clipserve imports open_clip. A spec is `ARCH:TAG` where TAG is an open_clip
pretrained tag (weights from the HF hub), an http(s) URL of a checkpoint (`#sha256=` optional),
a path to a checkpoint file or to a folder holding one, or `random`; the `hf-hub:org/repo` and
`local-dir:/path` forms of open_clip are accepted as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import HF_CONFIG_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import _get_safe_alternatives

from clipserve import weights
from clipserve.devices import DeviceError, select_device
from clipserve.download import DownloadError

log = logging.getLogger(__name__)

RANDOM_TAG = "random"
_SCHEMAS = ("hf-hub:", "local-dir:")


class ModelLoadError(Exception):
    """A model could not be loaded; the message says what to do instead."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; `raw` is what the user wrote and what the API reports."""

    raw: str
    arch: str
    tag: str | None  # pretrained tag, URL, checkpoint path, "random", or None for hf-hub/local-dir

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
            f"model spec {raw!r} must be ARCH:TAG (e.g. ViT-B-32:openai, ViT-B-32:/path/ckpt.pt, "
            "ViT-B-32:random) or hf-hub:org/repo"
        )
    spec = ModelSpec(raw=raw, arch=arch, tag=tag)
    if spec.kind == "url":
        weights.parse_url(tag)  # a malformed URL or #sha256= is refused before anything loads
    return spec


def check_spec(raw: str) -> ModelSpec:
    """Parse a spec and refuse one that names an unknown architecture or pretrained tag."""
    spec = parse_spec(raw)
    _check_known(spec)
    return spec


def _check_known(spec: ModelSpec) -> None:
    if spec.kind != "schema" and open_clip.get_model_config(spec.arch) is None:
        raise ModelLoadError(
            f"{spec.raw}: unknown architecture {spec.arch!r}; `clipserve models` lists them"
        )
    if spec.kind == "pretrained" and not open_clip.get_pretrained_cfg(spec.arch, spec.tag):
        known = open_clip.list_pretrained_tags_by_model(spec.arch)
        raise ModelLoadError(
            f"{spec.raw}: unknown pretrained tag {spec.tag!r} for {spec.arch} "
            f"(known: {', '.join(known) or 'none'}); or give a checkpoint path, or 'random'"
        )


def weight_sources(spec: ModelSpec) -> list[weights.Source]:
    """The remote files a spec's weights come from (none for random and local weights)."""
    if spec.kind == "url":
        return [weights.parse_url(spec.tag or "")]
    if spec.kind == "pretrained":
        hf_hub = open_clip.get_pretrained_cfg(spec.arch, spec.tag).get("hf_hub")
        if not hf_hub:
            return []
        # as open_clip reads it: "org/repo/" (its default file name) or "org/repo/file.bin"
        repo, name = os.path.split(hf_hub)
        return [weights.HubFile(repo, _with_safe_alternatives(name or HF_WEIGHTS_NAME))]
    if spec.kind == "schema" and spec.arch.startswith("hf-hub:"):
        repo = spec.arch.removeprefix("hf-hub:")
        return [
            weights.HubFile(repo, (HF_CONFIG_NAME,)),
            weights.HubFile(repo, _with_safe_alternatives(HF_WEIGHTS_NAME)),
        ]
    return []


def _with_safe_alternatives(name: str) -> tuple[str, ...]:
    """open_clip's order of preference: the file's safetensors twin first, when it has one."""
    return (*_get_safe_alternatives(name), name)


def available_specs() -> list[str]:
    """Every `ARCH:TAG` open_clip knows a download for."""
    return [f"{arch}:{tag}" for arch, tag in open_clip.list_pretrained()]


def imagenet_templates() -> tuple[str, ...]:
    """The prompt ensemble open_clip's ImageNet zero-shot evaluation uses (OpenAI's 80
    templates), with `{}` where the label goes."""
    return tuple(template("{}") for template in open_clip.OPENAI_IMAGENET_TEMPLATES)


def add_model_configs(path: str) -> None:
    """Register extra open_clip architecture configs (a JSON file or a folder of them)."""
    open_clip.add_model_config(path)


def resolve_precision(dtype: str, device: torch.device) -> str:
    """fp16 on CUDA, fp32 on CPU, unless the user chose; half precision is refused on CPU."""
    if dtype == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if dtype not in ("fp32", "fp16", "bf16"):
        raise ModelLoadError(f"dtype {dtype!r} is not one of auto, fp32, fp16, bf16")
    return dtype


_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass
class ClipModel:
    """A loaded CLIP model with the few operations the service needs.

    encode_* run in the batcher's compute thread; they take CPU tensors and return float32
    CPU embeddings (not normalized).
    """

    spec: ModelSpec
    # open_clip's CLIP / CustomTextCLIP (towers and attributes differ by class) and tokenizers
    # (HF, SigLIP, CLIP BPE) share no typed interface: Any, not a cast at every use.
    model: Any
    tokenizer: Any
    device: torch.device
    precision: str
    image_size: int
    context_length: int
    logit_scale: float
    embed_dim: int
    quick_gelu: bool
    # uint8 pixels -> normalized input in one multiply-add: (x/255 - mean)/std = x*scale - shift
    _scale: torch.Tensor = field(repr=False)
    _shift: torch.Tensor = field(repr=False)
    compiled: str = field(default="off", init=False)  # the torch.compile mode, if any

    @property
    def dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.precision]

    def tokenize(self, texts: Sequence[str | torch.Tensor]) -> torch.Tensor:
        """Token ids [n, context_length]; longer texts are truncated as CLIP does (EOT kept);
        rows made by `token_row` are taken as they are."""
        strings = [t for t in texts if isinstance(t, str)]
        if len(strings) == len(texts):
            return self.tokenizer(strings)
        tokenized = iter(self.tokenizer(strings) if strings else ())
        return torch.stack([next(tokenized) if isinstance(t, str) else t for t in texts])

    def token_row(self, ids: Sequence[int]) -> torch.Tensor:
        """A text given as token ids (without start and end tokens, as OpenAI's token arrays)
        as one row of `tokenize`; ValueError if this model's tokenizer cannot take ids."""
        tok = self.tokenizer
        if not isinstance(tok, open_clip.SimpleTokenizer) or tok.reduction_fn is not None:
            raise ValueError(
                f"{self.spec.raw} does not tokenize with CLIP's BPE ({type(tok).__name__}), "
                "so token ids cannot be taken; send text"
            )
        vocab = min(tok.vocab_size, self.vocab_size)
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is not in the vocabulary (0 to {vocab - 1})")
        row = torch.zeros(self.context_length, dtype=torch.long)
        tokens = [tok.sot_token_id, *ids[: self.context_length - 2], tok.eot_token_id]
        row[: len(tokens)] = torch.tensor(tokens)
        return row

    @property
    def vocab_size(self) -> int:
        """Token ids the text tower embeds."""
        embedding = getattr(self.model, "token_embedding", None)
        return embedding.num_embeddings if isinstance(embedding, torch.nn.Embedding) else 0

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Scores from cosine similarities [queries, candidates] as the model was trained to
        give them: softmax over the candidates of exp(logit_scale) x cosine."""
        return torch.softmax(self.logit_scale * cosine, dim=-1)

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor, *, trim: bool = True) -> torch.Tensor:
        """Embed token ids; with `trim`, compute only up to the batch's longest sequence."""
        tokens = tokens.to(self.device, non_blocking=True)
        if trim and self._can_trim():
            out = self._encode_text_trimmed(tokens)
        else:
            out = self.model.encode_text(tokens)
        return out.float().cpu()

    def _can_trim(self) -> bool:
        # Exact only for open_clip's own text tower with a causal mask and EOT/argmax pooling:
        # no token before the EOT attends to the padding after it, so dropping padding columns
        # that every row has changes nothing.
        m = self.model
        return (
            isinstance(m, open_clip.CLIP)
            and getattr(m, "attn_mask", None) is not None
            and getattr(m, "text_pool_type", "argmax") in ("argmax", "eos")
        )

    def _encode_text_trimmed(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        nonpad = (tokens != 0).int()
        # last non-padding position + 1, over the whole batch
        length = int((nonpad * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).max())
        length = max(length, 1)
        tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = open_clip.transformer.text_global_pool(
            x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None)
        )
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed uint8 images [n, 3, S, S]; scaling and normalization happen on the device."""
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        x = pixels.to(self.device, non_blocking=True).to(self.dtype)
        x = x * self._scale - self._shift
        return self.model.encode_image(x).float().cpu()

    def compile(self, mode: str) -> None:
        """torch.compile the towers in place (the first calls then compile; warm up after).

        The towers, not encode_*: the trimmed text path and the uint8 normalisation stay
        eager around them. Dynamic shapes, so batch size and text length do not each compile
        a graph of their own (batch 1 still gets its own: torch specialises sizes 0 and 1).
        """
        if mode not in COMPILE_MODES:
            raise ModelLoadError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
        if mode == "off":
            return
        for tower in ("visual", "transformer", "text"):  # "text": open_clip's CustomTextCLIP
            module = getattr(self.model, tower, None)
            if isinstance(module, torch.nn.Module):
                setattr(self.model, tower, torch.compile(module, mode=mode, dynamic=True))
        self.compiled = mode

    def info(self) -> dict[str, Any]:
        """What /models reports about this model."""
        return {
            "spec": self.spec.raw,
            "architecture": self.spec.arch,
            "pretrained": self.spec.tag,
            "random_weights": self.spec.kind == "random",
            "embedding_dim": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "quick_gelu": self.quick_gelu,
            "logit_scale": self.logit_scale,
            "device": str(self.device),
            "dtype": self.precision,
            "compiled": self.compiled,
        }


def _quick_gelu_for(spec: ModelSpec) -> bool:
    """Tags trained with QuickGELU (openai, laion400m_*, metaclip_*) must be built with it."""
    if spec.kind != "pretrained":
        return False
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    return bool(cfg.get("quick_gelu", False))


def load_model(
    spec: ModelSpec,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | None = None,
    offline: bool = False,
) -> ClipModel:
    """Build the model for `spec` with its weights; raise ModelLoadError with a way forward.

    `offline`: a URL's weights must already be in the cache; nothing is fetched.
    """
    try:
        dev = select_device(device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from exc
    precision = resolve_precision(dtype, dev)
    if precision != "fp32" and dev.type == "cpu":
        raise ModelLoadError(f"dtype {precision} is not supported on CPU; use fp32")
    _check_known(spec)
    quick_gelu = _quick_gelu_for(spec)
    name, pretrained, tag_cfg = _weights_location(spec, cache_dir, offline)
    try:
        model = open_clip.create_model(
            name,
            pretrained=pretrained,
            precision=precision,
            device=dev,
            cache_dir=cache_dir,
            force_quick_gelu=quick_gelu,
            # a tag's weights arrive as a file path: keep the tag's preprocessing (mean, std, ...)
            force_preprocess_cfg=tag_cfg,
            pretrained_text=False,
            require_pretrained=spec.kind != "random",
        )
    except RuntimeError as exc:
        if "not found in built-ins" in str(exc):
            raise ModelLoadError(
                f"{spec.raw}: unknown architecture {spec.arch!r}; `clipserve models` lists them"
            ) from exc
        raise ModelLoadError(
            f"{spec.raw}: could not load weights ({_first_line(exc)}). Offline? Point "
            f"CLIPSERVE_CACHE_DIR at a cache that holds them, give a local checkpoint "
            f"({spec.arch}:/path/to/ckpt.pt), or use {spec.arch}:random for a smoke test"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{spec.raw}: could not load ({_first_line(exc)})") from exc
    model.eval()
    if spec.kind == "random":
        log.warning("%s: serving RANDOM weights; embeddings are meaningless", spec.raw)
    return _wrap(spec, name, model, dev, precision, quick_gelu)


def _weights_location(
    spec: ModelSpec, cache_dir: str | None, offline: bool
) -> tuple[str, str | None, dict[str, object] | None]:
    """(model name, weights file, the tag's config) for open_clip, fetching what is missing.

    Hub and URL files go through `weights` (resumable, verified, refused when offline); an
    hf-hub: model is then loaded from its cache snapshot as open_clip's local-dir:.
    """
    if spec.kind == "checkpoint":
        return spec.arch, str(_local_checkpoint(spec)), None
    sources = weight_sources(spec)
    try:
        files = [weights.ensure(spec.raw, src, cache_dir, offline=offline) for src in sources]
    except weights.WeightsMissing as exc:
        raise ModelLoadError(str(exc)) from exc
    except DownloadError as exc:
        raise ModelLoadError(
            f"{exc}. Offline? Fill CLIPSERVE_CACHE_DIR with `clipserve download` and serve "
            f"--offline, give a local checkpoint ({spec.arch}:/path/to/ckpt.pt), or use "
            f"{spec.arch}:random for a smoke test"
        ) from exc
    if spec.kind == "pretrained":
        return spec.arch, str(files[0]), open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    if spec.kind == "url":
        return spec.arch, str(files[0]), None
    if files:  # hf-hub: its config and weights side by side in one snapshot folder
        if len({f.parent for f in files}) != 1:
            raise ModelLoadError(
                f"{spec.raw}: the cached config and weights come from different commits "
                f"({', '.join(str(f) for f in files)}); run `clipserve download` again"
            )
        return f"local-dir:{files[0].parent}", None, None
    return spec.arch, None, None


def _local_checkpoint(spec: ModelSpec) -> Path:
    """A checkpoint file, or the one weights file in a folder (e.g. a mounted model image)."""
    path = Path(spec.tag or "").expanduser()
    if path.is_dir():
        try:
            return weights.weights_in_folder(path)
        except weights.WeightsMissing as exc:
            raise ModelLoadError(f"{spec.raw}: {exc}") from exc
    if not path.is_file():
        raise ModelLoadError(f"{spec.raw}: checkpoint file {spec.tag} does not exist")
    return path


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _wrap(
    spec: ModelSpec,
    name: str,
    model: Any,
    dev: torch.device,
    precision: str,
    quick_gelu: bool,
) -> ClipModel:
    pcfg = open_clip.get_model_preprocess_cfg(model)
    size = pcfg["size"]
    size = size if isinstance(size, int) else size[0]
    dtype = _TORCH_DTYPES[precision]
    mean = torch.tensor(pcfg["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(pcfg["std"], device=dev).view(1, 3, 1, 1)
    tokenizer = open_clip.get_tokenizer(name)  # local-dir: for a cached hf-hub model
    embed_dim = int(getattr(model, "embed_dim", 0) or _probe_embed_dim(model, tokenizer, dev))
    return ClipModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        device=dev,
        precision=precision,
        image_size=int(size),
        context_length=int(tokenizer.context_length),
        logit_scale=float(model.logit_scale.exp().item()),
        embed_dim=embed_dim,
        quick_gelu=quick_gelu,
        _scale=(1.0 / (255.0 * std)).to(dtype),
        _shift=(mean / std).to(dtype),
    )


@torch.inference_mode()
def _probe_embed_dim(model: Any, tokenizer: Any, dev: torch.device) -> int:
    return int(model.encode_text(tokenizer(["x"]).to(dev)).shape[-1])


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalize rows."""
    return F.normalize(x, dim=-1)
