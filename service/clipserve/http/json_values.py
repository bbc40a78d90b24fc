"""A bound on how many values a JSON body holds, checked before anything decodes it.

Litestar decodes a body into Python objects before a handler can count its items: a 64 MiB
body of `[{},{},...]` is 22 million dicts, which grew a server by 3.2 GB (kept after the
answer) before "more than --max-items" could be said; with this bound, by 0.13 GB (the body).
Every value after the first in an array or object follows a comma, so the commas outside
strings bound the values (all but nested singletons like `[[[]]]`, which msgspec's depth limit
bounds). Counting every comma is one pass in C; only a body over the bound by that count is
counted exactly, with its strings left out (a text may hold commas), in a thread: an
adversarial 64 MiB of escapes takes about 1.5 s.
"""

from __future__ import annotations

import asyncio
import re

from clipserve.errors import PayloadTooLarge

# Per --max-items: room for a token-id array of a long-context model (512 ids) per item, the
# labels of /classify (up to 100 per item) and each item's own fields.
VALUES_PER_ITEM = 1024
SPARE_VALUES = 4096  # options, a request's few fixed fields
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included


def values_limit(max_items: int) -> int:
    """The most values a body may hold."""
    return max_items * VALUES_PER_ITEM + SPARE_VALUES


def commas_outside_strings(body: bytes) -> int:
    """The commas that separate values (exact for valid JSON)."""
    return _STRING.sub(b"", body).count(b",")


async def check_values(body: bytes, max_items: int) -> None:
    """PayloadTooLarge if `body` holds more values than `max_items` items can."""
    limit = values_limit(max_items)
    if len(body) <= limit or body.count(b",") <= limit:  # the common case: no scan of strings
        return
    if await asyncio.to_thread(commas_outside_strings, body) > limit:
        raise PayloadTooLarge(
            f"request body: more than {limit} JSON values; the limit is {VALUES_PER_ITEM} "
            f"per item of --max-items ({max_items}), plus {SPARE_VALUES}"
        )
