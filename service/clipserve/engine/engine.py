"""The served models and the work behind every endpoint: items in, embeddings and scores out.

Handlers call one method here, which checks item counts, looks the model up and normalizes.
Models load in a worker thread at start-up (startup.py); each model gets a batcher whose compute
workers run its forward passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from clipserve.engine import classify, startup
from clipserve.engine.batching import ModelBatcher
from clipserve.engine.cache import EmbeddingCache
from clipserve.engine.inputs import IMAGE, TEXT, FetchTurns, InputDecoder, Tokens
from clipserve.errors import InvalidInput, Overloaded, PayloadTooLarge, UnknownModel
from clipserve.metrics import Metrics
from clipserve.models import ClipModel, ModelSpec, available_specs, imagenet_templates
from clipserve.models import normalize as l2_normalize
from clipserve.models.images import ImageLimits
from clipserve.redact import redact
from clipserve.schemas import (
    BatchingInfo,
    CacheInfo,
    Item,
    LabelScore,
    ModelInfo,
    ModelsResponse,
    PreprocessInfo,
    SpaceInfo,
    TokenizerInfo,
)
from clipserve.settings import Settings
from clipserve.sources.byte_budget import ByteBudget
from clipserve.sources.fetch import FetchPolicy, ImageFetcher
from clipserve.tracing import OFF, Tracing


@dataclass(frozen=True)
class Embedded:
    """A request's items, embedded: rows in request order."""

    model: str  # the spec that embedded them (the X-Clip-Model header)
    vectors: torch.Tensor  # [items, dim]
    tokens: int  # tokens the texts used, counting start and end tokens


@dataclass(frozen=True)
class Ranked:
    """Every candidate scored against every query: [queries, candidates] each."""

    model: str
    probabilities: torch.Tensor  # softmax over the candidates (the wire's field)
    scores: torch.Tensor  # the model's own (ClipModel.scores): the probabilities, or sigmoid
    objective: str
    cosine: torch.Tensor


@dataclass(frozen=True)
class Classified:
    """Per image, every label with its probability, most likely first."""

    model: str
    predictions: list[list[LabelScore]]
    objective: str


class Engine:
    """Owns models, batchers, the preprocessing pool and the image fetcher."""

    def __init__(
        self,
        settings: Settings,
        specs: list[ModelSpec],
        metrics: Metrics,
        tracing: Tracing = OFF,
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.metrics = metrics
        self.tracing = tracing
        self.models: dict[str, ClipModel] = {}
        self.batchers: dict[str, ModelBatcher] = {}
        self.loaded_at: dict[str, int] = {}  # spec -> Unix time it became ready
        self.cache = EmbeddingCache(int(settings.cache_mb * 2**20), metrics)
        self._pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        self._fetcher = ImageFetcher(
            FetchPolicy(
                connect_timeout_s=settings.fetch_connect_timeout_s,
                read_timeout_s=settings.fetch_timeout_s,
                total_timeout_s=settings.fetch_timeout_s,
                max_bytes=settings.max_image_bytes,
                max_redirects=settings.fetch_max_redirects,
                allow=settings.fetch_allow,
            ),
            budget=ByteBudget(settings.fetch_buffer_bytes),
            tracing=tracing,
        )
        self._decoder = InputDecoder(
            fetcher=self._fetcher,
            limits=ImageLimits(
                max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            ),
            max_text_chars=settings.max_text_chars,
            pool=self._pool,
            cache=self.cache,
            metrics=metrics,
            fetches_per_request=settings.fetch_concurrency,
            tracing=tracing,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @staticmethod
    def single_threaded_here() -> None:
        """Keep the calling thread's torch work (the event loop's: stacking rows, /rank's
        scores) on one thread: a second OpenMP team would slow the compute workers' down."""
        torch.set_num_threads(1)

    def load(self) -> None:
        """Load and warm every model, then start its batcher (blocking; run in a thread)."""
        startup.load_all(self.settings, self.specs, self.metrics, self._serve, self.tracing)

    def _serve(self, name: str, model: ClipModel, batcher: ModelBatcher) -> None:
        """Take a loaded model and its started batcher into service (in the loader thread)."""
        self.models[name] = model
        self.batchers[name] = batcher
        self.loaded_at[name] = int(time.time())

    @property
    def loaded(self) -> bool:
        """Every model is loaded and warm."""
        return len(self.models) == len(self.specs)

    @property
    def failure(self) -> str | None:
        """Why a model can no longer serve (a compute thread died, its device failed), or None."""
        for name, batcher in self.batchers.items():
            if (why := batcher.failure) is not None:
                return f"model {name}: {why}"
        return None

    def stop(self) -> None:
        """Let batchers finish their queues, then release threads (blocking)."""
        for batcher in self.batchers.values():
            batcher.stop(timeout=self.settings.drain_timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """Release network resources."""
        await self._fetcher.aclose()

    # -- work ------------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        return self.specs[0].raw

    async def encode(
        self, items: Sequence[Item | Tokens], *, model: str | None, normalize: bool, where: str
    ) -> Embedded:
        """Embeddings for a request's items, in order, by the model it names."""
        self._check_count(len(items), where)
        served = self._model(model)
        vectors, tokens = await self._embed(served, items, where)
        return Embedded(served.spec.raw, l2_normalize(vectors) if normalize else vectors, tokens)

    async def rank(
        self,
        queries: Sequence[Item | Tokens],
        candidates: Sequence[Item | Tokens],
        *,
        model: str | None,
    ) -> Ranked:
        """Cosines, softmax probabilities over the candidates and the model's own scores,
        one row per query."""
        self._check_count(len(queries), "queries")
        self._check_count(len(candidates), "candidates")
        self._check_count(len(queries) + len(candidates), "queries+candidates")
        served = self._model(model)
        turns = self._decoder.fetch_turns()  # --fetch-concurrency is per request, not per list
        (q, _), (c, _) = await asyncio.gather(
            self._embed(served, queries, "queries", turns),
            self._embed(served, candidates, "candidates", turns),
        )
        cosine = l2_normalize(q) @ l2_normalize(c).T
        return Ranked(
            served.spec.raw,
            served.probabilities(cosine),
            served.scores(cosine),
            served.objective,
            cosine,
        )

    async def classify(
        self,
        images: list[Item],
        labels: list[str],
        templates: list[str] | None,
        *,
        model: str | None,
    ) -> Classified:
        """Zero-shot: each image against the labels' prompt ensembles (see classify.py)."""
        self._check_count(len(images), "images")
        self._check_count(len(labels), "labels")
        for i, item in enumerate(images):
            if item.text is not None:
                raise InvalidInput(f"images[{i}]: is a text; /classify takes images (see /rank)")
        prompts = classify.prompts(
            labels,
            imagenet_templates() if templates is None else templates,
            max_items=self.settings.max_items,
            max_chars=self.settings.max_text_chars,
        )
        served = self._model(model)
        (pictures, _), label_vectors = await asyncio.gather(
            self._embed(served, images, "images"), self._embed_prompts(served, prompts)
        )
        cosine = l2_normalize(pictures) @ classify.ensemble(label_vectors, len(labels)).T
        scores = classify.ranked(served.scores(cosine), labels)
        return Classified(served.spec.raw, scores, served.objective)

    def describe(self, *, available: bool) -> ModelsResponse:
        """What /models reports: each model, how it is batched, optionally every downloadable."""
        infos = []
        for name, model in self.models.items():
            b = self.batchers[name]
            infos.append(
                ModelInfo(
                    **_model_info(model),
                    default=name == self.default_model,
                    batching=BatchingInfo(
                        max_batch_size=b.limits.max_batch_size,
                        max_wait_ms=b.limits.max_wait_s * 1000,
                        max_queue=b.max_queue,
                        compute_workers=b.workers,
                        compute_threads=b.threads,
                    ),
                )
            )
        cache = CacheInfo(
            max_mb=self.settings.cache_mb,
            enabled=self.cache.enabled,
            entries=len(self.cache),
            used_bytes=self.cache.bytes,
        )
        return ModelsResponse(
            models=infos, cache=cache, available=available_specs() if available else None
        )

    def served(self, name: str | None) -> str:
        """The spec of the model a request names; UnknownModel (404) if none matches."""
        return self._model(name).spec.raw

    def space(self, spec: str) -> str:
        """The embedding-space digest of the served model `spec` (X-Clip-Space)."""
        return self.models[spec].space.digest

    def gpu_memory(self) -> dict[str, int]:
        """Bytes torch has allocated on each CUDA device a model runs on."""
        return {
            str(m.device): torch.cuda.memory_allocated(m.device)
            for m in self.models.values()
            if m.device.type == "cuda"
        }

    def _model(self, name: str | None) -> ClipModel:
        """The model a request names (full spec or unambiguous architecture); default first."""
        if not self.loaded:
            raise Overloaded("models are still loading; retry shortly", retry_after_s=2)
        if name is None:
            name = self.default_model
        name = redact(name)  # models are named as shown: a URL spec without its credentials
        if name in self.models:
            return self.models[name]
        by_arch = [m for m in self.models.values() if m.spec.arch == name]
        if len(by_arch) == 1:
            return by_arch[0]
        served = ", ".join(self.models) or "none loaded yet"
        raise UnknownModel(f"model: {name!r} is not served here (served: {served})")

    def _check_count(self, count: int, where: str) -> None:
        """Reject empty and oversized item lists before any work is done."""
        if count == 0:
            raise InvalidInput(f"{where}: is empty; give at least one item")
        if count > self.settings.max_items:
            raise PayloadTooLarge(
                f"{where}: {count} items; the limit is {self.settings.max_items} per request"
            )

    async def _embed(
        self,
        model: ClipModel,
        items: Sequence[Item | Tokens],
        where: str,
        turns: FetchTurns | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Embeddings [n, dim] for items, in order, and the tokens their texts used; from the
        cache where it has them, and into it for the rest."""
        prepared = await self._decoder.prepare(items, model, where, turns)
        batcher = self.batchers[model.spec.raw]
        # Back into request order with one stack: indexed assignment into a tensor cost the
        # event loop ~13% of its time at c=32 (profiled).
        ordered: list[torch.Tensor] = [None] * len(items)  # type: ignore[list-item]
        tokens = 0
        groups: dict[str, list[int]] = {TEXT: [], IMAGE: []}
        for i, p in enumerate(prepared):
            if p.cached is None:
                groups[p.modality].append(i)
            else:
                ordered[i] = p.cached.vector
                tokens += p.cached.tokens
        groups = {m: idx for m, idx in groups.items() if idx}
        results = await asyncio.gather(
            *(batcher.submit(m, [prepared[i].payload for i in idx]) for m, idx in groups.items())
        )
        for idx, rows in zip(groups.values(), results, strict=True):
            for i, row in zip(idx, rows, strict=True):
                ordered[i] = row.vector
                tokens += row.tokens
                if (key := prepared[i].key) is not None:
                    self.cache.put(key, row.vector, row.tokens)
        return torch.stack(ordered), tokens

    async def _embed_prompts(self, model: ClipModel, prompts: list[str]) -> torch.Tensor:
        """Many texts, a queue's worth at a time: one request's thousands of label prompts
        neither overflow the queue (503) nor hold every other client back until they are done."""
        chunk = max(1, self.settings.max_queue // 2)
        parts = []
        for start in range(0, len(prompts), chunk):
            texts = [Item(text=t) for t in prompts[start : start + chunk]]
            parts.append((await self._embed(model, texts, "labels"))[0])
        return torch.cat(parts)


def _model_info(model: ClipModel) -> dict[str, Any]:
    info = model.info()
    return {
        **info,
        "preprocess": PreprocessInfo(**info["preprocess"]),
        "tokenizer": TokenizerInfo(**info["tokenizer"]),
        "space": SpaceInfo(**info["space"]),
    }
