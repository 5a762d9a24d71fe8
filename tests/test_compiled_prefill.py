"""The compiled LLM prefill (`vcast.models.compiled_prefill`, the app's default for dense Qwen3-VL on a GPU):
generate's tokens, one compilation for every prompt length and layer, nothing compiled once frozen, and
deepstack's sums without host waits. On the CPU Inductor compiles C++ kernels; the CUDA test compares with
the eager prefill in bfloat16."""

from __future__ import annotations

import cProfile
import pstats

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import StaticCache
from transformers.models.qwen3_vl import modeling_qwen3_vl

from benchmarks.bench import synthetic_clip
from vcast.models.compiled_prefill import (
    CompiledPrefill,
    PrefillCache,
    StackedPrefillCache,
    _deepstack_by_index,
    compiled_prefill_unsupported,
    inductor_options,
)
from vcast.models.decode import DecodeCaches, cache_bytes
from vcast.models.graph_decode import GraphDecoder
from vcast.pipeline import VideoQA

QUESTION = "What happens in this video?"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def pair():
    """The tiny Qwen3-VL twice: generate, and the graph decoder with its prefill compiled."""
    plain = VideoQA.tiny(graph_decode=False)
    compiled = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True, compile_prefill=True)
    return plain, compiled


def _counted(prefill: CompiledPrefill) -> list[int]:
    """Counts the calls of `prefill`'s compiled layers (one per layer and prefill that ran compiled)."""
    count = [0]

    def counting(call):
        def run(*args, **kwargs):
            count[0] += 1
            return call(*args, **kwargs)

        return run

    prefill.calls = [counting(call) for call in prefill.calls]
    return count


def test_compiled_prefill_answers_as_generate_and_compiles_once_for_every_length(pair):
    plain, compiled = pair
    assert compiled.prefill_compiled and isinstance(compiled.graph_decoder.caches.get(8), PrefillCache)
    prefill = compiled.graph_decoder.compiled_prefill
    calls, before, graphs, tokens = _counted(prefill), _graphs(), [], 0
    for frames, height, width in [(8, 64, 96), (12, 96, 64), (6, 64, 64)]:
        clip = synthetic_clip(frames, height, width)
        expected = plain.answer(clip, QUESTION, methods=["vcast", "evs"], max_new_tokens=10)
        got = compiled.answer(clip, QUESTION, methods=["vcast", "evs"], max_new_tokens=10)
        for name in ("vcast", "evs"):
            assert got.passes[name].token_ids == expected.passes[name].token_ids
        assert got.full.token_ids == expected.full.token_ids
        graphs.append(_graphs())
        tokens += sum(len(p.token_ids) for p in (got.passes["vcast"], got.passes["evs"], got.full))
    lengths = {got.passes["vcast"].metrics.sequence_length, got.full.metrics.sequence_length}
    assert len(lengths) == 2
    # every layer ran compiled in every prefill and decode step (each token is one of them; on the CPU no step runs
    # past the end of the answer)
    assert calls[0] == len(prefill.layers) * tokens
    # nine prompt lengths: graphs compiled for the first video's, none after
    assert graphs[0] > before and graphs[1] == graphs[2] == graphs[0]


def test_a_prefill_into_another_cache_runs_eagerly(pair):
    """Only a PrefillCache keeps the cache update out of the graphs; traced, another cache would compile a graph
    per layer. The decoder runs such a prefill eagerly."""
    _, compiled = pair
    decoder = compiled.graph_decoder
    calls, before = _counted(decoder.compiled_prefill), _graphs()
    prepared = compiled.prepare(synthetic_clip(8, 64, 96), QUESTION)
    inputs = compiled.pass_inputs(prepared)
    with torch.inference_mode():
        decoder.prefill(inputs, StaticCache(config=decoder.caches.text_config, max_cache_len=inputs.input_ids.shape[1]))
    assert calls[0] == 0 and _graphs() == before


def test_once_frozen_a_shape_no_graph_serves_runs_eagerly_instead_of_compiling(pair):
    _, compiled = pair
    prefill = compiled.graph_decoder.compiled_prefill
    layer = prefill.layers[0]
    text = compiled.model.get_decoder()
    hidden = torch.randn(1, 5, text.config.hidden_size)
    positions = torch.arange(5).view(1, 1, -1).expand(3, 1, -1)
    with torch.inference_mode():
        rotary = text.rotary_emb(hidden, positions)
        expected = layer(hidden, position_embeddings=rotary, attention_mask=None, cache=None)
        before = _graphs()
        prefill.freeze()
        try:
            with prefill.active():  # no cache: a branch no compiled graph holds
                frozen = layer(hidden, position_embeddings=rotary, attention_mask=None, cache=None)
            assert _graphs() == before
            torch.testing.assert_close(frozen, expected, rtol=0, atol=0)  # the eager layer itself
        finally:
            prefill.frozen = False
        with prefill.active():
            layer(hidden, position_embeddings=rotary, attention_mask=None, cache=None)
        assert _graphs() > before  # unfrozen, the same call compiles


def test_compile_prefill_is_ignored_where_it_cannot_serve_the_model(monkeypatch):
    moe = VideoQA.tiny(moe=True, graph_decode=True, compile_prefill=True)
    assert not moe.prefill_compiled
    assert "Qwen3VLMoeTextDecoderLayer" in compiled_prefill_unsupported(moe.model)
    with pytest.raises(ValueError, match="CompiledPrefill cannot serve this model"):
        CompiledPrefill(moe.model)
    assert not VideoQA.tiny(graph_decode=False, compile_prefill=True).prefill_compiled  # no graph decoder
    for family in ("qwen2_5_vl", "llava_onevision"):
        assert not VideoQA.tiny(family=family, graph_decode=True, compile_prefill=True).prefill_compiled
    # a model spread over several devices (or offloaded) decodes through generate: no prefill of the decoder's runs
    monkeypatch.setattr("vcast.models.graph_decode._single_device", lambda model: None)
    assert not VideoQA.tiny(graph_decode=True, compile_prefill=True).prefill_compiled


def test_a_server_freezes_the_prefill_with_the_vision_tower(pair):
    """`catalogue.warm_up_for_serving` ends with `freeze_vision_compilation` (tests/test_catalogue.py), which freezes
    the compiled prefill too."""
    plain, _ = pair
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True, compile_prefill=True)
    assert not qa.graph_decoder.compiled_prefill.frozen
    qa.freeze_vision_compilation()
    assert qa.graph_decoder.compiled_prefill.frozen


def test_use_eager_prefill_undoes_it(pair):
    plain, _ = pair
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True, compile_prefill=True)
    assert qa.graph_decoder.compiled_steps
    qa.use_eager_prefill()
    assert not qa.prefill_compiled and type(qa.graph_decoder.caches.get(8)).__name__ == "StaticCache"
    assert not qa.graph_decoder.compiled_steps


@pytest.mark.parametrize("dense", [False, True], ids=["indexed", "dense"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_deepstack_by_index_adds_exactly_what_transformers_boolean_indexing_adds(device, dense):
    """The features indexed by the visual mask, or (a recorded prefill's, `vcast.models.prefill_graphs`) already
    placed at the visual positions, zero elsewhere."""
    torch.manual_seed(0)
    hidden = torch.randn(1, 40, 16, dtype=torch.bfloat16, device=device)
    mask = torch.zeros(1, 40, dtype=torch.bool, device=device)
    mask[0, [3, 4, 5, 17, 30, 31, 39]] = True
    embeds = torch.randn(7, 16, device=device)
    if dense:
        embeds = embeds.to(torch.bfloat16)  # placed in a buffer of the hidden states' dtype
    expected = modeling_qwen3_vl.Qwen3VLTextModel._deepstack_process(None, hidden, mask, embeds)
    if dense:
        placed = torch.zeros_like(hidden)
        placed[mask] = embeds
        got = _deepstack_by_index(None, hidden, None, placed)
    else:
        got = _deepstack_by_index(None, hidden, mask, embeds)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(got[0, ~mask[0]], hidden[0, ~mask[0]])


def test_the_graph_decoder_with_its_gpu_kernels_adds_deepstack_without_waits():
    qa = VideoQA.tiny(graph_decode=False)
    GraphDecoder(qa.model, fast_kernels=True)
    assert qa.model.get_decoder()._deepstack_process.__func__ is _deepstack_by_index


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_in_bfloat16_the_compiled_prefill_gives_the_eager_prefills_logits_up_to_rounding(device):
    plain = VideoQA.tiny(graph_decode=False)
    plain.model.to(device, torch.bfloat16)
    eager = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    eager.graph_decoder = GraphDecoder(plain.model, graphs=False)  # also on the CPU
    compiled = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    compiled.graph_decoder = GraphDecoder(plain.model, graphs=False)
    compiled.graph_decoder.compile_prefill()
    prepared = eager.prepare(synthetic_clip(8, 64, 96), QUESTION)
    for selection in (None, eager.select(prepared, "vcast")):
        inputs = eager.pass_inputs(prepared, selection)
        length = int(inputs.input_ids.shape[1]) + 4
        with torch.inference_mode():
            logits = [qa.graph_decoder.prefill(inputs, qa.graph_decoder.caches.get(length), logits_to_keep=None)
                      .logits.float() for qa in (eager, compiled)]  # fmt: skip
        # Fused kernels keep float32 between operations where the eager ones round to bfloat16: measured, logits of
        # mean size 2.55 differ by 0.016 on average (0.6%) and by at most 0.075 (H200) / 0.125 (CPU).
        torch.testing.assert_close(logits[1], logits[0], rtol=0.05, atol=0.25)
        assert (logits[1] - logits[0]).abs().mean() < 0.02 * logits[0].abs().mean()


# -- the decode steps through the same compiled layers (`compile_prefill(steps=True)`) ------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_compiled_steps_give_generates_tokens_and_every_step_runs_compiled(device):
    """On the CPU the steps run eagerly through the compiled layers; on a GPU they are recorded as CUDA graphs
    of Inductor's kernels (the decoder says "cuda_graphs": recording them did not fail)."""
    plain = VideoQA.tiny(graph_decode=False)
    plain.model.to(device)
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)  # flash / masked attention over filled slots
    qa.graph_decoder.compile_prefill(steps=True)
    prefill = qa.graph_decoder.compiled_prefill
    tokens, graphs = 10, []
    for frames, height, width in [(8, 64, 96), (12, 96, 64)]:
        clip = synthetic_clip(frames, height, width)
        calls = _counted(prefill)
        expected = plain.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=tokens, min_new_tokens=tokens)
        got = qa.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=tokens, min_new_tokens=tokens)
        assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
        assert got.full.token_ids == expected.full.token_ids
        expected_decoding = "cuda_graphs" if device == "cuda" else "eager_loop"
        assert got.full.metrics.decoding == expected_decoding, qa.graph_decoder.failure
        if device == "cpu":  # two passes, each a prefill and nine steps, every one through the compiled layers
            assert calls[0] == len(prefill.layers) * 2 * tokens
        else:  # the steps after the first one of each pass replay a recording: the layers are called while recording
            assert calls[0] >= len(prefill.layers) * 2 * 2
        graphs.append(_graphs())
    assert graphs[1] == graphs[0]  # new prompt and cache lengths: no new graph


def test_with_the_cpp_wrapper_the_compiled_prefill_and_steps_give_generates_tokens():
    """The app's setting on a GPU (`inductor_options`): Inductor launches each graph's kernels from a C++ wrapper. Here
    on the CPU, where it is not the default: the same tokens as generate, and the wrapper really is C++ (the answer
    after the compiling one calls Inductor's C++ entry points, which its default Python wrapper does not have)."""
    assert inductor_options(torch.device("cuda")) == {"cpp_wrapper": True}
    assert inductor_options(torch.device("cpu")) == {}
    plain = VideoQA.tiny(graph_decode=False)
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)
    torch._dynamo.reset()  # no graphs compiled by earlier tests with Inductor's Python wrapper
    try:
        qa.graph_decoder.compile_prefill(steps=True, options={"cpp_wrapper": True})
        clip = synthetic_clip(8, 64, 96)
        expected = plain.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=6, min_new_tokens=6)
        first = qa.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=6, min_new_tokens=6)  # compiles
        profile = cProfile.Profile()
        with profile:
            second = qa.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=6, min_new_tokens=6)
        for got in (first, second):
            assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
            assert got.full.token_ids == expected.full.token_ids
        called = [name for _, _, name in pstats.Stats(profile).stats]
        assert sum("inductor_entry_cpp" in name for name in called) >= 2  # graphs before and after the cache update
    finally:
        torch._dynamo.reset()


def test_the_steps_compile_graphs_of_their_own_once_and_a_new_video_adds_none(pair):
    plain, _ = pair
    torch._dynamo.reset()  # dynamo's graphs are per code object, shared by every model: none from earlier tests
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)
    qa.graph_decoder.compile_prefill(steps=False)
    clip = synthetic_clip(8, 64, 96)
    qa.answer(clip, QUESTION, max_new_tokens=4, min_new_tokens=4)  # the prefill's graphs (if no test made them yet)
    prefill_only = _graphs()
    qa.graph_decoder.compiled_steps = True
    qa.answer(clip, QUESTION, max_new_tokens=4, min_new_tokens=4)
    with_steps = _graphs()
    assert with_steps > prefill_only  # the one-token steps are graphs of their own
    qa.answer(synthetic_clip(12, 96, 64), QUESTION, max_new_tokens=4, min_new_tokens=4)
    assert _graphs() == with_steps


def test_frozen_before_any_step_the_steps_run_eagerly_and_compile_nothing():
    """What `catalogue.warm_up_for_serving` warns about: frozen before a decode step ran, the steps never compile (and
    still give generate's tokens)."""
    torch._dynamo.reset()  # no step graphs from earlier tests (dynamo's graphs are shared by every model)
    plain = VideoQA.tiny(graph_decode=False)
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)
    qa.graph_decoder.compile_prefill(steps=True)
    clip = synthetic_clip(8, 64, 96)
    qa.answer(clip, QUESTION, max_new_tokens=1)  # compiles the prefill, runs no step
    assert not qa.graph_decoder.stepped
    qa.graph_decoder.compiled_prefill.freeze()
    before = _graphs()
    expected = plain.answer(clip, QUESTION, max_new_tokens=6, min_new_tokens=6)
    got = qa.answer(clip, QUESTION, max_new_tokens=6, min_new_tokens=6)
    assert got.full.token_ids == expected.full.token_ids and qa.graph_decoder.stepped
    assert _graphs() == before


def test_the_servers_warm_up_runs_a_decode_step_before_freezing(caplog):
    from vcast import catalogue

    qa = VideoQA.tiny(graph_decode=True, compile_prefill=True)
    assert qa.prefill_compiled and qa.graph_decoder.compiled_steps
    catalogue.warm_up_for_serving(qa, synthetic_clip(8, 64, 96))
    assert qa.graph_decoder.stepped and qa.graph_decoder.compiled_prefill.frozen
    assert "ran no decode step" not in caplog.text


# -- stacked caches: each decoder layer one compiled graph (`compile_prefill`'s default on one device) -------------


def test_a_stacked_cache_holds_every_layer_in_one_tensor_and_updates_as_a_static_cache_does():
    qa = VideoQA.tiny(graph_decode=False)
    plain, stacked = DecodeCaches(qa.model), DecodeCaches(qa.model)
    stacked.cache_class = StackedPrefillCache
    cache, reference = stacked.get(24), plain.get(24)
    assert isinstance(cache, StackedPrefillCache) and cache.stacked is not None
    assert cache_bytes(cache) == cache_bytes(reference)  # the same slots, no layer's own tensors left beside them
    storages = {layer.keys.untyped_storage().data_ptr() for layer in cache.layers}
    assert len(storages) == 1 and cache.stacked[0].shape[0] == len(cache.layers)
    torch.manual_seed(0)
    shape = (1, stacked.kv_heads, 5, stacked.head_dim)
    with torch.inference_mode():
        for _ in range(2):  # a prompt of five, then five more
            for index in range(len(cache.layers)):
                keys, values = torch.randn(shape), torch.randn(shape)
                got = cache.update(keys, values, index)
                expected = reference.update(keys, values, index)
                assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
        assert [int(layer.cumulative_length) for layer in cache.layers] == [10] * len(cache.layers)
        assert cache.get_seq_length() == reference.get_seq_length() == 10


@pytest.mark.parametrize("steps", [False, True])
def test_with_stacked_caches_each_layer_is_one_graph_and_the_answers_are_generates(steps):
    """The cache update is traced: a prefill compiles with no graph break (two graph sets for all layers: layer 0 and
    the others), the steps break only around their attention, and a new video compiles nothing more."""
    plain = VideoQA.tiny(graph_decode=False)
    qa = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    qa.graph_decoder = GraphDecoder(plain.model, fast_kernels=True)
    torch._dynamo.reset()
    try:
        qa.graph_decoder.compile_prefill(steps=steps, stacked=True)
        counters.clear()
        graphs = []
        for frames, height, width in [(8, 64, 96), (12, 96, 64)]:
            clip = synthetic_clip(frames, height, width)
            expected = plain.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=6, min_new_tokens=6)
            got = qa.answer(clip, QUESTION, methods=["vcast"], max_new_tokens=6, min_new_tokens=6)
            assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
            assert got.full.token_ids == expected.full.token_ids
            graphs.append(_graphs())
        breaks = " ".join(counters["graph_break"])
        assert "PrefillCache" not in breaks and "update" not in breaks
        if steps:
            assert "decode_attention" in breaks
        else:
            assert not counters["graph_break"] and graphs[0] == 2
        assert graphs[1] == graphs[0]
    finally:
        torch._dynamo.reset()
