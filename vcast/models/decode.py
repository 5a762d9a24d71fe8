"""Compiled decoding: static KV caches that outlive one request, so generate's CUDA graphs do too.

transformers' `generate` compiles the model's decode step (torch.compile, mode "reduce-overhead":
CUDA graphs) whenever it is handed a static cache on a GPU. A step is then one graph replay
instead of about two thousand kernel launches from Python, and its time is set by the GPU:
the weights it reads, and a KV cache that V-CAST makes 3-5x shorter. With the default dynamic
cache the host's Python sets the pace, the same for every cache length.

The graphs hold the addresses of the cache tensors they were recorded with: a new cache object
for every request would mean a new recording (or a recompilation) every time. `DecodeCaches`
keeps a few caches, one per length rounded up to `bucket` tokens, and hands the same one back,
emptied, for every request of that length. Padding a cache costs no correctness (its unused
slots are masked) and little time; the bucket keeps the number of recorded lengths small.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import StaticCache

DEFAULT_CACHE_BUCKET = 512  # tokens; a cache is at most this much longer than its request needs
DEFAULT_CACHES_KEPT = 2  # one for V-CAST's length, one for the unpruned pass's


def cache_bytes(cache) -> int:
    """Bytes the allocated layers of a KV cache hold (0 for a static cache not yet used)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


class DecodeCaches:
    """Static KV caches for one model, reused across requests of the same rounded length.

    `get(tokens)` returns an empty `StaticCache` of at least `tokens` slots (prompt + new
    tokens), rounded up to a multiple of `bucket`; the same object for every request of that
    bucket. At most `kept` caches are held; the least recently used one is dropped first (and a
    request of its length then records its graphs again): keep one per method that alternates.
    """

    def __init__(self, model, *, bucket: int | None = None, kept: int = DEFAULT_CACHES_KEPT):
        bucket = DEFAULT_CACHE_BUCKET if bucket is None else bucket
        if bucket < 1 or kept < 1:
            raise ValueError(f"DecodeCaches needs bucket >= 1 and kept >= 1, got {bucket} and {kept}")
        self.text_config = model.config.get_text_config(decoder=True)
        self.bucket, self.kept = bucket, kept
        self._caches: OrderedDict[int, StaticCache] = OrderedDict()

    def length_for(self, tokens: int) -> int:
        """The cache length serving a request of `tokens` slots."""
        if tokens < 1:
            raise ValueError(f"a KV cache needs at least one slot, got {tokens}")
        return -(-tokens // self.bucket) * self.bucket

    def get(self, tokens: int) -> StaticCache:
        length = self.length_for(tokens)
        cache = self._caches.pop(length, None)
        if cache is None:
            while len(self._caches) >= self.kept:
                self._caches.popitem(last=False)
            cache = StaticCache(config=self.text_config, max_cache_len=length)
        else:
            # Zeroes the tensors in place, so the recorded graphs stay valid. Generation made them
            # as inference tensors, which only inference mode may change in place.
            with torch.inference_mode():
                cache.reset()
        self._caches[length] = cache
        return cache

    def held_bytes(self, *, besides=None) -> int:
        """Bytes held by the kept caches, leaving out `besides` (the cache of the pass in hand)."""
        return sum(cache_bytes(cache) for cache in self._caches.values() if cache is not besides)

    def lengths(self) -> list[int]:
        """Lengths of the kept caches, least recently used first."""
        return list(self._caches)

    def clear(self) -> None:
        self._caches.clear()
