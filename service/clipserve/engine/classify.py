"""Zero-shot classification: label prompts from templates, their ensemble, sorted results.

As open_clip's zero-shot evaluation builds its classifier: each label goes into every
template, the prompts are embedded and L2-normalized, averaged per label and renormalized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipserve.errors import InvalidInput, PayloadTooLarge
from clipserve.models import normalize
from clipserve.schemas import LabelScore

PLACEHOLDER = "{}"
# labels x templates allowed per request, per --max-items: ImageNet's 1,000 classes with
# open_clip's 80 templates fit the default (102,400).
PROMPTS_PER_ITEM = 100
# UTF-8 bytes of all prompts together allowed per request, per --max-items (16 MiB at the
# default): ImageNet's 80,000 prompts are 2.4 MB. A request's prompts can be hundreds of times
# its own size (320 labels and 320 templates of 1.5 KB: a 1 MB body, 300 MB of prompts).
PROMPT_BYTES_PER_ITEM = 16 * 1024


def prompts(
    labels: Sequence[str], templates: Sequence[str], *, max_items: int, max_chars: int
) -> list[str]:
    """Every label in every template, label by label; 4xx naming the field if unusable.

    Every limit is checked from the labels' and templates' own sizes before a prompt is built.
    """
    _check_fields(labels, templates)
    count, limit = len(labels) * len(templates), max_items * PROMPTS_PER_ITEM
    if count > limit:
        raise PayloadTooLarge(
            f"labels x templates: {len(labels)} x {len(templates)} = {count} prompts; "
            f"the limit is {limit} per request"
        )
    _check_longest(labels, templates, max_chars)
    _check_total_bytes(labels, templates, max_items * PROMPT_BYTES_PER_ITEM)
    return [t.replace(PLACEHOLDER, label) for label in labels for t in templates]


def _check_fields(labels: Sequence[str], templates: Sequence[str]) -> None:
    if not labels:
        raise InvalidInput("labels: is empty; give at least one label")
    if not templates:
        raise InvalidInput('templates: is empty; omit it for the default ensemble or give ["{}"]')
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if not label.strip():
            raise InvalidInput(f"labels[{i}]: is blank")
        if label in seen:
            raise InvalidInput(f"labels[{i}]: {label!r} repeats labels[{seen[label]}]")
        seen[label] = i
    for i, template in enumerate(templates):
        if PLACEHOLDER not in template:
            raise InvalidInput(
                f"templates[{i}]: {template!r} has no {{}} where the label goes "
                '(e.g. "a photo of a {}.")'
            )


def _check_longest(labels: Sequence[str], templates: Sequence[str], max_chars: int) -> None:
    """The longest prompt is the longest label in the template that grows most with it (every
    `{}` of a template takes the label, as str.replace puts it)."""
    i = max(range(len(labels)), key=lambda k: len(labels[k]))
    grow = len(labels[i]) - len(PLACEHOLDER)
    sizes = [len(t) + t.count(PLACEHOLDER) * grow for t in templates]
    k = max(range(len(templates)), key=sizes.__getitem__)
    if sizes[k] > max_chars:
        raise PayloadTooLarge(
            f"labels[{i}]: the prompt for {labels[i][:40]!r} in templates[{k}] has {sizes[k]} "
            f"characters; the limit is {max_chars}"
        )


def _check_total_bytes(labels: Sequence[str], templates: Sequence[str], budget: int) -> None:
    """Sum over every (label, template) of the template's bytes plus, per `{}`, the label's
    bytes in its place."""
    template_bytes = sum(_utf8(t) for t in templates)
    placeholders = sum(t.count(PLACEHOLDER) for t in templates)
    label_growth = sum(_utf8(label) - len(PLACEHOLDER) for label in labels)
    total = len(labels) * template_bytes + placeholders * label_growth
    if total > budget:
        raise PayloadTooLarge(
            f"labels x templates: {len(labels)} x {len(templates)} prompts of {total} bytes in "
            f"all; the limit is {budget} bytes per request (use fewer or shorter labels or "
            "templates)"
        )


def _utf8(text: str) -> int:
    """UTF-8 size of a text (lone surrogates, which JSON allows, as the cache encodes them)."""
    return len(text.encode("utf-8", "surrogatepass"))


def ensemble(embeddings: torch.Tensor, labels: int) -> torch.Tensor:
    """Prompt embeddings [labels * templates, dim] (label by label) -> label vectors
    [labels, dim]: the mean of each label's normalized prompt embeddings, renormalized."""
    per_label = normalize(embeddings).view(labels, -1, embeddings.shape[-1])
    return normalize(per_label.mean(dim=1))


def ranked(probabilities: torch.Tensor, labels: Sequence[str]) -> list[list[LabelScore]]:
    """Per row (image), every label with its probability, most likely first."""
    values, order = probabilities.sort(dim=-1, descending=True)
    return [
        [LabelScore(labels[k], p) for k, p in zip(idx, vals, strict=True)]
        for idx, vals in zip(order.tolist(), values.tolist(), strict=True)
    ]
