"""V-CAST inside Qwen3-VL: exactness against the plain model, on tiny random models (CPU, fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.video_utils import VideoMetadata

from vcast import select_tokens
from vcast.models import qwen3_vl
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


def _prepare(model, inputs, ratio: float, chunk_groups: int | None = None):
    features = qwen3_vl.encode_video(
        model, inputs["pixel_values_videos"], inputs["video_grid_thw"], chunk_groups=chunk_groups
    )
    positions = qwen3_vl.rope_positions(model, inputs)
    selection = select_tokens(features.grouped(), retain_ratio=ratio)
    keep = None if ratio == 1.0 else selection.keep
    return features, positions, selection, qwen3_vl.pass_inputs(model, inputs, features, positions, keep)


def _masked_reference_mask(inputs, model, keep: torch.Tensor, extra: int = 0) -> torch.Tensor:
    """(1, 1, L+extra, L+extra) additive mask: causal, and no query may attend to a dropped video token."""
    input_ids = inputs["input_ids"][0]
    length = input_ids.shape[0] + extra
    is_video = input_ids == model.config.video_token_id
    dropped = torch.zeros(length, dtype=torch.bool)
    slots = is_video.nonzero().squeeze(1)
    dropped[slots] = True
    dropped[slots[keep]] = False
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & ~dropped[None, :]
    allowed |= torch.eye(length, dtype=torch.bool)  # a dropped row attends to itself (its output is unused)
    mask = torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_full_retention_reproduces_the_plain_model_exactly(processor, attn, moe):
    model = tiny_model(moe=moe, attn_implementation=attn)
    inputs = _inputs(processor)
    with torch.inference_mode():
        plain = model(**inputs).logits
        _, _, selection, pass_inputs = _prepare(model, inputs, ratio=1.0)
        ours = model(**pass_inputs.generate_kwargs()).logits
        plain_ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        our_ids = model.generate(**pass_inputs.generate_kwargs(), max_new_tokens=6, do_sample=False)
    assert bool(selection.keep_mask.all())
    assert torch.equal(ours, plain)
    assert torch.equal(our_ids[:, -6:], plain_ids[:, -6:])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_pruned_prefill_and_decoding_equal_an_unpruned_forward_with_dropped_tokens_masked(processor, attn, moe):
    model = tiny_model(moe=moe, attn_implementation=attn, seed=1)
    inputs = _inputs(processor, seed=1)
    steps = 4
    with torch.inference_mode():
        _, positions, selection, pruned = _prepare(model, inputs, ratio=0.25)
        generated = model.generate(
            **pruned.generate_kwargs(), max_new_tokens=steps, do_sample=False, output_logits=True,
            return_dict_in_generate=True,
        )  # fmt: skip
        new_ids = generated.sequences[:, -steps:]
        # The reference: the whole unpruned prompt plus the generated tokens, dropped tokens masked.
        full_ids = torch.cat([inputs["input_ids"], new_ids[:, :-1]], dim=1)
        length = inputs["input_ids"].shape[1]
        next_pos = positions.max() + 1 + torch.arange(steps - 1)
        rope = torch.cat([positions, next_pos.view(1, 1, -1).expand(3, 1, -1)], dim=2)
        position_ids = torch.cat([torch.arange(full_ids.shape[1]).view(1, 1, -1), rope], dim=0)
        reference = model(
            input_ids=full_ids,
            attention_mask=_masked_reference_mask(inputs, model, selection.keep, extra=steps - 1),
            position_ids=position_ids,
            pixel_values_videos=inputs["pixel_values_videos"],
            video_grid_thw=inputs["video_grid_thw"],
        ).logits[0]
    # Prefill: the logits of the last prompt token, then of each decoded token.
    ref_steps = torch.stack([reference[length - 1 + i] for i in range(steps)])
    ours = torch.stack(generated.logits, dim=0)[:, 0]
    assert (ours - ref_steps).abs().max() <= 1e-5
    assert torch.equal(new_ids[0], ref_steps.argmax(-1))


def test_pruned_prefill_logits_match_at_every_kept_position(processor):
    model = tiny_model(seed=2)
    inputs = _inputs(processor, seed=2)
    with torch.inference_mode():
        _, positions, selection, pruned = _prepare(model, inputs, ratio=0.25)
        ours = model(**pruned.generate_kwargs()).logits[0]
        position_ids = torch.cat([torch.arange(positions.shape[-1]).view(1, 1, -1), positions], dim=0)
        reference = model(
            input_ids=inputs["input_ids"], attention_mask=_masked_reference_mask(inputs, model, selection.keep),
            position_ids=position_ids, pixel_values_videos=inputs["pixel_values_videos"],
            video_grid_thw=inputs["video_grid_thw"],
        ).logits[0]  # fmt: skip
        unmasked = model(**inputs).logits[0]
    is_video = inputs["input_ids"][0] == model.config.video_token_id
    seq_keep = ~is_video
    seq_keep[is_video.nonzero().squeeze(1)[selection.keep]] = True
    assert (ours - reference[seq_keep]).abs().max() <= 1e-5
    # The oracle has teeth: seeing the dropped tokens changes the answer's logits.
    assert (ours[-1] - unmasked[-1]).abs().max() > 1e-3


def test_kept_tokens_keep_their_unpruned_positions_and_decoding_continues_after_the_maximum(processor):
    model = tiny_model(seed=3)
    inputs = _inputs(processor, seed=3)
    seen: list[torch.Tensor] = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            _, positions, selection, pruned = _prepare(model, inputs, ratio=0.25)
            model.generate(**pruned.generate_kwargs(), max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    prefill, decode_steps = seen[0], seen[1:]
    is_video = inputs["input_ids"][0] == model.config.video_token_id
    video_positions = positions[:, 0, is_video]  # (3, T*N) unpruned positions of every video token
    pruned_is_video = pruned.input_ids[0] == model.config.video_token_id
    assert torch.equal(prefill[1:, 0, pruned_is_video], video_positions[:, selection.keep])
    assert torch.equal(prefill[0, 0], torch.arange(pruned.input_ids.shape[1]))
    max_position = int(positions.max())
    for step, ids in enumerate(decode_steps):
        assert ids[1:, 0, -1].tolist() == [max_position + 1 + step] * 3
        assert int(ids[0, 0, -1]) == pruned.input_ids.shape[1] + step


def test_deepstack_features_are_sliced_with_the_same_keep_indices(processor):
    model = tiny_model()
    inputs = _inputs(processor)
    with torch.inference_mode():
        features, _, selection, pruned = _prepare(model, inputs, ratio=0.25)
    video = pruned.mm_encoder_outputs["video"]
    assert torch.equal(video.pooler_output[0], features.embeds[selection.keep])
    assert len(video.deepstack_features) == len(features.deepstack) == 2
    for sliced, full in zip(video.deepstack_features, features.deepstack, strict=True):
        assert torch.equal(sliced[0], full[selection.keep])
    assert pruned.num_visual_tokens == selection.keep.numel()


@pytest.mark.parametrize("chunk_groups", [1, 2, 5])
def test_chunked_vision_encoding_gives_the_same_features_as_one_pass(processor, chunk_groups):
    model = tiny_model()
    inputs = _inputs(processor, num_frames=12)
    with torch.inference_mode():
        whole = qwen3_vl.encode_video(model, inputs["pixel_values_videos"], inputs["video_grid_thw"], chunk_groups=99)
        chunked = qwen3_vl.encode_video(
            model, inputs["pixel_values_videos"], inputs["video_grid_thw"], chunk_groups=chunk_groups
        )
    assert whole.grid == chunked.grid == (6, 3, 5)
    torch.testing.assert_close(chunked.embeds, whole.embeds, atol=1e-6, rtol=0)
    for a, b in zip(chunked.deepstack, whole.deepstack, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_batches_of_more_than_one_video_are_refused_with_a_clear_message(processor):
    inputs = _inputs(processor)
    doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}
    with pytest.raises(ValueError, match="one video at a time"):
        qwen3_vl.check_single_video(doubled)


def test_other_model_families_are_refused_naming_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50))  # fmt: skip
    with pytest.raises(ValueError, match="supports Qwen3-VL"):
        qwen3_vl.check_supported(llama)


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
        per_group = qwen3_vl.encode_video(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
        plain = model(**inputs).logits
        use_batched_vision_attention(model)
        batched = qwen3_vl.encode_video(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
        logits = model(**inputs).logits
    assert model.model.visual.blocks[0].attn.config._attn_implementation == VISION_ATTENTION
    assert model.config.text_config._attn_implementation == "sdpa"  # the language model is untouched
    torch.testing.assert_close(batched.embeds, per_group.embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)


def test_batched_vision_attention_handles_groups_of_different_sizes():
    from vcast.models.vision_attention import equal_groups_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=g) for _ in range(3))
    bounds = torch.tensor([0, 4, 10])
    out, _ = equal_groups_attention(None, q, k, v, scaling=0.3, cu_seq_lens_q=bounds, max_length_q=6)
    expected = torch.cat(
        [torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)
         for a, b in ((0, 4), (4, 10))], dim=2,
    ).transpose(1, 2)  # fmt: skip
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("groups", [1, 2, 5, 16, 17, 64])
@pytest.mark.parametrize("most", [1, 3, 4, 5, 99])
def test_chunk_bounds_are_the_fewest_even_chunks(groups, most):
    bounds = qwen3_vl.chunk_bounds(groups, most)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == groups
    assert len(sizes) == -(-groups // most)  # the fewest chunks of at most `most` groups
    assert sizes.max() <= most and sizes.max() - sizes.min() <= 1
    assert list(sizes) == sorted(sizes, reverse=True)  # the longer chunks first


def test_chunk_bounds_refuses_an_empty_video():
    with pytest.raises(ValueError, match="at least one group"):
        qwen3_vl.chunk_bounds(0, 4)


def test_rope_positions_from_host_copies_equal_the_models_own(processor):
    model = tiny_model()
    inputs = _inputs(processor)
    prompt = qwen3_vl.prompt_on_host(inputs)
    assert set(prompt) == {"input_ids", "mm_token_type_ids", "video_grid_thw", "attention_mask"}
    assert all(t.device.type == "cpu" for t in prompt.values())
    expected, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                             video_grid_thw=inputs["video_grid_thw"],
                                             attention_mask=inputs["attention_mask"])  # fmt: skip
    torch.testing.assert_close(qwen3_vl.rope_positions(model, prompt, device="cpu"), expected, atol=0, rtol=0)
    assert qwen3_vl.rope_positions(model, prompt).shape == (3, 1, inputs["input_ids"].shape[1])
    moved = qwen3_vl.rope_positions(model, prompt, device="meta")  # the result goes where it is asked to
    assert moved.device.type == "meta" and moved.shape == expected.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream chunk copies need a CUDA GPU")
def test_chunk_copies_on_a_side_stream_give_the_features_of_one_pass(processor):
    model = tiny_model(dtype=torch.bfloat16).cuda()  # bf16: the side stream also casts the float32 patches
    inputs = _inputs(processor)
    pixels = inputs["pixel_values_videos"].pin_memory()
    with torch.inference_mode():
        whole = qwen3_vl.encode_video(model, pixels.cuda(), inputs["video_grid_thw"], chunk_groups=99)
        for _ in range(3):  # the same stream serves every call, and freed chunk buffers are reused
            chunked = qwen3_vl.encode_video(model, pixels, inputs["video_grid_thw"], chunk_groups=1)
            torch.testing.assert_close(chunked.embeds, whole.embeds, atol=2e-2, rtol=2e-2)
