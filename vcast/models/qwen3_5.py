"""V-CAST for Qwen3.5 (dense and MoE): the Qwen3-VL video route without deepstack.

Qwen3.5's vision tower is Qwen3-VL's (16-pixel patches, 2-frame temporal groups, interpolated
position embeddings) without deepstack, and its positions are the same interleaved M-RoPE. Its
language model is a hybrid: three Gated DeltaNet (linear attention) layers to one full-attention
layer. A recurrent layer has no attention mask, so "an unpruned forward with the dropped tokens
masked out" does not exist for it; the tests' oracle for this family is a cache-free forward over
the pruned sequence built independently (see docs/DESIGN-NOTES.md).
"""

from __future__ import annotations

from .base import register
from .qwen3_vl import Qwen3VLAdapter


@register
class Qwen3_5Adapter(Qwen3VLAdapter):
    family = "qwen3_5"
    model_types = ("qwen3_5", "qwen3_5_moe")
    label = "Qwen3.5"
    checkpoints = ("Qwen/Qwen3.5-2B", "Qwen/Qwen3.5-9B", "Qwen/Qwen3.5-27B", "Qwen/Qwen3.5-35B-A3B")

    def encoder_output(self, embeds, extras):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=(embeds,))
