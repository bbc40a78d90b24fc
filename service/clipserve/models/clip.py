"""A loaded model and the few operations the service needs: tokenize, encode, score."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from clipserve.models.recipe import Preprocessing, TokenizerInfo
from clipserve.models.space import Space
from clipserve.models.spec import ModelSpec

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = {dtype: name for name, dtype in TORCH_DTYPES.items()}
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


class ModelLoadError(Exception):
    """A model could not be loaded; the message says what to do instead."""


@dataclass(frozen=True)
class _TextTower:
    """The parts of a causal text tower that the trimmed encoder runs (CLIP or TextTransformer)."""

    module: Any  # has token_embedding, positional_embedding, transformer, ln_final, ...
    pool_type: str
    eos_id: int | None


def trimmable_tower(model: Any, tokenizer: Any) -> _TextTower | None:
    """The text tower when trimming padding is exact for it, else None.

    Exact only with a causal mask, EOT/argmax pooling and no class token, for a tokenizer that
    pads with 0 after the text (open_clip's own): no token before the EOT attends to the
    padding after it, so dropping padding columns that every row has changes nothing. SigLIP
    (no causal mask, last-token pooling), MobileCLIP and CLIPA (no causal mask) and CoCa (a
    class token) attend to their padding: they always run the full context.
    """
    if not isinstance(tokenizer, SimpleTokenizer):
        return None
    if isinstance(model, open_clip.CLIP):
        tower = _TextTower(model, model.text_pool_type, getattr(model, "text_eos_id", None))
    elif isinstance(getattr(model, "text", None), open_clip.transformer.TextTransformer):
        text = model.text
        if text.cls_emb is not None or text.use_pad_mask:
            return None
        tower = _TextTower(text, text.pool_type, getattr(text, "eos_id", None))
    else:
        return None
    causal = getattr(tower.module, "attn_mask", None) is not None
    return tower if causal and tower.pool_type in ("argmax", "eos") else None


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
    tokenizer_info: TokenizerInfo
    preprocessing: Preprocessing
    device: torch.device
    precision: str
    logit_scale: float
    logit_bias: float | None  # set for sigmoid-trained models (SigLIP)
    embed_dim: int
    quick_gelu: bool
    space: Space  # the weights, preprocessing and tokenizer its vectors come from
    # uint8 pixels -> normalized input in one multiply-add: (x/255 - mean)/std = x*scale - shift
    _scale: torch.Tensor = field(repr=False)
    _shift: torch.Tensor = field(repr=False)
    _tower: _TextTower | None = field(repr=False)
    dtype_reason: str = ""  # why it runs in `precision` (auto's choice, or what was asked)
    compiled: str = field(default="off", init=False)  # the torch.compile mode, if any

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.precision]

    @property
    def image_size(self) -> int:
        """The input height (open_clip's models are square; `preprocessing` has both sides)."""
        return self.preprocessing.geometry.height

    @property
    def context_length(self) -> int:
        return self.tokenizer_info.context_length

    @property
    def objective(self) -> str:
        """`sigmoid` (each pair scored on its own, SigLIP) or `softmax` (over candidates, CLIP)."""
        return "softmax" if self.logit_bias is None else "sigmoid"

    def tokenize(self, texts: Sequence[str | torch.Tensor]) -> torch.Tensor:
        """Token ids [n, context_length]; longer texts are truncated as the tokenizer does;
        rows made by `token_row` are taken as they are."""
        strings = [t for t in texts if isinstance(t, str)]
        if len(strings) == len(texts):
            return self.tokenizer(strings)
        tokenized = iter(self.tokenizer(strings) if strings else ())
        return torch.stack([next(tokenized) if isinstance(t, str) else t for t in texts])

    def token_counts(self, tokens: torch.Tensor) -> list[int]:
        """Tokens each row uses, counting start/end tokens and not padding."""
        return (tokens != self.tokenizer_info.pad_id).sum(dim=1).tolist()

    def token_row(self, ids: Sequence[int]) -> torch.Tensor:
        """A text given as token ids (without start and end tokens, as OpenAI's token arrays)
        as one row of `tokenize`; ValueError if this model's tokenizer cannot take ids."""
        tok = self._clip_bpe("token ids cannot be taken; send text")
        vocab = min(tok.vocab_size, self.vocab_size)
        if (negative := next((i for i in ids if i < 0), None)) is not None:
            raise ValueError(f"token id {negative} is negative; ids are 0 to {vocab - 1}")
        if (foreign := next((i for i in ids if i >= vocab), None)) is not None:
            # OpenAI clients tokenize with tiktoken (ids up to ~200,000) before sending: such
            # ids, embedded as CLIP's, would give vectors of some other text, silently.
            raise ValueError(
                f"token id {foreign} is beyond this model's vocabulary (0 to {vocab - 1}): these "
                "look like another tokenizer's ids (e.g. tiktoken's, which LangChain's "
                "OpenAIEmbeddings sends by default), not CLIP's. Send the texts as strings "
                "(LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
            )
        row = torch.zeros(self.context_length, dtype=torch.long)
        tokens = [tok.sot_token_id, *ids[: self.context_length - 2], tok.eot_token_id]
        row[: len(tokens)] = torch.tensor(tokens)
        return row

    def text_ids(self, text: str) -> list[int]:
        """The text's token ids without start and end tokens and not truncated (CLIP's BPE,
        so that a caller can cut them from either side); ValueError for another tokenizer."""
        tok = self._clip_bpe("its texts cannot be cut to a token count here")
        return [int(i) for i in tok.encode(text)]

    def _clip_bpe(self, consequence: str) -> SimpleTokenizer:
        tok = self.tokenizer
        if not isinstance(tok, SimpleTokenizer) or tok.reduction_fn is not None:
            raise ValueError(
                f"{self.spec.raw} does not tokenize with CLIP's BPE ({type(tok).__name__}), "
                f"so {consequence}"
            )
        return tok

    @property
    def vocab_size(self) -> int:
        """Token ids the text tower embeds (CLIP's own, or a CustomTextCLIP's text tower)."""
        for owner in (self.model, getattr(self.model, "text", None)):
            embedding = getattr(owner, "token_embedding", None)
            if isinstance(embedding, torch.nn.Embedding):
                return embedding.num_embeddings
        return 0

    def probabilities(self, cosine: torch.Tensor) -> torch.Tensor:
        """Softmax over the candidates of exp(logit_scale) x cosine, for every model (the
        wire's `probabilities`; CLIP's objective, not SigLIP's: see `scores`)."""
        return torch.softmax(self.logit_scale * cosine, dim=-1)

    def scores(self, cosine: torch.Tensor) -> torch.Tensor:
        """The model's own scores for cosine similarities [queries, candidates].

        softmax: softmax(logit_scale * cos) over each row's candidates (CLIP's objective);
        sigmoid: sigmoid(logit_scale * cos + logit_bias), each pair on its own (SigLIP's).
        """
        if self.logit_bias is None:
            return self.probabilities(cosine)
        return torch.sigmoid(self.logit_scale * cosine + self.logit_bias)

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor, *, trim: bool = True) -> torch.Tensor:
        """Embed token ids; with `trim`, compute only up to the batch's longest sequence where
        that is exact (see `trimmable_tower`)."""
        tokens = tokens.to(self.device, non_blocking=True)
        if trim and self._tower is not None:
            out = _encode_text_trimmed(self._tower, tokens)
        else:
            out = self.model.encode_text(tokens)
        return out.float().cpu()

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed uint8 images [n, 3, H, W]; scaling and normalization happen on the device."""
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        x = pixels.to(self.device, non_blocking=True).to(self.dtype)
        x = x * self._scale - self._shift
        return self.model.encode_image(x).float().cpu()

    def cast(self, dtype: torch.dtype) -> Callable[[], None]:
        """Cast the weights, buffers and the uint8 normalization to `dtype` in place; the
        function returned puts the originals back, bit for bit.

        Call it outside inference mode: weights cast inside it are inference tensors, and the
        text tower then ran ~1.7x slower in bf16 on CPU (matmuls fell back to a copying bmm).
        """
        kept = _cast_tensors(self.model, dtype)
        before = (self.precision, self._scale, self._shift)
        self.precision = PRECISIONS[dtype]
        self._scale, self._shift = self._scale.to(dtype), self._shift.to(dtype)

        def restore() -> None:
            for store, key, tensor in kept:
                store[key] = tensor
            self.precision, self._scale, self._shift = before

        return restore

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
        if self._tower is not None and self._tower.module is not self.model:
            # the trimmed encoder reaches into the text tower, which was just replaced
            self._tower = trimmable_tower(self.model, self.tokenizer)
        self.compiled = mode

    def info(self) -> dict[str, Any]:
        """What /models reports about this model."""
        return {
            "spec": self.spec.raw,
            "architecture": self.spec.arch,
            "pretrained": self.spec.shown_tag,
            "random_weights": self.spec.kind == "random",
            "embedding_dim": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "quick_gelu": self.quick_gelu,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "objective": self.objective,
            "preprocess": self.preprocessing.info(),
            "tokenizer": self.tokenizer_info.info(),
            "text_trimmed": self._tower is not None,
            "device": str(self.device),
            "dtype": self.precision,
            "dtype_reason": self.dtype_reason,
            "compiled": self.compiled,
            "space": self.space.info(),
        }


def _cast_tensors(
    module: torch.nn.Module, dtype: torch.dtype
) -> list[tuple[dict[str, Any], str, torch.Tensor]]:
    """Replace every floating-point parameter and buffer with a `dtype` copy; the originals,
    with where each was. A tensor two modules share stays shared."""
    kept: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    copies: dict[int, torch.Tensor] = {}
    for m in module.modules():
        stores: tuple[dict[str, Any], ...] = (m._parameters, m._buffers)
        for store in stores:
            for key, tensor in store.items():
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                if id(tensor) not in copies:
                    cast = tensor.detach().to(dtype)
                    if isinstance(tensor, torch.nn.Parameter):
                        cast = torch.nn.Parameter(cast, requires_grad=tensor.requires_grad)
                    copies[id(tensor)] = cast
                kept.append((store, key, tensor))
                store[key] = copies[id(tensor)]
    return kept


def _encode_text_trimmed(t: _TextTower, tokens: torch.Tensor) -> torch.Tensor:
    m = t.module
    nonpad = (tokens != 0).int()
    # last non-padding position + 1, over the whole batch
    length = int((nonpad * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).max())
    length = max(length, 1)
    tokens = tokens[:, :length]
    cast = m.transformer.get_cast_dtype()
    x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
    x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
    x = m.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, tokens, t.pool_type, eos_token_id=t.eos_id)
    proj = m.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalize rows."""
    return torch.nn.functional.normalize(x, dim=-1)
