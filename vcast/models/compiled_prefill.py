"""The LLM prefill's decoder layers through torch.compile, and deepstack without host waits.

Why (H200, Qwen3-VL-8B shapes, docs/BENCHMARKS.md section 13): V-CAST's LLM prefill over about 1100
tokens is about 41 ms of GPU work, launched by about 24 ms of Python on the host (transformers' layers
are some 50 small operations each), and the host also waits for the GPU six times inside the first
three layers (deepstack's boolean indexing). The host therefore leads the GPU by little, and any hiccup
of the host lands in the prefill's time: the bench saw rounds of 43 and 53 ms in one process. The
unpruned prefill (3449 tokens, 117 ms of GPU work) is far enough ahead not to notice.

`CompiledPrefill` compiles each decoder layer (dynamic lengths) into fused kernels with a small
host-side wrapper, active only around the graph decoder's prefill and, with `compile_prefill(steps=True)`
(VideoQA's choice, section 14), around its decode steps, whose CUDA graphs then hold the fused kernels.
Each layer picks its own cache tensors by its index, and traced, that index would make one graph per
layer. By default (`StackedPrefillCache`) all layers' keys and values are views of one tensor, indexed by
the layer's index as a symbolic integer: each layer call is one graph, shared by every layer but the
first and by every prompt length, and one more set serves every one-token step. Without stacking
(`PrefillCache`) the cache update stays out of the graphs, which splits each layer in four (H200, 8B
prefill: 35 ms of host time against 20 stacked, a compilation of 86 s against 19; section 17).
`deepstack_without_waits` adds the deepstack features with indices computed on the device
(`torch.nonzero_static`), the same sums as transformers' boolean indexing without waiting for the GPU.

On a GPU the compiled graphs launch their kernels from C++ (`inductor_options`, Inductor's "cpp_wrapper"):
with Inductor's Python wrapper V-CAST's 32-frame prefill waited for the host in every round (H200, one
process: host 35.3 ms, GPU 35.3 ms, rounds up to 56); with the C++ wrapper the host queues it in 29.6 ms
and the GPU sets the pace (32.7 ms; docs/BENCHMARKS.md section 16).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from transformers import StaticCache

# Decoder layers whose prefill is compiled (measured on an H200); others run eagerly.
COMPILED_PREFILL_LAYERS = frozenset({"Qwen3VLTextDecoderLayer"})


class PrefillCache(StaticCache):
    """A StaticCache whose `update` stays outside torch.compile's graphs (a graph break): the compiled
    part of a layer then holds no layer index, so all layers share it. Eager callers see no difference."""

    @torch.compiler.disable
    def update(self, *args, **kwargs):
        return super().update(*args, **kwargs)


class StackedPrefillCache(PrefillCache):
    """A `PrefillCache` whose layers' keys, values and counters are views of one tensor each, with the layer as its
    first dimension, and whose `update` is traced: the compiled layers then index those tensors with the layer's index
    as a symbolic integer, so a whole decoder layer is one compiled graph shared by every layer (Inductor's in-place
    rewriting specialises layer 0: two graphs in all) instead of four around a graph break. Fewer graphs, less host
    work per layer: the graph decoder's default on one device (`GraphDecoder.compile_prefill`). Allocated by
    `stack_on` (`DecodeCaches` does it); until then it is a plain StaticCache."""

    stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def stack_on(self, device: torch.device, dtype: torch.dtype, kv_heads: int, head_dim: int) -> None:
        """Allocate every layer now, as views of three tensors on `device`. Each layer first allocates its own
        tensors through transformers' `lazy_initialization` (which sets its other attributes), replaced at once, so
        no more than one layer's worth is allocated beside the stacked tensors."""
        layers, slots = len(self.layers), self.layers[0].max_cache_len
        keys = torch.zeros((layers, 1, kv_heads, slots, head_dim), dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        lengths = torch.zeros(layers, dtype=torch.long, device=device)
        empty = torch.zeros((1, kv_heads, 0, head_dim), dtype=dtype, device=device)
        for index, layer in enumerate(self.layers):
            layer.lazy_initialization(empty, empty)
            layer.keys, layer.values, layer.cumulative_length = keys[index], values[index], lengths[index]
        self.stacked = (keys, values, lengths)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' StaticLayer update (write the new states after the layer's filled slots, advance its
        counter, return all its slots), on the stacked tensors."""
        if self.stacked is None:
            return StaticCache.update(self, key_states, value_states, layer_idx, *args, **kwargs)
        keys, values, lengths = self.stacked
        length = lengths[layer_idx]
        count = key_states.shape[-2]
        slots = torch.arange(count, device=keys.device) + length
        length.add_(count)
        # Written into the stacked tensors themselves, not through the layer's view: Inductor updates a graph input in
        # place, but an update through a view of one it makes on a copy of the view, i.e. of every slot of the layer at
        # each prefill and decode step (H200: unpruned 128-frame decoding at 112 tokens/s instead of 143; section 17).
        layer = torch.full((), layer_idx, dtype=torch.long, device=keys.device)
        # (layers, batch, heads, slots, dim) indexed by layer and slots: rows of (count, batch, heads, dim)
        index = [layer, None, None, slots]
        torch.ops.aten.index_put_(keys, index, key_states.permute(2, 0, 1, 3))
        torch.ops.aten.index_put_(values, index, value_states.permute(2, 0, 1, 3))
        return keys[layer_idx], values[layer_idx]


def inductor_options(device: torch.device) -> dict:
    """Inductor's options for the graphs this project compiles on `device`: on a GPU, kernels launched from a C++
    wrapper instead of a Python one ("cpp_wrapper": 6-11 ms less host time per 8B prefill on an H200, 31-50 ms
    instead of 88-92 on a slow host, for a compilation about three times as long, paid at start-up); elsewhere
    Inductor's defaults (on the CPU the kernels themselves run on the host, and the C++ wrapper would only lengthen
    the compilation)."""
    return {"cpp_wrapper": True} if device.type == "cuda" else {}


def _decoder_layers(model) -> list[torch.nn.Module]:
    layers = getattr(model.get_decoder(), "layers", None)
    return list(layers) if layers is not None else []


def compiled_prefill_unsupported(model) -> str | None:
    """Why `CompiledPrefill` cannot serve `model` (None: it can)."""
    layers = _decoder_layers(model)
    if not layers:
        return "the language model has no list of decoder layers"
    kinds = {type(layer).__name__ for layer in layers}
    if not kinds <= COMPILED_PREFILL_LAYERS:
        return f"its decoder layers ({', '.join(sorted(kinds))}) are not among {sorted(COMPILED_PREFILL_LAYERS)}"
    return None


class CompiledPrefill:
    """Compiled decoder layers for one model's LLM prefill (and decode steps), switched on by `active()` around them.

    The first prefill and step compile (dynamic lengths: one graph set for every length and layer); after
    `freeze()`, a prefill whose shapes no compiled graph serves runs its layers eagerly instead of
    compiling (torch.compiler's "eager_on_recompile" stance), so a server compiles only at its warm-up.
    """

    def __init__(self, model, *, options: dict | None = None):
        """`options`: Inductor's (default `inductor_options` for the device of the model's first weight)."""
        why = compiled_prefill_unsupported(model)
        if why is not None:
            raise ValueError(f"CompiledPrefill cannot serve this model: {why}")
        self.layers = _decoder_layers(model)
        self.options = inductor_options(next(model.parameters()).device) if options is None else options
        # One torch.compile wrapper per layer (what Module.compile makes); they share dynamo's cache,
        # which is per code object.
        self.calls = [torch.compile(layer._call_impl, dynamic=True, options=self.options or None)
                      for layer in self.layers]  # fmt: skip
        self.frozen = False

    def freeze(self) -> None:
        """Compile nothing more (see the class)."""
        self.frozen = True

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The layers run compiled inside this block (the prefill must write into a `PrefillCache`)."""
        for layer, call in zip(self.layers, self.calls, strict=True):
            layer._compiled_call_impl = call
        try:
            # set_stance switches the process's stance when called: made inside the try, undone by its with
            stance = torch.compiler.set_stance("eager_on_recompile") if self.frozen else contextlib.nullcontext()
            # Integer attributes of the layers (their index) stay symbolic instead of specialising a graph each.
            with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True), stance:
                yield
        finally:
            for layer in self.layers:
                layer._compiled_call_impl = None


def _deepstack_by_index(self, hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor,
                        visual_embeds: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """transformers' `_deepstack_process` (hidden[mask] += embeds) with the mask's indices found on the device:
    no host wait. The same additions, one per visual position. Relies on the mask holding exactly
    `len(visual_embeds)` positions (transformers checks it raising on the host; here a shortfall would index
    -1): the deepstack layers are sliced with the same selection as the visual tokens, whose count transformers'
    `get_placeholder_mask` checks against the prompt's placeholders before any layer runs. Without a mask the
    features come dense, shaped like the hidden states and zero outside the visual positions (a recorded prefill's):
    the same bf16 addition at every visual position, `x + 0 = x` elsewhere."""
    visual_embeds = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    if visual_pos_masks is None:  # features already placed, zero elsewhere (`vcast.models.prefill_graphs`)
        return hidden_states + visual_embeds.view_as(hidden_states)
    mask = visual_pos_masks.to(hidden_states.device).reshape(-1)
    found = torch.nonzero_static(mask, size=visual_embeds.shape[0]).view(-1)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    return flat.index_add(0, found, visual_embeds).view_as(hidden_states)


def deepstack_without_waits(model) -> bool:
    """Give `model`'s language model (Qwen3-VL's, with deepstack) `_deepstack_by_index`; False where it has
    no `_deepstack_process` (other families)."""
    language_model = model.get_decoder()
    if not hasattr(language_model, "_deepstack_process"):
        return False
    language_model._deepstack_process = types.MethodType(_deepstack_by_index, language_model)
    return True
