"""Cutting a pass and starting its prefill without the host waiting for the GPU (`ModelAdapter.sequence_index`,
`compiled_prefill._placeholders_unchecked`, the graph decoder's prefill without its all-ones mask): the very inputs and
tokens of the waiting route, and on a GPU no synchronisation at all between the vision tower and the first token's
read."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.bench import synthetic_clip
from vcast.methods import METHODS
from vcast.models.compiled_prefill import deepstack_without_waits
from vcast.models.configs import TINY_FAMILIES
from vcast.pipeline import VideoQA

QUESTION = "What happens in this video?"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _same(a, b) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_pass_cut_from_the_host_ids_equals_the_pass_cut_on_the_device(family):
    qa = VideoQA.tiny(family=family)
    prepared = qa.prepare(synthetic_clip(8, 64, 96), QUESTION)
    assert prepared.host_ids is not None and prepared.host_ids.device.type == "cpu"
    waiting = dataclasses.replace(prepared, host_ids=None)
    for method in [None, *METHODS]:
        selection = None if method is None else qa.select(prepared, method)
        fast, slow = qa.pass_inputs(prepared, selection), qa.pass_inputs(waiting, selection)
        assert _same(fast.input_ids, slow.input_ids), method
        assert _same(fast.position_ids, slow.position_ids), method
        assert _same(fast.attention_mask, slow.attention_mask) and fast.num_visual_tokens == slow.num_visual_tokens
        if selection is not None:  # the kept video placeholders: as many as the kept feature rows
            kept = int((fast.input_ids == qa.adapter.video_token_id).sum())
            assert kept == fast.num_visual_tokens  # (LLaVA's count holds its newline token)


def test_the_host_route_still_refuses_a_prompt_whose_placeholders_do_not_match_the_video():
    qa = VideoQA.tiny()
    prepared = qa.prepare(synthetic_clip(8, 64, 96), QUESTION)
    ids = prepared.host_ids.clone()
    ids[0, (ids[0] == qa.adapter.video_token_id).nonzero()[0]] = 0  # one placeholder fewer
    with pytest.raises(ValueError, match=r"the prompt holds \d+ video tokens but the video has"):
        qa.pass_inputs(dataclasses.replace(prepared, host_ids=ids), qa.select(prepared, "vcast"))


def test_the_unchecked_placeholder_masks_are_transformers_masks():
    qa = VideoQA.tiny()
    inner = qa.model.model
    prepared = qa.prepare(synthetic_clip(8, 64, 96), QUESTION)
    ids = prepared.inputs["input_ids"]
    embeds = qa.model.get_input_embeddings()(ids)
    video = torch.zeros(int((ids == qa.adapter.video_token_id).sum()), embeds.shape[-1])
    expected = inner.get_placeholder_mask(ids, inputs_embeds=embeds, video_features=video)
    assert deepstack_without_waits(qa.model)
    got = inner.get_placeholder_mask(ids, inputs_embeds=embeds, video_features=video)
    assert all(_same(a, b) for a, b in zip(got, expected, strict=True)) and bool(got[1].any())


@pytest.mark.parametrize("compiled", [False, True])
def test_the_graph_decoders_prefill_without_the_mask_gives_generates_tokens(compiled):
    """The graph decoder with its GPU kernels (on the CPU here) leaves out the all-ones mask and transformers'
    placeholder checks: the same tokens as generate, for the pruned and the unpruned pass."""
    from vcast.models.graph_decode import GraphDecoder

    plain = VideoQA.tiny(graph_decode=False)
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)
    if compiled:
        qa.graph_decoder.compile_prefill()
    clip = synthetic_clip(8, 64, 96)
    expected = plain.answer(clip, QUESTION, max_new_tokens=8, min_new_tokens=8)
    got = qa.answer(clip, QUESTION, max_new_tokens=8, min_new_tokens=8)
    assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
    assert got.full.token_ids == expected.full.token_ids


@CUDA
def test_on_a_gpu_nothing_between_the_vision_tower_and_the_first_token_waits_for_the_gpu():
    """With CUDA's sync debug mode set to "error", any operation that makes the host wait for the device raises: the
    selection, the cut of the pass and the prefill (eager and compiled) run without one, so the host can queue the
    prefill while the GPU still runs the vision tower."""
    qa = VideoQA.tiny(graph_decode=True, compile_prefill=True)
    qa.model.to("cuda")
    decoder = qa.graph_decoder
    assert decoder is not None and decoder.fast is not None
    prepared = qa.prepare(synthetic_clip(8, 64, 96), QUESTION)
    for _ in range(2):  # the first prefill compiles (compiling may wait); the second must not
        for method in (None, "vcast"):
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.inference_mode():
                    selection = None if method is None else qa.select(prepared, method)
                    inputs = qa.pass_inputs(prepared, selection)
                    cache = decoder.caches.get(int(inputs.input_ids.shape[1]) + 4)
                    if _ > 0:
                        logits = decoder.prefill(inputs, cache).logits
            finally:
                torch.cuda.set_sync_debug_mode("default")
            if _ == 0:
                with torch.inference_mode():
                    decoder.prefill(inputs, cache)
            else:
                assert torch.isfinite(logits).all()
