"""Values kept by statement text (the parse trees, app/sql/tree.py; the placeholder shapes,
app/sql/placeholders.py), bounded by count and by what they hold."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

# Statements whose parse trees are kept, and the longest text that is cached.
CACHE_SIZE = 4096
CACHEABLE_LENGTH = 16384
# What the kept trees hold, counted in names (each call, attribute, relation, operator and
# setting, in every fact that lists it: Tree.weight): CACHE_NAMES across the cache (some
# 32 per tree, a point select holding 5), and at most CACHED_NAMES for a tree to be kept at
# all. A 16 KB text can call some 1,750 distinct functions (some 500 KiB of facts): such a
# tree is parsed again each time instead, and the cache stays within some 10 MiB.
CACHE_NAMES = CACHE_SIZE * 32
CACHED_NAMES = 2048
V = TypeVar("V")


class TextCache(Generic[V]):
    """Values kept by statement text: CACHE_SIZE of them at most, and CACHE_NAMES names
    across their trees (`weigh` says a value's); a value of over CACHED_NAMES is not kept.
    The oldest go first when it is full, so a hit is one dictionary lookup (`get`), with
    nothing to write; a text that went is kept again the next time it is met."""

    def __init__(self, weigh: Callable[[V], int]) -> None:
        self._values: dict[str, V] = {}
        self._weights: dict[str, int] = {}
        self._held = 0
        self._weigh = weigh
        self._lock = threading.Lock()  # (statements are also parsed in threads: off_loop)
        self.get = self._values.get

    def keep(self, text: str, value: V) -> None:
        """Keep `value` for `text`, the oldest making room; not at all when it is over
        CACHED_NAMES or the text over CACHEABLE_LENGTH."""
        weight = self._weigh(value)
        if weight > CACHED_NAMES or len(text) > CACHEABLE_LENGTH:
            return
        values, weights = self._values, self._weights
        with self._lock:
            if text in values:
                return
            while values and (len(values) >= CACHE_SIZE or self._held + weight > CACHE_NAMES):
                oldest = next(iter(values))
                del values[oldest]
                self._held -= weights.pop(oldest)
            values[text] = value
            weights[text] = weight
            self._held += weight

    def held(self) -> tuple[int, int]:
        """The values kept and the names their trees hold."""
        return len(self._values), self._held

    def clear(self) -> None:
        """Keep nothing."""
        with self._lock:
            self._values.clear()
            self._weights.clear()
            self._held = 0
