"""Short LLM prefills replayed as CUDA graphs, on prompts padded to a few lengths. Opt-in (`GraphDecoder.
record_prefills`, `python -m vcast.bench --prefill recorded`), not a default: exact, and on an H200 it takes the
host's time per prefill from about 20 ms to 3, but the graphs and their caches stay held between requests (peak
memory above weights 916 against 316 MB for V-CAST's 32-frame pass; docs/BENCHMARKS.md section 19).

Why (H200, Qwen3-VL-8B shapes, docs/BENCHMARKS.md section 17): with its decoder layers compiled, V-CAST's
32-frame prefill (about 1100 tokens) is about 940 kernels taking 26 ms of GPU work, yet 32 ms pass between its
first and its last kernel: the GPU waits for the host at the start (the language model's own Python: rotary
tables, the causal mask) and between kernels. A recorded graph launches all of them at once. Long prefills are
bound by their kernels, so only prompts up to `max_tokens` tokens are recorded.

How, exactly: the prompt is padded after its end to a multiple of `bucket` tokens. With causal attention no real
position sees a padded one, so the real positions' keys, values and hidden states are those of the unpadded
prefill; the padded positions' cache slots are overwritten by the decode steps before any step can see them (each
step attends to the slots up to its own position), and the cache's counters are set back to the prompt's length
after each replay. The recorded part is the language model (`model.get_decoder()`): the embedding lookup and the
placement of the visual features stay eager, outside, and their results are copied into the graph's fixed input
buffers. Deepstack's features are added as dense tensors (zero outside the visual positions: `x + 0` is `x`, and
each visual position gets the same bf16 addition as transformers' indexed one), so a graph serves any number of
visual tokens.

Each recorded graph keeps its own KV cache (a graph replays on fixed addresses): it is the cache of every pass
whose padded length and cache length match (`PrefillGraphs.cache_for`). At most `kept` graphs are kept (least
recently used dropped), so the memory they hold stays bounded; their working memory comes from one pool shared
by all of them (they never run at once, and each output is consumed before the next replay).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .compiled_prefill import deepstack_without_waits
from .decode import DecodeCaches, cache_bytes

logger = logging.getLogger(__name__)

DEFAULT_PREFILL_BUCKET = 32  # tokens of padding at most: about 1.5% more work for V-CAST's 32-frame prefill
DEFAULT_PREFILL_GRAPH_TOKENS = 4096  # longer prompts: their caches and working memory would stay held
DEFAULT_PREFILL_GRAPHS_KEPT = 2  # graphs (each with its KV cache) kept: V-CAST's two most recent prompt sizes


@dataclass
class _Recorded:
    """One padded length's prefill: the cache it writes, its input buffers and, once recorded, its graph."""

    cache: object
    padded: int
    embeds: torch.Tensor | None = None  # (1, padded, hidden)
    positions: torch.Tensor | None = None  # (rows, 1, padded)
    mask: torch.Tensor | None = None  # (1, padded) ones, where the prompt came with an (all-ones) mask
    deepstack: list[torch.Tensor] = field(default_factory=list)  # (1, padded, hidden) each
    cache_position: torch.Tensor | None = None  # (padded,), for transformers that take it
    layer_mask: object = None  # the mask the first (uncaptured) run's layers got: None (causal) or its tensor
    graph: torch.cuda.CUDAGraph | None = None
    output: object = None  # the recorded call's output (its tensors are the graph's)


@contextlib.contextmanager
def layer_mask_as(language_model, recorded: _Recorded, *, replay: bool) -> Iterator[None]:
    """Inside this block the language model's `create_causal_mask` (looked up in its module, as its forward does) is
    recorded into `recorded.layer_mask` (`replay=False`) or returns what was recorded (`replay=True`).

    Why: transformers decides whether a prompt's causal mask may be left to SDPA (`is_causal`, the mask None) only
    when it is not tracing, and it counts a CUDA stream being captured as tracing. Uncaptured, a padded prefill's
    layers get None; during the capture they got a materialised mask, which the compiled layers' guards reject
    (`attention_mask is None`), so the replay held transformers' eager layers and masked attention (H200: 48 ms against
    30 for V-CAST's 32-frame prefill). The mask depends only on the shapes and on the all-ones padding mask, both the
    same in the two runs, so the capture gets the first run's mask, tensor or None. A module without
    `create_causal_mask` is left alone (its layers then run as they will)."""
    module = sys.modules.get(type(language_model).__module__)
    original = getattr(module, "create_causal_mask", None)
    if original is None:
        yield
        return

    def recording(*args, **kwargs):
        recorded.layer_mask = original(*args, **kwargs)
        return recorded.layer_mask

    def replaying(*args, **kwargs):
        return recorded.layer_mask

    module.create_causal_mask = replaying if replay else recording
    try:
        yield
    finally:
        module.create_causal_mask = original


def set_cache_length(cache, length: int) -> None:
    """Point every layer's counter of a static cache at `length` filled slots."""
    stacked = getattr(cache, "stacked", None)
    if stacked is not None:
        stacked[2].fill_(length)
        return
    for layer in cache.layers:
        layer.cumulative_length.fill_(length)


class PrefillGraphs:
    """The padded, recorded prefills of one model (see the module). `record=False` runs the very same padded
    prefill eagerly (what the CPU tests compare with the unpadded one)."""

    def __init__(self, model, caches: DecodeCaches, *, record: bool, bucket: int = DEFAULT_PREFILL_BUCKET,
                 max_tokens: int = DEFAULT_PREFILL_GRAPH_TOKENS, kept: int = DEFAULT_PREFILL_GRAPHS_KEPT,
                 stream: torch.cuda.Stream | None = None):  # fmt: skip
        if bucket < 1 or max_tokens < 1 or kept < 1:
            raise ValueError(f"PrefillGraphs needs bucket, max_tokens, kept >= 1; got {bucket}, {max_tokens}, {kept}")
        self.language_model = model.get_decoder()
        deepstack_without_waits(model)  # deepstack's addition that takes dense features (Qwen3-VL's)
        self.caches = caches
        self.record, self.bucket, self.max_tokens, self.kept = record, bucket, max_tokens, kept
        self.stream = stream
        self.pool = torch.cuda.graph_pool_handle() if record else None
        self.failure: str | None = None  # why recording failed (prefills are then eager and unpadded)
        self.recordings = 0
        self._pool_bytes = (0, 0)  # (all, free) bytes of the pool, measured after each recording
        self._recorded: OrderedDict[tuple[int, int], _Recorded] = OrderedDict()

    def padded(self, length: int) -> int:
        return -(-length // self.bucket) * self.bucket

    def applies(self, length: int) -> bool:
        return self.failure is None and length <= self.max_tokens

    def cache_for(self, length: int, tokens: int):
        """The static cache for a prefill of `length` tokens followed by decoding up to `tokens` slots in all: that
        of the recorded prefill of its padded length (counters at 0), or None where this prefill is not recorded."""
        if not self.applies(length):
            return None
        padded = self.padded(length)
        key = (padded, self.caches.length_for(max(tokens, padded)))
        recorded = self._recorded.pop(key, None)
        if recorded is None:
            while len(self._recorded) >= self.kept:
                self._recorded.popitem(last=False)
            recorded = _Recorded(cache=self.caches.new(key[1]), padded=padded)
        else:
            with torch.inference_mode():
                set_cache_length(recorded.cache, 0)
        self._recorded[key] = recorded
        return recorded.cache

    def serves(self, cache) -> bool:
        return any(recorded.cache is cache for recorded in self._recorded.values())

    def kept_caches(self) -> list:
        """The kept recorded prefills' caches, least recently used first."""
        return [recorded.cache for recorded in self._recorded.values()]

    def held_bytes(self) -> int:
        """Bytes of the kept graphs' caches (their working memory is in the shared pool, `pool_bytes`)."""
        return sum(cache_bytes(recorded.cache) for recorded in self._recorded.values())

    def pool_bytes(self, *, free_only: bool = False) -> int:
        """Bytes of device memory the graphs' shared pool holds (0 before any recording; measured after each
        recording: replays allocate nothing). `free_only`: only what no live tensor holds, i.e. the replays' working
        memory, which the allocator counts as reserved, not as allocated (`torch.cuda.max_memory_allocated` does not
        see a replay use it)."""
        return self._pool_bytes[1 if free_only else 0]

    def _measure_pool(self) -> None:
        segments = [s for s in torch.cuda.memory._snapshot()["segments"]
                    if tuple(s.get("segment_pool_id", ())) == tuple(self.pool)]  # fmt: skip
        self._pool_bytes = (sum(s["total_size"] for s in segments),
                            sum(s["total_size"] - s["allocated_size"] for s in segments))  # fmt: skip

    def clear(self) -> None:
        self._recorded.clear()

    @contextlib.contextmanager
    def replacing(self, cache) -> Iterator[None]:
        """Inside this block the language model's forward is the padded (recorded) prefill into `cache` (one of
        `cache_for`'s)."""
        recorded = next(r for r in self._recorded.values() if r.cache is cache)
        language_model = self.language_model
        forward = language_model.forward

        def padded_forward(**kwargs):
            return self._run(recorded, forward, kwargs)

        language_model.forward = padded_forward
        try:
            yield
        finally:
            del language_model.forward  # the class's forward again

    def _run(self, recorded: _Recorded, forward, kwargs: dict):
        embeds = kwargs["inputs_embeds"]
        length = int(embeds.shape[1])
        if recorded.embeds is None:
            self._allocate(recorded, kwargs)
        self._load(recorded, kwargs, length)
        static = self._static_kwargs(recorded, kwargs)
        if recorded.graph is not None:
            recorded.graph.replay()
            output = recorded.output
        else:
            output = self._first_run(recorded, forward, static)
        set_cache_length(recorded.cache, length)
        result = copy.copy(output)
        result["last_hidden_state"] = output["last_hidden_state"][:, :length]
        return result

    def _allocate(self, recorded: _Recorded, kwargs: dict) -> None:
        embeds, positions = kwargs["inputs_embeds"], kwargs["position_ids"]
        padded = recorded.padded
        recorded.embeds = embeds.new_zeros((1, padded, embeds.shape[-1]))
        recorded.positions = positions.new_zeros((*positions.shape[:-1], padded))
        mask = kwargs.get("attention_mask")
        if mask is not None:
            recorded.mask = torch.ones((1, padded), dtype=mask.dtype, device=mask.device)
        recorded.deepstack = [recorded.embeds.new_zeros(recorded.embeds.shape)
                              for _ in kwargs.get("deepstack_visual_embeds") or ()]  # fmt: skip
        if kwargs.get("cache_position") is not None:
            recorded.cache_position = torch.arange(padded, device=embeds.device)

    def _load(self, recorded: _Recorded, kwargs: dict, length: int) -> None:
        """Copy this prompt into the recorded inputs: embeddings (zeros after the prompt), positions (each row going
        on by one after the prompt: a plain continuation, never read as a second packed sequence), and deepstack's
        features placed at their visual positions."""
        recorded.embeds[:, :length].copy_(kwargs["inputs_embeds"])
        recorded.embeds[:, length:].zero_()
        positions = kwargs["position_ids"]
        recorded.positions[..., :length].copy_(positions)
        after = torch.arange(1, recorded.padded - length + 1, device=positions.device, dtype=positions.dtype)
        recorded.positions[..., length:].copy_(positions[..., -1:] + after)
        layers = kwargs.get("deepstack_visual_embeds") or ()
        if len(layers) != len(recorded.deepstack):
            raise ValueError("a recorded prefill serves one number of deepstack layers")
        if layers:
            mask = kwargs["visual_pos_masks"].reshape(-1)
            found = torch.nonzero_static(mask, size=int(layers[0].shape[0])).view(-1)
            for dense, features in zip(recorded.deepstack, layers, strict=True):
                dense.zero_()
                dense.view(-1, dense.shape[-1]).index_copy_(0, found, features.to(dense.dtype))

    def _static_kwargs(self, recorded: _Recorded, kwargs: dict) -> dict:
        # The mask as the unpadded call has it, over the padded length: an all-ones 2-D mask stays all ones (causal
        # attention keeps the padding out of every real position). What the layers get from it during the capture is
        # `layer_mask_as`'s business.
        mask = kwargs.get("attention_mask")
        static = dict(kwargs, inputs_embeds=recorded.embeds, position_ids=recorded.positions,
                      attention_mask=None if mask is None else recorded.mask)  # fmt: skip
        if recorded.deepstack:
            # No mask: `deepstack_without_waits`' addition then takes the features as dense (zero elsewhere).
            static.update(visual_pos_masks=None, deepstack_visual_embeds=recorded.deepstack)
        if recorded.cache_position is not None:
            static["cache_position"] = recorded.cache_position
        return static

    def _first_run(self, recorded: _Recorded, forward, static: dict):
        """The first prefill of a padded length: run eagerly (its output is this prefill's), then recorded for the
        next ones (recording runs nothing). A failure to record leaves every later prefill eager and unpadded."""
        if not self.record:
            return forward(**static)
        stream = self.stream or torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), layer_mask_as(self.language_model, recorded, replay=False):
            output = forward(**static)  # run where it is recorded: lazily made state (cuBLAS's) exists before
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            # A compiled layer whose guards fail here must not be recorded eagerly (section 18's slow replays, which
            # nothing reported): "fail_on_recompile" makes that a recording failure, said once, and the prefills stay
            # compiled and unrecorded.
            with (torch.cuda.stream(stream), torch.compiler.set_stance("fail_on_recompile"),
                  layer_mask_as(self.language_model, recorded, replay=True)):  # fmt: skip
                graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    recorded.output = forward(**static)
                finally:
                    graph.capture_end()
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # any other failure to record: prefill as before from now on, say why once
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            logger.warning("recorded prefills are off for this model (%s); prefilling eagerly", self.failure)
            logger.debug("the recording's failure in full", exc_info=err)
            torch.cuda.synchronize()
            self._recorded.clear()
            return output
        torch.cuda.current_stream().wait_stream(stream)
        recorded.graph = graph
        self.recordings += 1
        self._measure_pool()
        return output
