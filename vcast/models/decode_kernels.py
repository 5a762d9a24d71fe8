"""Fewer, faster kernels in the graph decoder's step: flash attention over the filled slots, fused RMSNorm.

Profiled on an H200 (benchmarks/profile_decode_step.py, docs/BENCHMARKS.md section 11), a recorded
decode step of an 8B model spent its time in two places besides the weights:

* Attention over a static cache. transformers hands SDPA the whole cache with a mask, and with a mask
  SDPA has no kernel that splits one query's keys over many thread blocks (the memory-efficient kernel
  that VideoQA's backend order then picks, or cuDNN's): every cached token cost about 0.7 us per step,
  4 ms at 8761 tokens, which is why the unpruned pass decoded so much slower than V-CAST's. PyTorch's
  variable-length flash attention (`torch.nn.attention.varlen.varlen_attn`; on older PyTorch the
  operator under it) reads only the first `seqused_k` slots and splits the keys over the GPU: about
  0.02 us per cached token. `seqused_k` is a device counter the step advances, so one recorded step
  serves every token of the pass.
* RMSNorm: transformers computes it as seven elementwise kernels (cast, square, mean, add, rsqrt,
  multiply, cast) before the weight, four norms per layer. `F.rms_norm` without a weight is one
  fused kernel computing the same float32 product (only its reduction order differs), and the
  weight is then applied exactly as transformers does.
A step went from 2494 to 1505 kernels: 94 -> 125 tokens/s for V-CAST at 32 frames, 64 -> 121 for the
unpruned pass at 128 frames.

Both act only inside `FastDecodeStep.active(...)`, i.e. in the decode steps of `GraphDecoder`: the
prefill, `generate` and the vision tower run transformers' norms and attention (the graph decoder's
prefill may run its layers compiled, `vcast.models.compiled_prefill`). Where the steps run the compiled
layers too (`compile_prefill(steps=True)`, VideoQA's choice with `compile_prefill`), the norm is
transformers' own, which Inductor fuses, and the attention stays `decode_attention` (kept out of the
compiled graphs). Token for token, the
step with these kernels matches `generate` on every tiny family (tests/test_graph_decode.py: float32 on
the CPU, where the attention is SDPA with a mask made from the counter, and bfloat16 flash attention on
a GPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

DECODE_ATTENTION = "vcast_decode_filled_slots"

# RMSNorm classes computing weight * (x * rsqrt(mean(x^2) + eps)).to(dtype), float32 inside (Llama's form)
_WEIGHT_AFTER_CAST = frozenset({"Qwen3VLTextRMSNorm", "Qwen3VLMoeTextRMSNorm", "Qwen2RMSNorm", "Qwen2_5_VLRMSNorm"})
# ... and (x * rsqrt(mean(x^2) + eps) * (1 + weight)).to(dtype), all in float32 (Qwen3.5's zero-centred form)
_ONE_PLUS_WEIGHT = frozenset({"Qwen3_5RMSNorm", "Qwen3_5MoeRMSNorm"})


class FilledSlots:
    """Device counters of one pass's decode step: how many cache slots hold keys (the new token's
    included), and the fixed sequence bounds flash attention reads. Made before the step is recorded."""

    def __init__(self, filled: int, slots: int, device: torch.device):
        self.slots = slots
        self.used = torch.tensor([filled], dtype=torch.int32, device=device)
        self.query_bounds = torch.tensor([0, 1], dtype=torch.int32, device=device)
        self.key_bounds = torch.tensor([0, slots], dtype=torch.int32, device=device)


_STEP: contextvars.ContextVar[FilledSlots | None] = contextvars.ContextVar("vcast_decode_step", default=None)


def _varlen_route() -> str | None:
    """"public": torch.nn.attention.varlen.varlen_attn takes `seqused_k`; "aten": only the operator
    under it does (older PyTorch); None: neither."""
    try:
        from torch.nn.attention.varlen import varlen_attn

        if "seqused_k" in inspect.signature(varlen_attn).parameters:
            return "public"
    except ImportError:
        pass
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is not None and "seqused_k" in str(op.default._schema):
        return "aten"
    return None


def _flash_over_filled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: FilledSlots,
                       scale: float | None, route: str) -> torch.Tensor:  # fmt: skip
    """query (1, Hq, 1, D); key, value (1, Hkv, S, D), the static cache. Returns (1, 1, Hq, D)."""
    q = query[0].transpose(0, 1)  # (1, Hq, D)
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)  # (S, Hkv, D) views of the cache
    if route == "public":
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, slots.query_bounds, slots.key_bounds, 1, slots.slots, scale=scale,
                          enable_gqa=True, seqused_k=slots.used)  # fmt: skip
    else:
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, slots.query_bounds, slots.key_bounds, 1, slots.slots, 0.0, False, False,
            scale=scale, seqused_k=slots.used,
        )[0]  # fmt: skip
    return out.unsqueeze(0)  # (1, 1, Hq, D): the layout transformers' attention functions return


def _masked_over_filled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: FilledSlots,
                        scale: float | None) -> torch.Tensor:  # fmt: skip
    """The same attention through SDPA with a mask made from the counter (CPU, or no flash attention)."""
    filled = (torch.arange(slots.slots, device=key.device) < slots.used.to(key.device)).view(1, 1, 1, -1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=filled, scale=scale,
                                         enable_gqa=query.shape[1] != key.shape[1])  # fmt: skip
    return out.transpose(1, 2)  # (1, 1, Hq, D)


@torch.compiler.disable  # in compiled decoder layers (`GraphDecoder.compile_prefill(steps=True)`): run as it is
def decode_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs):  # fmt: skip
    """transformers attention function for the decode step (one query over a static cache)."""
    slots = _STEP.get()
    if slots is None or query.shape[0] != 1 or query.shape[2] != 1 or key.shape[2] != slots.slots:
        raise RuntimeError(f"{DECODE_ATTENTION} serves the graph decoder's one-token step over its static cache only")
    if flash_decode_unavailable(query) is None:
        return _flash_over_filled(query, key, value, slots, scaling, _ROUTE), None
    return _masked_over_filled(query, key, value, slots, scaling), None


_ROUTE = _varlen_route()
AttentionInterface.register(DECODE_ATTENTION, decode_attention)


def _fused_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    # Traced by torch.compile (the compiled prefill), the class's own norm: Inductor fuses it, and reading the
    # context variable would break the graph at every norm.
    if torch.compiler.is_compiling() or _STEP.get() is None:
        return type(self).forward(self, hidden_states)
    shape = (hidden_states.shape[-1],)
    if type(self).__name__ in _ONE_PLUS_WEIGHT:
        out = F.rms_norm(hidden_states.float(), shape, 1.0 + self.weight.float(), self.eps)
        return out.type_as(hidden_states)
    return self.weight * F.rms_norm(hidden_states, shape, None, self.variance_epsilon)


def flash_decode_unavailable(query: torch.Tensor) -> str | None:
    """Why the step's attention on tensors like `query` cannot use flash attention (None: it can); it then
    uses SDPA with a mask made from the counter."""
    if query.device.type != "cuda":
        return "flash attention needs a CUDA GPU"
    if _ROUTE is None:
        return f"PyTorch {torch.__version__} has no variable-length flash attention with seqused_k"
    if query.dtype not in (torch.float16, torch.bfloat16):
        return f"flash attention needs float16 or bfloat16, not {query.dtype}"
    if not _flash_device(query.device):
        return "flash attention needs an Ampere or newer GPU and a PyTorch build with it"
    return None


@functools.cache
def _flash_device(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.backends.cuda.is_flash_attention_available()


@contextlib.contextmanager
def _step_for_tests(slots: FilledSlots | None = None) -> Iterator[None]:
    """Act as if inside a decode step (the fused norms; `slots` for the attention)."""
    token = _STEP.set(slots or FilledSlots(1, 1, torch.device("cpu")))
    try:
        yield
    finally:
        _STEP.reset(token)


class FastDecodeStep:
    """The fused kernels for one model's decode step, switched on by `active(slots)` around each step.

    The language model's SDPA attention goes through `decode_attention`, and its RMSNorms are fused. Leaves
    modules and configs of other implementations (eager, flash_attention_2) alone.
    """

    def __init__(self, model):
        decoder = model.get_decoder()
        found = {id(m.config): m.config for m in decoder.modules() if hasattr(m, "q_proj") and hasattr(m, "o_proj")}
        self.configs = [c for c in found.values() if c._attn_implementation == "sdpa"]
        self.norms = 0
        for module in decoder.modules():
            if type(module).__name__ in _WEIGHT_AFTER_CAST | _ONE_PLUS_WEIGHT and "forward" not in vars(module):
                module.forward = types.MethodType(_fused_norm, module)  # the class's forward stays the fallback
                self.norms += 1

    @contextlib.contextmanager
    def active(self, slots: FilledSlots) -> Iterator[None]:
        token = _STEP.set(slots)
        for config in self.configs:
            config._attn_implementation = DECODE_ATTENTION  # no mask is built: the counter bounds the keys
        try:
            yield
        finally:
            for config in self.configs:
                config._attn_implementation = "sdpa"
            _STEP.reset(token)
