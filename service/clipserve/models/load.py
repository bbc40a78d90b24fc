"""Loading a model for a spec through open_clip: its weights (fetched into the cache, or from it
when offline), its own preprocessing and its own tokenizer."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import HF_CONFIG_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import _get_safe_alternatives

from clipserve.models import dtypes, precision
from clipserve.models.clip import TORCH_DTYPES, ClipModel, ModelLoadError, trimmable_tower
from clipserve.models.devices import DeviceError, select_device
from clipserve.models.recipe import (
    Preprocessing,
    TokenizerInfo,
    build_tokenizer,
    model_preprocessing,
)
from clipserve.models.space import Space, model_space
from clipserve.models.spec import ModelSpec, parse_spec
from clipserve.sources import hub, weights
from clipserve.sources.download import DownloadError

log = logging.getLogger(__name__)


def available_specs() -> list[str]:
    """Every `ARCH:TAG` open_clip knows a download for."""
    return [f"{arch}:{tag}" for arch, tag in open_clip.list_pretrained()]


def imagenet_templates() -> tuple[str, ...]:
    """The prompt ensemble open_clip's ImageNet zero-shot evaluation uses (OpenAI's 80
    templates), with `{}` where the label goes."""
    return tuple(template("{}") for template in open_clip.OPENAI_IMAGENET_TEMPLATES)


def imagenet_classnames() -> tuple[str, ...]:
    """ImageNet's 1,000 class names as open_clip's zero-shot evaluation words them."""
    return tuple(open_clip.IMAGENET_CLASSNAMES)


def add_model_configs(path: str) -> None:
    """Register extra open_clip architecture configs (a JSON file or a folder of them)."""
    open_clip.add_model_config(path)


def _quick_gelu_for(spec: ModelSpec) -> bool:
    """Tags trained with QuickGELU (openai, laion400m_*, metaclip_*) must be built with it."""
    if spec.kind != "pretrained":
        return False
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    return bool(cfg.get("quick_gelu", False))


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


def load_model(
    spec: ModelSpec,
    *,
    device: str = "auto",
    dtype: str = "fp32",
    cache_dir: str | None = None,
    offline: bool = False,
) -> ClipModel:
    """Build the model for `spec` with its weights; raise ModelLoadError with a way forward.

    `dtype`: auto, fp32, fp16 or bf16 (models/precision.py); fp32 unless asked, so a library
    caller gets open_clip's own numbers (`serve` passes --dtype, auto by default).
    `offline`: weights and tokenizer files must already be in the cache; nothing is fetched.
    """
    try:
        dev = select_device(device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from exc
    try:
        chosen = dtypes.plan(dtype, dev)
    except dtypes.DtypeError as exc:
        raise ModelLoadError(str(exc)) from exc
    # On a CPU, bf16 is a cast of the fp32 model (weights and inputs; see precision.py), not
    # open_clip's mixed precision: build fp32 here and cast once loaded.
    build = "fp32" if dev.type == "cpu" else chosen.precision
    _check_known(spec)
    quick_gelu = _quick_gelu_for(spec)
    name, pretrained, tag_cfg = _weights_location(spec, cache_dir, offline)
    try:
        tokenizer, tokenizer_info = build_tokenizer(
            spec, name, cache_dir=cache_dir, offline=offline
        )
    except hub.HubFileMissing as exc:
        ways_out = "" if offline else _ways_out(spec, weights=False)
        raise ModelLoadError(f"{spec.raw}: {exc}{ways_out}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{spec.raw}: could not load its tokenizer ({_first_line(exc)})"
        ) from exc
    try:
        with _seeded(spec):
            model = open_clip.create_model(
                name,
                pretrained=pretrained,
                precision=build,
                device=dev,
                cache_dir=cache_dir,
                force_quick_gelu=quick_gelu,
                # a tag's weights arrive as a file path: keep the tag's preprocessing (mean, std)
                force_preprocess_cfg=tag_cfg,
                pretrained_text=False,
                require_pretrained=spec.kind != "random",
            )
    except RuntimeError as exc:
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
    preprocessing = model_preprocessing(spec, model)
    # Hashes a checkpoint file once per load (a hub blob is named by its hash): 1.2 s for
    # 512 MiB from the page cache on the 2-core development machine.
    space = model_space(
        name,
        pretrained,
        quick_gelu=quick_gelu,
        preprocessing=preprocessing,
        tokenizer=tokenizer_info,
    )
    log.info("%s: embedding space %s (weights %s)", spec.raw, space.digest, space.weights)
    wrapped = _wrap(
        spec, model, tokenizer, tokenizer_info, preprocessing, space, dev, build, quick_gelu
    )
    wrapped.dtype_reason = chosen.reason
    if chosen.check_bf16:
        wrapped.dtype_reason = precision.settle(wrapped, chosen.reason)
    elif chosen.precision != build:
        wrapped.cast(TORCH_DTYPES[chosen.precision])
    return wrapped


@contextlib.contextmanager
def _seeded(spec: ModelSpec) -> Iterator[None]:
    """Random weights drawn from a fixed seed (the caller's RNG state untouched): every process
    serving `ARCH:random` serves the same model, so replicas agree, benches compare, and auto's
    bf16 self-check (precision.py) gives one verdict for it."""
    if spec.kind != "random":
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


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
        raise ModelLoadError(f"{exc}{_ways_out(spec)}") from exc
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


def _ways_out(spec: ModelSpec, *, weights: bool = True) -> str:
    """What a user without a working download can do instead (other weights do not replace a
    missing tokenizer)."""
    fill = (
        f". Ways out: run `clipserve download --model {spec.raw}` where there is network and "
        "serve --offline from that cache (--cache-dir, CLIPSERVE_CACHE_DIR)"
    )
    if not weights:
        return fill
    return (
        f"{fill}; or give a local checkpoint ({spec.arch}:/path/to/ckpt.pt); or use "
        f"{spec.arch}:random for a smoke test"
    )


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
    model: Any,
    tokenizer: Any,
    tokenizer_info: TokenizerInfo,
    preprocessing: Preprocessing,
    space: Space,
    dev: torch.device,
    precision: str,
    quick_gelu: bool,
) -> ClipModel:
    dtype = TORCH_DTYPES[precision]
    mean = torch.tensor(preprocessing.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=dev).view(1, 3, 1, 1)
    embed_dim = int(getattr(model, "embed_dim", 0) or _probe_embed_dim(model, tokenizer, dev))
    bias = getattr(model, "logit_bias", None)
    return ClipModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        tokenizer_info=tokenizer_info,
        preprocessing=preprocessing,
        device=dev,
        precision=precision,
        logit_scale=float(model.logit_scale.exp().item()),
        logit_bias=None if bias is None else float(bias.item()),
        embed_dim=embed_dim,
        quick_gelu=quick_gelu,
        space=space,
        _scale=(1.0 / (255.0 * std)).to(dtype),
        _shift=(mean / std).to(dtype),
        _tower=trimmable_tower(model, tokenizer),
    )


@torch.inference_mode()
def _probe_embed_dim(model: Any, tokenizer: Any, dev: torch.device) -> int:
    return int(model.encode_text(tokenizer(["x"]).to(dev)).shape[-1])
