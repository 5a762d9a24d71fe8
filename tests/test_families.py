"""V-CAST inside every supported family: exactness against the plain model, on tiny random models (CPU, fp32).

The oracles, for each family of the adapter interface:
- R = 1 reproduces the plain model's logits and generated tokens exactly;
- R = 0.25 equals an unpruned forward in which the dropped video tokens are masked out of attention,
  through the prefill and 4 decode steps (attention-only families); Qwen3.5's linear-attention layers
  have no attention mask, so there the pruned pass must equal a cache-free forward over the kept tokens,
  built independently from the vision tower's output and the model's own positions;
- kept tokens carry their unpruned positions, and decoding continues where the model's own unpruned
  generation continues;
- encoding the vision tower in chunks of temporal groups gives the features of one pass.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _families import FAMILIES, QUESTION, capture_positions, family_setup, random_clip

from vcast import prune
from vcast.models.base import adapter_for
from vcast.models.tiny import tiny_model, tiny_processor

ATTENTION_ONLY = ("qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "llava_onevision")
STEPS = 4


def _prepared(adapter, inputs, ratio: float, method: str = "vcast", chunk_groups: int | None = None):
    """(features, unpruned positions, selection, pass inputs) through the adapter's public steps."""
    features = adapter.encode(inputs, chunk_groups=chunk_groups)
    positions = adapter.positions(adapter.prompt_on_host(inputs))
    selection = prune(features.grouped(), method, retain_ratio=ratio, grid_hw=features.grid[1:])
    return features, positions, selection, adapter.pass_inputs(inputs, features, positions, selection)


def _sequence_keep(adapter, inputs, features, selection) -> torch.Tensor:
    return adapter.sequence_keep(inputs["input_ids"], features, selection)


def _visual_inputs(inputs) -> dict:
    """The plain model's visual inputs (no ids, mask or per-token types: the reference gives its own)."""
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}


def _masked_reference_mask(length: int, dropped: torch.Tensor) -> torch.Tensor:
    """(1, 1, length, length) additive mask: causal, and no query may attend to a dropped token."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & ~dropped[None, :]
    allowed |= torch.eye(length, dtype=torch.bool)  # a dropped row attends to itself (its output is unused)
    return torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


def _positions_with_decoding(prompt_positions: torch.Tensor, decode_steps: list[torch.Tensor]) -> torch.Tensor:
    """The prompt's position ids followed by the decode steps' (all rows), with row 0 = plain index where 4 rows."""
    tail = torch.cat([step[..., -1:] for step in decode_steps], dim=-1)  # (rows, 1, steps) or (1, steps)
    if prompt_positions.dim() == 3 and prompt_positions.shape[0] == 3:  # (3, 1, L): add the sequence row
        length = prompt_positions.shape[-1] + tail.shape[-1]
        rope = torch.cat([prompt_positions, tail[1:]], dim=-1)
        return torch.cat([torch.arange(length).view(1, 1, -1), rope], dim=0)  # (4, 1, L + steps)
    return torch.cat([prompt_positions, tail], dim=-1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_full_retention_reproduces_the_plain_model_exactly(family, attn):
    model, adapter, inputs = family_setup(family, attn=attn)
    with torch.inference_mode():
        plain = model(**inputs).logits
        _, _, selection, ours_inputs = _prepared(adapter, inputs, ratio=1.0)
        ours = model(**ours_inputs.generate_kwargs()).logits
        plain_ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        our_ids = model.generate(**ours_inputs.generate_kwargs(), max_new_tokens=6, do_sample=False)
    assert bool(selection.keep_mask.all())
    assert torch.equal(ours, plain)
    assert torch.equal(our_ids[:, -6:], plain_ids[:, -6:])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ATTENTION_ONLY)
def test_pruned_prefill_and_decoding_equal_an_unpruned_forward_with_dropped_tokens_masked(family, attn):
    model, adapter, inputs = family_setup(family, attn=attn, seed=1)
    # Where the model itself puts the decoded tokens, unpruned.
    plain = capture_positions(model, lambda: model.generate(**inputs, max_new_tokens=STEPS, do_sample=False))
    with torch.inference_mode():
        features, positions, selection, pruned = _prepared(adapter, inputs, ratio=0.25)
    ours = capture_positions(model, lambda: None)
    generated = {}

    def run():
        generated["out"] = model.generate(**pruned.generate_kwargs(), max_new_tokens=STEPS, do_sample=False,
                                          output_logits=True, return_dict_in_generate=True)  # fmt: skip

    ours = capture_positions(model, run)
    new_ids = generated["out"].sequences[:, -STEPS:]
    # The pruned decoding continues exactly where the model's own unpruned decoding does.
    for own, plain_step in zip(ours[1:], plain[1:], strict=True):
        rows = slice(1, None) if own.dim() == 3 else slice(None)  # row 0 of the 4 is the shorter sequence
        assert torch.equal(own[rows][..., -1], plain_step[rows][..., -1])

    # The reference: the whole unpruned prompt plus the generated tokens, the dropped tokens masked.
    length = inputs["input_ids"].shape[1]
    full_ids = torch.cat([inputs["input_ids"], new_ids[:, :-1]], dim=1)
    dropped = torch.zeros(full_ids.shape[1], dtype=torch.bool)
    dropped[:length] = ~_sequence_keep(adapter, inputs, features, selection)
    with torch.inference_mode():
        reference = model(
            input_ids=full_ids, attention_mask=_masked_reference_mask(full_ids.shape[1], dropped),
            position_ids=_positions_with_decoding(positions, plain[1:]), **_visual_inputs(inputs),
        ).logits[0]  # fmt: skip
        unmasked = model(**inputs).logits[0]
    ref_steps = torch.stack([reference[length - 1 + i] for i in range(STEPS)])
    logits = torch.stack(generated["out"].logits, dim=0)[:, 0]
    assert (logits - ref_steps).abs().max() <= 1e-5
    assert torch.equal(new_ids[0], ref_steps.argmax(-1))
    # The oracle has teeth: seeing the dropped tokens changes the answer's logits.
    assert (logits[0] - unmasked[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_qwen3_5_pruned_pass_equals_a_cache_free_forward_over_the_kept_tokens(moe, attn):
    family = "qwen3_5_moe" if moe else "qwen3_5"
    model, adapter, inputs = family_setup(family, seed=2, attn=attn)
    plain = capture_positions(model, lambda: model.generate(**inputs, max_new_tokens=STEPS, do_sample=False))
    with torch.inference_mode():
        features, positions, selection, pruned = _prepared(adapter, inputs, ratio=0.25)
        out = model.generate(**pruned.generate_kwargs(), max_new_tokens=STEPS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
        new_ids = out.sequences[:, -STEPS:]
        # Independently: the vision tower in one call, the kept rows scattered into the kept ids' embeddings.
        video = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output
        kept = torch.cat(video)[selection.keep]  # (K, D)
        seq_keep = _sequence_keep(adapter, inputs, features, selection)
        ids = torch.cat([inputs["input_ids"][:, seq_keep], new_ids[:, :-1]], dim=1)  # (1, L' + steps - 1)
        embeds = model.get_input_embeddings()(ids)
        embeds[0, (ids[0] == model.config.video_token_id).nonzero().squeeze(1)] = kept
        rope = torch.cat([positions[:, :, seq_keep], torch.cat([p[1:, :, -1:] for p in plain[1:]], dim=-1)], dim=-1)
        position_ids = torch.cat([torch.arange(ids.shape[1]).view(1, 1, -1), rope], dim=0)
        reference = model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=torch.ones_like(ids),
                          use_cache=False).logits[0]  # fmt: skip
        unpruned = model(**inputs).logits[0, -1]
    start = int(seq_keep.sum()) - 1
    ref_steps = reference[start : start + STEPS]
    logits = torch.stack(out.logits, dim=0)[:, 0]
    assert (logits - ref_steps).abs().max() <= 1e-5
    assert torch.equal(new_ids[0], ref_steps.argmax(-1))
    assert (logits[0] - unpruned).abs().max() > 1e-3  # dropping tokens does change the answer


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_tokens_carry_their_unpruned_positions(family):
    _model, adapter, inputs = family_setup(family, seed=3)
    with torch.inference_mode():
        features, positions, selection, pruned = _prepared(adapter, inputs, ratio=0.25)
    seq_keep = _sequence_keep(adapter, inputs, features, selection)
    assert int(seq_keep.sum()) == pruned.input_ids.shape[1]
    assert torch.equal(pruned.input_ids[0], inputs["input_ids"][0, seq_keep])
    if pruned.position_ids.dim() == 3:  # M-RoPE: rows 1-3 are the unpruned (t, h, w); row 0 the new index
        assert torch.equal(pruned.position_ids[1:], positions[:, :, seq_keep])
        assert torch.equal(pruned.position_ids[0, 0], torch.arange(pruned.input_ids.shape[1]))
    else:  # 1-D: the original indices, with gaps where tokens were dropped, and an explicit mask
        assert torch.equal(pruned.position_ids[0], seq_keep.nonzero().squeeze(1))
        assert bool((pruned.position_ids.diff() > 1).any()) and pruned.attention_mask.shape == pruned.input_ids.shape
    video_slots = (pruned.input_ids[0] == adapter.video_token_id).sum()
    assert int(video_slots) == pruned.num_visual_tokens == selection.keep.numel() + (features.tail is not None)


@pytest.mark.parametrize("chunk_groups", [1, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_vision_encoding_gives_the_features_of_a_single_pass(family, chunk_groups):
    _model, adapter, inputs = family_setup(family)
    with torch.inference_mode():
        whole = adapter.encode(inputs, chunk_groups=99)
        chunked = adapter.encode(inputs, chunk_groups=chunk_groups)
    assert whole.grid == chunked.grid
    torch.testing.assert_close(chunked.embeds, whole.embeds, atol=1e-6, rtol=0)
    for a, b in zip(chunked.extras, whole.extras, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    if whole.tail is not None:
        assert torch.equal(chunked.tail, whole.tail)


@pytest.mark.parametrize("method", ["vcast", "evs", "vidcom2", "first_2x2"])
def test_llava_newline_is_never_selected_and_always_kept_last(method):
    _model, adapter, inputs = family_setup("llava_onevision", seed=4)
    ratio = 0.25 if method == "first_2x2" else 0.01
    with torch.inference_mode():
        features, positions, selection, pruned = _prepared(adapter, inputs, ratio=ratio, method=method)
    T, h, w = features.grid
    assert features.grouped().shape[:2] == (T, h * w) and selection.keep_mask.shape == (T, h * w)
    video = pruned.mm_encoder_outputs["video"].pooler_output  # (1, K + 1, D)
    assert video.shape[1] == selection.keep.numel() + 1
    assert torch.equal(video[0, -1], features.tail[0])  # the newline, after the kept frame tokens
    slots = (inputs["input_ids"][0] == adapter.video_token_id).nonzero().squeeze(1)
    newline_position = positions[0, slots[-1]]
    kept_slots = (pruned.input_ids[0] == adapter.video_token_id).nonzero().squeeze(1)
    assert pruned.position_ids[0, kept_slots[-1]] == newline_position


def test_qwen2_5_vl_temporal_positions_follow_the_clip_timing():
    """second_per_grid_ts reaches get_rope_index: 1 frame per second makes a temporal group 2 s long,
    so the temporal position advances tokens_per_second * 2 = 4 per group (without it: 2)."""
    model = tiny_model(family="qwen2_5_vl")
    adapter = adapter_for(model, tiny_processor("qwen2_5_vl"))
    clip = random_clip(8)
    clip = dataclasses.replace(clip, indices=clip.indices * 2, total_frames=clip.total_frames * 2,
                               timestamps=clip.timestamps * 2, duration=clip.duration * 2)  # fmt: skip
    inputs = adapter.processor_inputs(clip, QUESTION)
    positions = adapter.positions(adapter.prompt_on_host(inputs))
    slots = (inputs["input_ids"][0] == adapter.video_token_id).nonzero().squeeze(1)
    T, _h, _w = (int(v) for v in inputs["video_grid_thw"][0])
    temporal = positions[0, 0, slots].view(T, -1)  # (T, N)
    steps = temporal[1:, 0] - temporal[:-1, 0]
    assert float(inputs["second_per_grid_ts"][0]) == pytest.approx(2.0)
    assert steps.tolist() == [4] * (T - 1)


def test_other_model_types_are_refused_naming_every_supported_family():
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50))  # fmt: skip
    with pytest.raises(ValueError, match="'llama' model") as refused:
        adapter_for(llama, None)
    for name in ("Qwen3-VL", "Qwen2.5-VL", "Qwen3.5", "LLaVA-OneVision", "Qwen/Qwen3-VL-8B-Instruct",
                 "llava-hf/LLaVA-Video-7B-Qwen2-hf"):  # fmt: skip
        assert name in str(refused.value)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl", "qwen3_5"])
def test_faster_vision_paths_give_the_features_and_logits_of_transformers_own(family):
    plain_model, plain, inputs = family_setup(family, seed=6, num_frames=8)
    fast_model, fast, _ = family_setup(family, seed=6, num_frames=8)
    assert fast.speed_up_vision() and fast_model.config.vision_config._attn_implementation != "sdpa"
    assert plain_model.config.get_text_config()._attn_implementation == "sdpa"  # the language model is untouched
    with torch.inference_mode():
        reference, ours = plain.encode(inputs, chunk_groups=2), fast.encode(inputs, chunk_groups=2)
        positions = plain.positions(plain.prompt_on_host(inputs))
        selection = prune(reference.grouped(), "vcast", retain_ratio=0.5)
        logits = [m(**a.pass_inputs(inputs, f, positions, selection).generate_kwargs()).logits
                  for m, a, f in ((plain_model, plain, reference), (fast_model, fast, ours))]  # fmt: skip
    torch.testing.assert_close(ours.embeds, reference.embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=0)
