"""Faster, equal-result paths through Qwen3-VL's vision tower, switched on per model instance.

Found by profiling the vision tower on an H100 (benchmarks/profile_vision.py, docs/BENCHMARKS.md):

* Patch embedding. transformers computes it with a Conv3d whose kernel equals its stride, i.e.
  one matrix product per patch; cuDNN ran it as a slow implicit-GEMM convolution (0.6 ms per
  4k patches). `use_linear_patch_embed` computes the same product with `F.linear` on the same
  weight tensor.
* Attention. Under torch.compile, Inductor copied q, k and v into the layout it wants for the
  SDPA kernel, fused with the float32 rotary embedding, at several times the cost of the
  rotary itself. `use_fused_vision_attention` keeps transformers' rotary function and hands
  SDPA the (groups, heads, patches, dim) views of the (patches, heads, dim) tensors through an
  opaque custom op, so no layout copy is made.

Neither changes a transformers class or the model's parameters (state_dict keys and tensors are
the same); both only replace bound forwards / submodules of one loaded model.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F
from torch import nn


class LinearPatchEmbed(nn.Module):
    """Conv3d with kernel == stride over one patch, computed as the matrix product it is.

    Shares the convolution's weight and bias Parameters; input (N, C, t, p, p), output
    (N, E, 1, 1, 1) as the convolution gives.
    """

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if not is_patchwise(conv):
            raise ValueError("LinearPatchEmbed replaces only a Conv3d whose kernel equals its stride")
        self.weight, self.bias = conv.weight, conv.bias
        self.kernel_size = tuple(conv.kernel_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        flat = patches.reshape(patches.shape[0], -1)  # (N, C*t*p*p), the weight's flattening order
        out = F.linear(flat, self.weight.view(self.weight.shape[0], -1), self.bias)
        return out.view(*out.shape, 1, 1, 1)


def is_patchwise(conv: nn.Module) -> bool:
    """A plain Conv3d that sees each patch exactly once: kernel == stride, no padding, dilation or groups."""
    return (
        isinstance(conv, nn.Conv3d)
        and tuple(conv.kernel_size) == tuple(conv.stride)
        and conv.padding in ((0, 0, 0), "valid")
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.groups == 1
    )


def use_linear_patch_embed(model) -> None:
    """Swap the vision tower's patch-embedding Conv3d for `LinearPatchEmbed` (this instance only).

    Left alone when accelerate manages the convolution (offloaded weights behind a hook, or on the
    meta device): the hook moves the weights in for the Conv3d's own forward only.
    """
    patch_embed = model.model.visual.patch_embed
    conv = patch_embed.proj
    if is_patchwise(conv) and not hasattr(conv, "_hf_hook") and conv.weight.device.type != "meta":
        patch_embed.proj = LinearPatchEmbed(conv)


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: int,
                 scale: float) -> torch.Tensor:  # fmt: skip
    """Bidirectional attention within each of `groups` equal, consecutive segments.

    query, key, value: (S, heads, dim) with unit stride in dim (any row stride); returns
    (S, heads, dim) contiguous. One SDPA call over (groups, heads, S / groups, dim) views.
    """
    length, heads, dim = query.shape
    views = [t.unflatten(0, (groups, length // groups)).transpose(1, 2) for t in (query, key, value)]
    out = F.scaled_dot_product_attention(*views, scale=scale)  # (groups, heads, L, dim)
    return out.transpose(1, 2).reshape(length, heads, dim).contiguous()


@torch.library.custom_op("vcast::equal_groups_sdpa", mutates_args=())
def equal_groups_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, groups: int,
                      scale: float) -> torch.Tensor:  # fmt: skip
    """`grouped_sdpa` as an opaque operator: under torch.compile, Inductor passes the views as they are."""
    return grouped_sdpa(query, key, value, groups, scale)


@equal_groups_sdpa.register_fake
def _(query, key, value, groups, scale):
    return query.new_empty(query.shape)


def _fused_forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
    """Qwen3-VL vision attention for equal frame-pair segments (falls back to the original otherwise)."""
    length = hidden_states.shape[0]
    groups = cu_seqlens.shape[0] - 1
    if position_embeddings is None or max_seqlen is None or groups * max_seqlen != length:
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    qkv = self.qkv(hidden_states).view(length, 3, self.num_heads, -1)
    cos, sin = position_embeddings
    query, key = self._vcast_rotary(qkv[:, 0], qkv[:, 1], cos, sin)  # transformers' own rotary
    # Eager calls skip the operator's dispatch; compiled graphs need the opaque operator.
    attention = equal_groups_sdpa if torch.compiler.is_compiling() else grouped_sdpa
    out = attention(query, key, qkv[:, 2], groups, self.scaling)
    return self.proj(out.view(length, -1))


def use_fused_vision_attention(model) -> None:
    """Route every vision block's attention of this instance through `_fused_forward`."""
    for block in model.model.visual.blocks:
        attn = block.attn
        # transformers' own rotary function, from the module that defines this attention class
        attn._vcast_rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
        attn.forward = types.MethodType(_fused_forward, attn)  # the class's forward stays the fallback
