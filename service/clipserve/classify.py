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


def prompts(
    labels: Sequence[str], templates: Sequence[str], *, max_items: int, max_chars: int
) -> list[str]:
    """Every label in every template, label by label; 4xx naming the field if unusable."""
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
    count, limit = len(labels) * len(templates), max_items * PROMPTS_PER_ITEM
    if count > limit:
        raise PayloadTooLarge(
            f"labels x templates: {len(labels)} x {len(templates)} = {count} prompts; "
            f"the limit is {limit} per request"
        )
    out = [t.replace(PLACEHOLDER, label) for label in labels for t in templates]
    longest = max(range(len(out)), key=lambda k: len(out[k]))
    if len(out[longest]) > max_chars:
        label = labels[longest // len(templates)]
        raise PayloadTooLarge(
            f"labels[{longest // len(templates)}]: the prompt for {label[:40]!r} has "
            f"{len(out[longest])} characters; the limit is {max_chars}"
        )
    return out


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
