"""Qwen3-VL specifics: deepstack, batched vision attention, chunking and positions (tiny models, CPU, fp32).

The exactness oracles every family shares (R = 1, masked dropped tokens, positions) are in test_families.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.video_utils import VideoMetadata

from vcast import select_tokens
from vcast.models.base import adapter_for
from vcast.models.chunks import chunk_bounds
from vcast.models.tiny import tiny_model, tiny_processor

QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _inputs(processor, num_frames: int = 12, height: int = 96, width: int = 160, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (num_frames, height, width, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    indices = list(range(0, 5 * num_frames, 5))
    metadata = VideoMetadata(total_num_frames=5 * num_frames, fps=10.0, frames_indices=indices)
    return processor(text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                     return_tensors="pt")  # fmt: skip


def _encode(model, inputs, *, chunk_groups: int | None = None, processor=None):
    return adapter_for(model, processor).encode(inputs, chunk_groups=chunk_groups)


def _prepare(model, inputs, ratio: float):
    adapter = adapter_for(model, None)
    features = adapter.encode(inputs)
    positions = adapter.positions(adapter.prompt_on_host(inputs))
    selection = select_tokens(features.grouped(), retain_ratio=ratio)
    return features, positions, selection, adapter.pass_inputs(inputs, features, positions, selection)


def test_deepstack_features_are_sliced_with_the_same_keep_indices(processor):
    model = tiny_model()
    inputs = _inputs(processor)
    with torch.inference_mode():
        features, _, selection, pruned = _prepare(model, inputs, ratio=0.25)
    video = pruned.mm_encoder_outputs["video"]
    assert torch.equal(video.pooler_output[0], features.embeds[selection.keep])
    assert len(video.deepstack_features) == len(features.extras) == 2
    for sliced, full in zip(video.deepstack_features, features.extras, strict=True):
        assert torch.equal(sliced[0], full[selection.keep])
    assert pruned.num_visual_tokens == selection.keep.numel()


@pytest.mark.parametrize("chunk_groups", [1, 2, 5])
def test_chunked_vision_encoding_gives_the_same_features_as_a_single_pass(processor, chunk_groups):
    model = tiny_model()
    inputs = _inputs(processor, num_frames=12)
    with torch.inference_mode():
        whole = _encode(model, inputs, chunk_groups=99)
        chunked = _encode(model, inputs, chunk_groups=chunk_groups)
    assert whole.grid == chunked.grid == (6, 3, 5)
    torch.testing.assert_close(chunked.embeds, whole.embeds, atol=1e-6, rtol=0)
    for a, b in zip(chunked.extras, whole.extras, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batches_of_more_than_one_video_are_refused_with_a_clear_message(processor):
    inputs = _inputs(processor)
    doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
    with pytest.raises(ValueError, match="one video at a time"):
        adapter_for(tiny_model(), processor).check_single_video(doubled)


def _flash_attention_available() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(not _flash_attention_available(), reason="flash_attention_2 needs a CUDA GPU and flash-attn")
def test_flash_attention_2_pruned_pass_runs_and_matches_sdpa(processor):
    results = {}
    for attn in ("sdpa", "flash_attention_2"):
        model = tiny_model(attn_implementation=attn, dtype=torch.bfloat16).cuda()
        inputs = _inputs(processor).to("cuda")
        with torch.inference_mode():
            _, _, _, pruned = _prepare(model, inputs, ratio=0.25)
            results[attn] = model(**pruned.generate_kwargs()).logits.float()
    torch.testing.assert_close(results["flash_attention_2"], results["sdpa"], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_batched_vision_attention_gives_the_same_features_and_logits(processor, moe):
    from vcast.models.vision_attention import VISION_ATTENTION, use_batched_vision_attention

    model = tiny_model(moe=moe)
    inputs = _inputs(processor)
    with torch.inference_mode():
        per_group = _encode(model, inputs)
        plain = model(**inputs).logits
        use_batched_vision_attention(model)
        batched = _encode(model, inputs)
        logits = model(**inputs).logits
    assert model.model.visual.blocks[0].attn.config._attn_implementation == VISION_ATTENTION
    assert model.config.text_config._attn_implementation == "sdpa"  # the language model is untouched
    torch.testing.assert_close(batched.embeds, per_group.embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sizes", [(4, 6), (4, 4, 2, 4, 6, 2, 6)], ids=["two", "repeated-sizes"])
def test_batched_vision_attention_handles_segments_of_different_sizes(sizes):
    from vcast.models.vision_attention import equal_groups_attention

    g = torch.Generator().manual_seed(0)
    total = sum(sizes)
    q, k, v = (torch.randn(1, 2, total, 8, generator=g) for _ in range(3))
    bounds = torch.tensor([0, *np.cumsum(sizes)])
    out, _ = equal_groups_attention(None, q, k, v, scaling=0.3, cu_seq_lens_q=bounds, max_length_q=max(sizes))
    pairs = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    expected = torch.cat(
        [torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
         for a, b in pairs], dim=2,
    ).transpose(1, 2)  # fmt: skip
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("groups", [1, 2, 5, 16, 17, 64])
@pytest.mark.parametrize("most", [1, 3, 4, 5, 99])
def test_chunk_bounds_are_the_fewest_even_chunks(groups, most):
    bounds = chunk_bounds(groups, most)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == groups
    assert len(sizes) == -(-groups // most)  # the fewest chunks of at most `most` groups
    assert sizes.max() <= most and sizes.max() - sizes.min() <= 1
    assert list(sizes) == sorted(sizes, reverse=True)  # the longer chunks first


def test_chunk_bounds_refuses_an_empty_video():
    with pytest.raises(ValueError, match="at least one group"):
        chunk_bounds(0, 4)


def test_rope_positions_from_host_copies_equal_the_models_own(processor):
    model = tiny_model()
    inputs = _inputs(processor)
    adapter = adapter_for(model, processor)
    prompt = adapter.prompt_on_host(inputs)
    assert set(prompt) == {"input_ids", "mm_token_type_ids", "video_grid_thw", "attention_mask"}
    assert all(t.device.type == "cpu" for t in prompt.values())
    expected, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                             video_grid_thw=inputs["video_grid_thw"],
                                             attention_mask=inputs["attention_mask"])  # fmt: skip
    torch.testing.assert_close(adapter.positions(prompt, device="cpu"), expected, atol=0, rtol=0)
    assert adapter.positions(prompt).shape == (3, 1, inputs["input_ids"].shape[1])
    moved = adapter.positions(prompt, device="meta")  # the result goes where it is asked to
    assert moved.device.type == "meta" and moved.shape == expected.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream chunk copies need a CUDA GPU")
def test_chunk_copies_on_a_side_stream_give_the_features_of_a_single_pass(processor):
    model = tiny_model(dtype=torch.bfloat16).cuda()  # bf16: the side stream also casts the float32 patches
    inputs = _inputs(processor)
    pixels = inputs["pixel_values_videos"].pin_memory()
    with torch.inference_mode():
        whole = _encode(model, {**inputs, "pixel_values_videos": pixels.cuda()}, chunk_groups=99)
        for _ in range(3):  # the same stream serves every call, and freed chunk buffers are reused
            chunked = _encode(model, {**inputs, "pixel_values_videos": pixels}, chunk_groups=1)
            torch.testing.assert_close(chunked.embeds, whole.embeds, atol=2e-2, rtol=2e-2)
