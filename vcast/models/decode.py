"""Compiled decoding: static KV caches of a few rounded lengths, which generate compiles into CUDA graphs.

transformers' `generate` compiles the model's decode step (torch.compile, mode "reduce-overhead":
CUDA graphs) whenever it is handed a static cache on a GPU. A step is then one graph replay
instead of about two thousand kernel launches from Python, and its time is set by the GPU:
the weights it reads, and a KV cache that V-CAST makes 3-5x shorter. With the default dynamic
cache the host's Python sets the pace, the same for every cache length.

`DecodeCaches` sizes each pass's cache to its prompt plus new tokens, rounded up to `bucket`
tokens, so that requests of similar length share one compiled shape (padding costs no
correctness: the unused slots are masked). Two ways to hold the caches, measured on an H200
(docs/BENCHMARKS.md, section 4.5):
- `kept=0` (VideoQA's default): a new cache for every pass, allocated just before generation and
  freed when it ends, so memory behaves like the dynamic cache's. A recorded graph is replayed
  when the new cache lands at the old one's address (the caching allocator usually hands the
  same block back for the same size) and recorded again otherwise.
- `kept=N`: the last N caches stay allocated, and each comes back emptied for its length: no
  recording again, slightly faster decoding, but the caches also sit in memory while the next
  request's vision tower runs (a serving engine's trade-off).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import StaticCache

DEFAULT_CACHE_BUCKET = 64  # tokens; a cache is at most this much longer than its request needs
DEFAULT_CACHES_KEPT = 0  # none: each pass's cache is freed with it


def cache_bytes(cache) -> int:
    """Bytes the allocated layers of a KV cache hold (0 for a static cache not yet initialized)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _layer_devices(model, count: int) -> list[torch.device]:
    """The device of each decoder layer of the language model (the model's device if not found)."""
    layers = getattr(getattr(getattr(model, "model", None), "language_model", None), "layers", None)
    if layers is None or len(layers) != count:
        return [model.device] * count
    return [next(layer.parameters()).device for layer in layers]


class DecodeCaches:
    """Static KV caches for one model, of lengths rounded up to a multiple of `bucket`.

    `get(tokens)` returns an empty `StaticCache` of at least `tokens` slots (prompt + new
    tokens). With `kept=0` it is a new cache each time, held by nobody else. With `kept=N` the
    N most recently used caches are kept, one per rounded length, and the same object comes
    back for its length; keep one per method that alternates (V-CAST and unpruned: 2). The caches
    are inference tensors, as generate's own would be: run generate under `torch.inference_mode()`
    (VideoQA does).
    """

    def __init__(self, model, *, bucket: int | None = None, kept: int = DEFAULT_CACHES_KEPT):
        bucket = DEFAULT_CACHE_BUCKET if bucket is None else bucket
        if bucket < 1 or kept < 0:
            raise ValueError(f"DecodeCaches needs bucket >= 1 and kept >= 0, got {bucket} and {kept}")
        self.text_config = text = model.config.get_text_config(decoder=True)
        self.bucket, self.kept = bucket, kept
        self.dtype = model.dtype
        self.layer_devices = _layer_devices(model, text.num_hidden_layers)
        # weights offloaded by accelerate sit on "meta" until their layer runs: allocate lazily then
        self.offloaded = any(device.type == "meta" for device in self.layer_devices)
        self.cache_class: type[StaticCache] = StaticCache  # a subclass where the prefill is compiled (PrefillCache)
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self._caches: OrderedDict[int, StaticCache] = OrderedDict()

    def length_for(self, tokens: int) -> int:
        """The cache length serving a request of `tokens` slots."""
        if tokens < 1:
            raise ValueError(f"a KV cache needs at least one slot, got {tokens}")
        return -(-tokens // self.bucket) * self.bucket

    def get(self, tokens: int) -> StaticCache:
        length = self.length_for(tokens)
        if self.kept == 0:
            return self._new(length)
        cache = self._caches.pop(length, None)
        if cache is None:
            while len(self._caches) >= self.kept:
                self._caches.popitem(last=False)
            cache = self._new(length)
        else:
            # Zeroes the tensors in place, so the recorded graphs stay valid. Generation made them
            # as inference tensors, which only inference mode may change in place.
            with torch.inference_mode():
                cache.reset()
        self._caches[length] = cache
        return cache

    def new(self, tokens: int) -> StaticCache:
        """An empty cache of at least `tokens` slots that this object does not keep (its holder does)."""
        return self._new(self.length_for(tokens))

    def _new(self, length: int) -> StaticCache:
        """A static cache with every layer allocated now, each on its decoder layer's device.

        Left to itself, each layer allocates on its first update, inside the prefill, and moves a
        host-side counter to the GPU; a copy from pageable host memory makes the host wait for the
        stream, so the prefill would stall once per layer (about 3 ms on 8B at 1k tokens, and
        jittery). Here the counters start on the device and the layers are allocated in one go,
        before any prefill work is queued (transformers' `early_initialization`, per layer, so that a
        model spread over several GPUs gets each layer's cache where that layer runs). Made under
        inference mode, like everything generate makes: only inference mode may then change them.
        """
        cache = self.cache_class(config=self.text_config, max_cache_len=length)
        if self.offloaded:
            return cache  # each layer finds its device when it first runs
        stack_on = getattr(cache, "stack_on", None)  # StackedPrefillCache: every layer in one tensor
        if stack_on is not None and len(set(self.layer_devices)) == 1:
            with torch.inference_mode():
                stack_on(self.layer_devices[0], self.dtype, self.kv_heads, self.head_dim)
            return cache
        with torch.inference_mode():
            for layer, device in zip(cache.layers, self.layer_devices, strict=False):
                if not getattr(layer, "supports_early_init", False) or layer.is_initialized:
                    continue
                counter = getattr(layer, "cumulative_length", None)
                if isinstance(counter, torch.Tensor) and counter.device != device:
                    layer.cumulative_length = torch.zeros_like(counter, device=device)
                shape = (1, self.kv_heads, 0, self.head_dim)  # no slots: only shape, dtype and device count
                empty = torch.zeros(shape, dtype=self.dtype, device=device)
                layer.lazy_initialization(empty, empty)
        return cache

    def held_bytes(self, *, besides=None) -> int:
        """Bytes held by the kept caches, leaving out `besides` (the cache of the pass in hand)."""
        return sum(cache_bytes(cache) for cache in self._caches.values() if cache is not besides)

    def lengths(self) -> list[int]:
        """Lengths of the kept caches, least recently used first."""
        return list(self._caches)

    def clear(self) -> None:
        self._caches.clear()
