"""The faster vision paths give the features of transformers' own vision tower (tiny models, CPU, fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.video_utils import VideoMetadata

from vcast.models import vision_fast
from vcast.models.base import adapter_for
from vcast.models.tiny import tiny_model, tiny_processor
from vcast.models.vision_attention import use_batched_vision_attention
from vcast.models.vision_fast import (
    LinearPatchEmbed,
    equal_groups_sdpa,
    grouped_sdpa,
    use_fused_vision_attention,
    use_linear_patch_embed,
)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _video_inputs(processor, num_frames=12, height=96, width=160):
    frames = np.random.default_rng(3).integers(0, 255, (num_frames, height, width, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=num_frames, fps=2.0, frames_indices=list(range(num_frames)))
    return processor(text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                     return_tensors="pt")  # fmt: skip


def test_linear_patch_embed_equals_the_convolution_and_shares_its_weights():
    conv = torch.nn.Conv3d(3, 32, kernel_size=(2, 16, 16), stride=(2, 16, 16), bias=True)
    patches = torch.randn(50, 3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    linear = LinearPatchEmbed(conv)
    assert linear.weight is conv.weight and linear.bias is conv.bias
    with torch.no_grad():
        torch.testing.assert_close(linear(patches), conv(patches), atol=1e-5, rtol=1e-5)


def test_linear_patch_embed_refuses_a_real_convolution():
    with pytest.raises(ValueError, match="kernel equals its stride"):
        LinearPatchEmbed(torch.nn.Conv3d(3, 8, kernel_size=3, stride=1))


def test_equal_groups_sdpa_is_attention_within_each_group_and_passes_opcheck():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3 * 10, 4, 8, generator=g) for _ in range(3))
    out = equal_groups_sdpa(q, k, v, 3, 0.25)
    for i in range(3):
        rows = slice(10 * i, 10 * (i + 1))
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1), scale=0.25
        ).transpose(0, 1)
        torch.testing.assert_close(out[rows], expected)
    assert out.is_contiguous()
    # strided value rows (a slice of a packed qkv tensor), the way the vision tower passes them
    qkv = torch.randn(30, 3, 4, 8, generator=g)
    torch.testing.assert_close(equal_groups_sdpa(q, k, qkv[:, 2], 3, 0.25),
                               equal_groups_sdpa(q, k, qkv[:, 2].contiguous(), 3, 0.25))  # fmt: skip
    torch.library.opcheck(equal_groups_sdpa, (q, k, v, 3, 0.25))


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_fast_vision_paths_give_the_same_features_logits_and_state(processor, moe, monkeypatch):
    model = tiny_model(moe=moe)
    inputs = _video_inputs(processor)
    state_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.inference_mode():
        plain = adapter_for(model, processor).encode(inputs, chunk_groups=4)
        logits = model(**inputs).logits
    use_linear_patch_embed(model)
    use_fused_vision_attention(model)
    use_fused_vision_attention(model)  # a second call changes nothing
    calls = []
    monkeypatch.setattr(vision_fast, "grouped_sdpa", lambda *a: calls.append(a[3]) or grouped_sdpa(*a))
    with torch.inference_mode():
        fast = adapter_for(model, processor).encode(inputs, chunk_groups=4)
        fast_logits = model(**inputs).logits
    depth = len(model.model.visual.blocks)
    # 6 frame pairs at most 4 per chunk: two chunks of 3, fused at every layer. model() passes no
    # max_seqlen, so its vision tower takes transformers' path (the logits check below covers it).
    assert calls == [3] * (2 * depth)
    torch.testing.assert_close(fast.embeds, plain.embeds, atol=1e-5, rtol=0)
    for a, b in zip(fast.extras, plain.extras, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_logits, logits, atol=1e-4, rtol=0)  # fp32 sums in another order
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[name], tensor) for name, tensor in state_before.items())


def test_fused_attention_falls_back_for_segments_of_different_sizes(monkeypatch):
    model = tiny_model()
    use_batched_vision_attention(model)  # passes max_seqlen, so the fused forward must check the sizes itself
    visual = model.model.visual
    grid = torch.tensor([[1, 4, 6], [1, 6, 4], [1, 2, 2]])  # three images: 24, 24 and 4 patches
    patches = torch.randn(int(grid.prod(-1).sum()), visual.patch_embed.proj.weight[0].numel(),
                          generator=torch.Generator().manual_seed(2))  # fmt: skip
    with torch.inference_mode():
        plain = visual(patches, grid_thw=grid).pooler_output
        use_fused_vision_attention(model)
        use_linear_patch_embed(model)
        calls = []
        monkeypatch.setattr(vision_fast, "grouped_sdpa", lambda *a: calls.append(a[3]) or grouped_sdpa(*a))
        fast = visual(patches, grid_thw=grid).pooler_output
        assert calls == []  # unequal segments: transformers' path, never the equal-groups call
        same = torch.tensor([[1, 4, 6], [1, 4, 6]])  # equal segments: the fused path
        visual(torch.randn(48, patches.shape[1]), grid_thw=same)
        assert calls == [2] * len(visual.blocks)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_linear_patch_embed_leaves_offloaded_or_meta_convolutions_alone():
    model = tiny_model()
    conv = model.model.visual.patch_embed.proj
    conv._hf_hook = object()  # what accelerate attaches to an offloaded module
    use_linear_patch_embed(model)
    assert model.model.visual.patch_embed.proj is conv
    meta_conv = torch.nn.Conv3d(3, conv.out_channels, conv.kernel_size, conv.stride, device="meta")
    model.model.visual.patch_embed.proj = meta_conv  # weights not loaded yet (accelerate's empty init)
    use_linear_patch_embed(model)
    assert model.model.visual.patch_embed.proj is meta_conv
    del conv._hf_hook
    model.model.visual.patch_embed.proj = conv
    use_linear_patch_embed(model)
    assert isinstance(model.model.visual.patch_embed.proj, LinearPatchEmbed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU attention backends need a CUDA GPU")
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"])
def test_grouped_sdpa_on_strided_views_matches_per_group_attention_on_each_gpu_backend(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(4 * 196, 3, 16, 72, generator=g, device="cuda", dtype=torch.bfloat16)  # 8B's head dim
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # strided rows, as the vision tower passes them
    with sdpa_kernel(getattr(SDPBackend, backend)):
        out = equal_groups_sdpa(q, k, v, 4, 72**-0.5)
    for i in range(4):
        rows = slice(196 * i, 196 * (i + 1))
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(t[rows].transpose(0, 1).contiguous().float() for t in (q, k, v)), scale=72**-0.5
        ).transpose(0, 1)
        torch.testing.assert_close(out[rows].float(), ref, atol=2e-2, rtol=2e-2)
