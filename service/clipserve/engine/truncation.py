"""Texts cut to a token budget from either side, or refused when over it (Cohere's `truncate`).

The model's tokenizer already cuts a long text at its end, keeping the end-of-text token, so a
text that may be cut there stays a text (any tokenizer, cached by its characters). Cutting from
the start, a budget below the model's context, or refusing an over-long text need the text's
token ids: those are counted with the model's own tokenizer (CLIP's BPE) and the text goes on as
the ids kept, the form OpenAI's token arrays already take (inputs.Tokens).
"""

from __future__ import annotations

from typing import Literal

from clipserve.engine.inputs import Tokens
from clipserve.errors import InvalidInput
from clipserve.models import ClipModel
from clipserve.schemas import Item

Side = Literal["NONE", "START", "END"]


def fitted(
    model: ClipModel,
    text: str,
    *,
    truncate: Side,
    max_tokens: int | None,
    max_chars: int,
    where: str,
    budget_field: str = "max_tokens",
) -> Item | Tokens:
    """`text` within min(max_tokens, the model's context) tokens, not counting the start and
    end tokens: cut from `truncate`'s side, or an InvalidInput naming `where` for NONE.
    (`budget_field`: the request's name for max_tokens.)"""
    room = model.context_length - 2  # the start and end tokens take two places
    budget = room if max_tokens is None else min(max_tokens, room)
    if (truncate == "END" and budget == room) or len(text) > max_chars:
        return Item(text=text)  # the tokenizer's own cut; an oversize text gets its 413 later
    try:
        ids = model.text_ids(text)
    except ValueError as exc:
        field, asked = ("truncate", truncate) if truncate != "END" else (budget_field, budget)
        raise InvalidInput(
            f"{field}: {asked} needs the text's token ids, but {exc}; leave {field} out "
            "(the tokenizer then cuts a long text at its end)"
        ) from exc
    if len(ids) <= budget:
        return Tokens(tuple(ids))
    if truncate == "NONE":
        raise InvalidInput(
            f"{where}: has {len(ids)} tokens, over the {budget} that {model.spec.raw} embeds "
            "(its context, less the start and end tokens, or max_tokens); with truncate NONE an "
            "over-long text is refused: shorten it, or send truncate START or END"
        )
    return Tokens(tuple(ids[-budget:] if truncate == "START" else ids[:budget]))
