"""Short prefills padded to a few lengths and replayed as CUDA graphs (`vcast.models.prefill_graphs`, opt-in:
`GraphDecoder.record_prefills`): generate's tokens, the unpadded prefill's logits and cache, bounded memory, and on a
GPU a replay that gives the eager padded prefill's logits bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen3_vl import modeling_qwen3_vl

from benchmarks.bench import synthetic_clip
from vcast.models.graph_decode import GraphDecoder
from vcast.models.prefill_graphs import _Recorded, layer_mask_as
from vcast.pipeline import VideoQA

QUESTION = "What happens in this video?"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _served(plain: VideoQA, **options) -> VideoQA:
    """The same model with a graph decoder whose prefills are padded (and on a GPU recorded)."""
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)
    qa.graph_decoder.record_prefills(**options)
    return qa


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_padded_prefills_give_generates_tokens(device):
    """On the CPU the padded prefill runs eagerly; on a GPU the first one of a padded length runs eagerly and the
    next ones replay its recording."""
    plain = VideoQA.tiny(graph_decode=False)
    plain.model.to(device)
    qa = _served(plain, bucket=16, kept=4)
    graphs = qa.graph_decoder.prefill_graphs
    for frames, height, width in [(8, 64, 96), (12, 96, 64), (8, 64, 96)]:
        clip = synthetic_clip(frames, height, width)
        expected = plain.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=8, min_new_tokens=8)
        got = qa.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=8, min_new_tokens=8)
        assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
        assert got.full.token_ids == expected.full.token_ids
    lengths = {got.passes["vcast"].metrics.sequence_length, got.full.metrics.sequence_length}
    assert all(length % 16 for length in lengths)  # the prompts really were padded
    assert graphs.failure is None
    assert graphs.recordings == (4 if device == "cuda" else 0)  # each padded length recorded once, then replayed


def test_a_padded_prefill_gives_the_unpadded_logits_and_cache_and_counts_only_the_prompt():
    plain = VideoQA.tiny(graph_decode=False)
    unpadded = _served(plain, bucket=1)  # a multiple of 1: no padding
    padded = _served(plain, bucket=64)
    prepared = plain.prepare(synthetic_clip(8, 64, 96), QUESTION)
    inputs = plain.pass_inputs(prepared, plain.select(prepared, "vcast"))
    length = int(inputs.input_ids.shape[1])
    assert length % 64
    found = []
    with torch.inference_mode():
        for qa in (unpadded, padded):
            decoder = qa.graph_decoder
            cache = decoder.cache_for(length, length + 8)
            assert decoder.prefill_graphs.serves(cache)
            logits = decoder.prefill(inputs, cache, logits_to_keep=None).logits
            found.append((logits, cache))
    (logits, cache), (padded_logits, padded_cache) = found
    assert padded_logits.shape == logits.shape  # the padded positions' logits are not returned
    torch.testing.assert_close(padded_logits, logits)
    for layer, padded_layer in zip(cache.layers, padded_cache.layers, strict=True):
        assert int(padded_layer.cumulative_length) == int(layer.cumulative_length) == length
        torch.testing.assert_close(padded_layer.keys[:, :, :length], layer.keys[:, :, :length])
        torch.testing.assert_close(padded_layer.values[:, :, :length], layer.values[:, :, :length])
    # the padding was written (zero embeddings: zero keys in the first layer, not after it attended to the prompt)
    assert padded_cache.layers[-1].keys[:, :, length : -(-length // 64) * 64].abs().sum() > 0


def test_recorded_prefills_are_bounded_and_reuse_their_cache():
    plain = VideoQA.tiny(graph_decode=False)
    decoder = _served(plain, bucket=32, max_tokens=200, kept=2).graph_decoder
    graphs = decoder.prefill_graphs
    first = decoder.cache_for(70, 80)
    assert graphs.cache_for(90, 100) is first  # 70 and 90 tokens: both padded to 96, in a cache of 128 slots
    with torch.inference_mode():
        first.stacked[2].fill_(5) if getattr(first, "stacked", None) else first.layers[0].cumulative_length.fill_(5)
    assert decoder.cache_for(70, 80) is first and int(first.layers[0].cumulative_length) == 0  # back to empty
    decoder.cache_for(40, 60)
    decoder.cache_for(150, 160)
    assert len(graphs._recorded) == 2 and not graphs.serves(first)  # the least recently used was dropped
    assert graphs.held_bytes() > 0
    longer = decoder.cache_for(201, 210)  # over max_tokens: an ordinary cache, prefilled as before
    assert not graphs.serves(longer) and longer.layers[0].max_cache_len == decoder.caches.length_for(210)


def test_the_capture_gives_the_layers_the_mask_the_uncaptured_run_gave_them():
    """transformers materialises the causal mask while a CUDA stream is captured (it counts that as tracing), where
    the uncaptured prefill leaves it to SDPA; `layer_mask_as` records the uncaptured run's mask and hands the capture
    that one, so the layers see the same mask (and the compiled layers' guards hold)."""
    plain = VideoQA.tiny(graph_decode=False)
    prepared = plain.prepare(synthetic_clip(8, 64, 96), QUESTION)
    kwargs = plain.pass_inputs(prepared, plain.select(prepared, "vcast")).generate_kwargs()
    language_model = plain.model.get_decoder()
    seen = []
    hook = language_model.layers[0].register_forward_pre_hook(
        lambda module, args, layer_kwargs: seen.append(layer_kwargs["attention_mask"]), with_kwargs=True
    )
    recorded = _Recorded(cache=None, padded=0)
    original = modeling_qwen3_vl.create_causal_mask
    try:
        with torch.inference_mode():
            with layer_mask_as(language_model, recorded, replay=False):
                plain.model(**kwargs)
            assert seen[-1] is recorded.layer_mask  # recorded: what the layers got
            length = int(kwargs["input_ids"].shape[1])
            recorded.layer_mask = torch.ones((1, 1, length, length), dtype=torch.bool).tril()
            with layer_mask_as(language_model, recorded, replay=True):
                plain.model(**kwargs)
            assert seen[-1] is recorded.layer_mask  # replayed: the recorded mask, not a new one
    finally:
        hook.remove()
    assert modeling_qwen3_vl.create_causal_mask is original  # put back


@CUDA
def test_on_a_gpu_a_recorded_compiled_prefill_replays_the_eager_padded_logits_bit_for_bit():
    plain = VideoQA.tiny(graph_decode=False)
    plain.model.to("cuda", torch.bfloat16)
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True, compile_prefill=True)
    decoder = qa.graph_decoder
    assert decoder.prefill_graphs is None  # not the default
    decoder.record_prefills()
    assert decoder.prefill_graphs.record  # on a GPU
    prepared = qa.prepare(synthetic_clip(8, 64, 96), QUESTION)
    inputs = qa.pass_inputs(prepared, qa.select(prepared, "vcast"))
    length = int(inputs.input_ids.shape[1])
    logits = []
    with torch.inference_mode():
        for _ in range(3):  # the first runs eagerly (and records), the next two replay
            cache = decoder.cache_for(length, length + 8)
            logits.append(decoder.prefill(inputs, cache, logits_to_keep=None).logits.clone())
            assert int(cache.layers[0].cumulative_length) == length
    assert decoder.prefill_graphs.recordings == 1 and decoder.prefill_graphs.failure is None
    assert decoder.prefill_graphs.pool_bytes() > 0
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)
    torch.testing.assert_close(logits[2], logits[0], rtol=0, atol=0)
    # the replay holds Inductor's kernels (the compiled layers), not transformers' eager ones
    from torch.profiler import ProfilerActivity, profile

    cache = decoder.cache_for(length, length + 8)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.prefill(inputs, cache)
        torch.cuda.synchronize()
    assert any(event.name.startswith("triton_") for event in prof.events()), "the replay ran no compiled kernel"
