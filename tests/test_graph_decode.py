"""The graph decoder (`vcast.models.graph_decode`, VideoQA's default decoding on a GPU): token for token
the same answers as transformers' generate, for every family, pruned and unpruned; its rules for the
next token; what it leaves to generate. On a CPU it runs its step eagerly (the same code that a GPU
records as a CUDA graph); the CUDA tests compare the recorded graph with generate."""

from __future__ import annotations

import threading

import pytest
import torch

from benchmarks.bench import synthetic_clip
from vcast.models import decode_kernels
from vcast.models.configs import TINY_FAMILIES
from vcast.models.decode_kernels import FastDecodeStep, FilledSlots, decode_attention
from vcast.models.graph_decode import GraphDecoder, Sampling, sampling_for
from vcast.pipeline import VideoQA

QUESTION = "What happens in this video?"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pair(family: str, device: str = "cpu", **options) -> tuple[VideoQA, VideoQA]:
    """The same tiny model twice: decoding through generate, and through the graph decoder."""
    plain = VideoQA.tiny(family=family, graph_decode=False, **options)
    if device != "cpu":
        plain.model.to(device)
    graphed = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    return plain, graphed


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(8, 64, 96)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_answers_token_for_token_as_generate_does(family, clip):
    plain, graphed = _pair(family)
    expected = plain.answer(clip, QUESTION, methods=["vcast", "evs"], max_new_tokens=12)
    got = graphed.answer(clip, QUESTION, methods=["vcast", "evs"], max_new_tokens=12)
    for name in ("vcast", "evs"):
        assert got.passes[name].token_ids == expected.passes[name].token_ids
        assert got.passes[name].text == expected.passes[name].text
        assert got.passes[name].stop_reason == expected.passes[name].stop_reason
        assert expected.passes[name].metrics.decoding == "generate"
        assert got.passes[name].metrics.decoding == "eager_loop"  # on a CPU: the step unrecorded
    assert got.full.token_ids == expected.full.token_ids and len(got.full.token_ids) == 12
    assert graphed.graph_decoder.recording_ms is None  # nothing recorded on a CPU


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_fused_step_gives_generates_tokens_for_every_family(family, clip):
    """On a CPU the fused step has fused RMSNorms and attention bounded by the device counter (SDPA with a
    mask made from it; flash attention on a GPU): the same tokens as generate, pruned and unpruned."""
    plain, graphed = _pair(family)
    graphed.graph_decoder = GraphDecoder(graphed.model, fast_kernels=True)
    assert graphed.graph_decoder.fast.norms == 2 * len(graphed.model.get_decoder().layers) + 1 + (
        0 if family.startswith("llava") or family == "qwen2_5_vl" else 2 * _attention_layers(graphed.model))
    expected = plain.answer(clip, QUESTION, max_new_tokens=12, min_new_tokens=12)
    got = graphed.answer(clip, QUESTION, max_new_tokens=12, min_new_tokens=12)
    assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
    assert got.full.token_ids == expected.full.token_ids
    config = graphed.model.config.get_text_config(decoder=True)
    assert config._attn_implementation == "sdpa"  # switched for the steps only


def _attention_layers(model) -> int:
    return sum(1 for m in model.get_decoder().modules() if hasattr(m, "q_proj") and hasattr(m, "o_proj"))


def test_fused_rms_norm_computes_what_transformers_computes():
    for family in ("qwen3_vl", "qwen2_5_vl", "qwen3_5", "llava_onevision"):
        model = VideoQA.tiny(family=family).model
        FastDecodeStep(model)
        norms = [m for m in model.get_decoder().modules() if "_fused_norm" in str(vars(m).get("forward"))]
        assert norms, family
        torch.manual_seed(0)
        for norm in norms[:3]:
            with torch.no_grad():
                norm.weight.normal_()
            x = torch.randn(2, 5, norm.weight.shape[0]) * 3
            for dtype in (torch.float32, torch.bfloat16):
                reference = type(norm).forward(norm.to(dtype), x.to(dtype))
                with decode_kernels._step_for_tests():
                    fused = norm(x.to(dtype))
                assert fused.dtype == reference.dtype
                torch.testing.assert_close(fused, reference, rtol=0, atol=1e-6 if dtype == torch.float32 else 0.02)
            assert torch.equal(norm(x.to(norm.weight.dtype)), reference)  # outside a step: transformers' own


def test_decode_attention_serves_the_decode_step_only():
    query, cache = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 16, 8)
    with pytest.raises(RuntimeError, match="serves the graph decoder's one-token step"):
        decode_attention(None, query, cache, cache)
    slots = FilledSlots(5, 16, torch.device("cpu"))
    with decode_kernels._step_for_tests(slots):
        out, _ = decode_attention(None, query, cache, cache, scaling=0.5)
    k, v = cache[:, :, :5].repeat_interleave(2, 1), cache[:, :, :5].repeat_interleave(2, 1)
    expected = torch.softmax(query @ k.transpose(-1, -2) * 0.5, -1) @ v  # the 5 filled slots only
    torch.testing.assert_close(out, expected.transpose(1, 2))


def _stop_at_a_later_token(qa: VideoQA, clip) -> tuple[int, int]:
    """Make a token that the answer produces later on (not at first) an end-of-text token of the model's
    generation config. Returns it and its index in the unstopped answer."""
    tokens = qa.answer(clip, QUESTION, max_new_tokens=30, compare=False).passes["vcast"].token_ids
    index = next(i for i in range(4, len(tokens)) if tokens[i] not in tokens[:i])
    qa.model.generation_config.eos_token_id = [tokens[index]]
    return tokens[index], index


def test_end_of_text_and_min_new_tokens_follow_generate(clip):
    plain, graphed = _pair("qwen3_vl")
    eos, index = _stop_at_a_later_token(plain, clip)
    stopped = plain.answer(clip, QUESTION, max_new_tokens=30, compare=False).passes["vcast"]
    assert stopped.stop_reason == "end_of_text" and len(stopped.token_ids) == index + 1
    for options in ({}, {"min_new_tokens": index + 4}):
        expected = plain.answer(clip, QUESTION, max_new_tokens=30, compare=False, **options).passes["vcast"]
        got = graphed.answer(clip, QUESTION, max_new_tokens=30, compare=False, **options).passes["vcast"]
        assert got.token_ids == expected.token_ids and got.stop_reason == expected.stop_reason
    assert eos not in got.token_ids[: index + 4] and len(got.token_ids) > index + 4  # held back, then free


def test_sampling_draws_only_what_top_k_allows_and_top_k_1_is_greedy(clip):
    plain, graphed = _pair("qwen3_vl")
    greedy = plain.answer(clip, QUESTION, max_new_tokens=8, compare=False).passes["vcast"].token_ids
    one = graphed.answer(clip, QUESTION, max_new_tokens=8, compare=False, do_sample=True, top_k=1, temperature=0.3)
    assert one.passes["vcast"].token_ids == greedy and one.passes["vcast"].metrics.decoding == "eager_loop"
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    rule = Sampling(do_sample=True, top_k=2)
    pick = rule.picker(torch.device("cpu"), set())
    torch.manual_seed(0)
    drawn = {int(pick(logits)) for _ in range(300)}
    assert drawn == {1, 2}  # both of the two best, nothing else
    nucleus = Sampling(do_sample=True, top_p=0.5).picker(torch.device("cpu"), set())
    assert {int(nucleus(logits)) for _ in range(100)} == {1}  # token 1 alone holds over half the mass


def test_suppressed_tokens_are_never_picked():
    pick = Sampling(suppress=(1, 2)).picker(torch.device("cpu"), set())
    assert int(pick(torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]]))) == 4


def test_what_the_graph_decoder_leaves_to_generate(clip):
    plain, graphed = _pair("qwen3_vl")
    model = plain.model
    assert isinstance(sampling_for(model, {}), Sampling)
    assert "num_beams" in sampling_for(model, {"num_beams": 2})
    assert sampling_for(model, {"repetition_penalty": 1.2}) == "generation options repetition_penalty need generate"
    model.generation_config.no_repeat_ngram_size = 3
    try:
        assert sampling_for(model, {}) == "the generation config sets no_repeat_ngram_size=3"
        result = graphed.answer(clip, QUESTION, max_new_tokens=4, compare=False)
        assert result.passes["vcast"].metrics.decoding == "generate"  # fell back, and still answered
    finally:
        model.generation_config.no_repeat_ngram_size = 0
    penalised = graphed.answer(clip, QUESTION, max_new_tokens=4, compare=False, repetition_penalty=1.3)
    expected = plain.answer(clip, QUESTION, max_new_tokens=4, compare=False, repetition_penalty=1.3)
    assert penalised.passes["vcast"].metrics.decoding == "generate"
    assert penalised.passes["vcast"].token_ids == expected.passes["vcast"].token_ids


def test_cancel_and_the_time_limit_end_a_graph_decoded_pass(clip):
    _, graphed = _pair("qwen3_vl")
    graphed.max_generation_s = 0.0
    timed = graphed.answer(clip, QUESTION, max_new_tokens=50, compare=False).passes["vcast"]
    assert timed.stop_reason == "time_limit" and len(timed.token_ids) == 1
    graphed.max_generation_s = 60.0
    cancel = threading.Event()
    seen: list[str] = []

    def on_token(name: str, piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    streamed = []
    try:
        graphed.answer(clip, QUESTION, max_new_tokens=50, compare=False, cancel=cancel, on_token=on_token,
                       on_event=lambda kind, payload: streamed.append((kind, payload)))  # fmt: skip
    except Exception as err:  # Cancelled
        assert type(err).__name__ == "Cancelled"
    passes = [p for kind, p in streamed if kind == "pass"]
    assert passes and passes[0].stop_reason == "cancelled" and len(passes[0].token_ids) < 50


def test_the_default_is_on_for_a_gpu_model_only():
    qa = VideoQA.tiny()
    assert qa.graph_decoder is None  # CPU: generate, as before
    assert VideoQA(qa.model, qa.processor, model_id="tiny", graph_decode=True).graph_decoder.mode == "eager_loop"
    both = VideoQA(qa.model, qa.processor, model_id="tiny", graph_decode=True, compile_decode=True)
    assert both.graph_decoder is None


# -- on a GPU: the recorded graph ------------------------------------------------------------------


@CUDA
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_recorded_steps_give_generates_tokens_on_a_gpu(family, clip):
    plain, graphed = _pair(family, "cuda")
    for _ in range(2):  # the second answer records without the first one's eager warm-up step
        expected = plain.answer(clip, QUESTION, max_new_tokens=16, min_new_tokens=16)
        got = graphed.answer(clip, QUESTION, max_new_tokens=16, min_new_tokens=16)
        assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
        assert got.full.token_ids == expected.full.token_ids
        if family.endswith("_moe"):
            # transformers' MoE routing copies from the host inside the step: it cannot be recorded, and
            # the decoder falls back to eager steps (the same tokens) and says why
            assert got.full.metrics.decoding == "eager_loop"
            assert "Cannot copy between CPU and CUDA tensors" in graphed.graph_decoder.failure
        else:
            assert got.full.metrics.decoding == "cuda_graphs", graphed.graph_decoder.failure


@CUDA
@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if not f.endswith("_moe")])
def test_flash_attention_over_filled_slots_in_bfloat16_gives_generates_tokens(family, clip):
    plain = VideoQA.tiny(family=family, graph_decode=False)
    plain.model.to("cuda", torch.bfloat16)
    graphed = VideoQA(plain.model, plain.processor, model_id=plain.model_id, graph_decode=True)
    assert decode_kernels.flash_decode_unavailable(torch.ones(1, dtype=torch.bfloat16, device="cuda")) is None
    for _ in range(2):
        expected = plain.answer(clip, QUESTION, max_new_tokens=16, min_new_tokens=16)
        got = graphed.answer(clip, QUESTION, max_new_tokens=16, min_new_tokens=16)
        assert got.passes["vcast"].token_ids == expected.passes["vcast"].token_ids
        assert got.full.token_ids == expected.full.token_ids
        assert got.full.metrics.decoding == "cuda_graphs", graphed.graph_decoder.failure


@CUDA
def test_recorded_decoding_from_a_worker_thread_as_the_app_streams(clip):
    plain, graphed = _pair("qwen3_vl", "cuda")
    expected = plain.answer(clip, QUESTION, max_new_tokens=12).full.token_ids
    events = list(graphed.stream(clip, QUESTION, max_new_tokens=12))
    done = events[-1][1]
    assert done.full.token_ids == expected and done.full.metrics.decoding == "cuda_graphs"


@CUDA
def test_a_failed_recording_falls_back_to_eager_steps_with_the_same_tokens(clip, monkeypatch):
    plain, graphed = _pair("qwen3_vl", "cuda")
    expected = plain.answer(clip, QUESTION, max_new_tokens=10).full.token_ids

    def refuse(*args, **kwargs):
        raise RuntimeError("recording refused for the test")

    monkeypatch.setattr(torch.cuda.CUDAGraph, "capture_begin", refuse)
    got = graphed.answer(clip, QUESTION, max_new_tokens=10)
    assert got.full.token_ids == expected and got.full.metrics.decoding == "eager_loop"
    assert graphed.graph_decoder.failure == "RuntimeError: recording refused for the test"


@CUDA
def test_the_step_is_recorded_after_the_first_token_reaches_the_host(clip, monkeypatch):
    """Recording is tens of milliseconds of host work: done before the first token, it delayed that token and saved
    nothing in total (docs/BENCHMARKS.md section 14)."""
    _, graphed = _pair("qwen3_vl", "cuda")
    decoder = graphed.graph_decoder
    prepared = graphed.prepare(clip, QUESTION)
    inputs = graphed.pass_inputs(prepared)
    events: list[str] = []
    record = decoder._record
    monkeypatch.setattr(decoder, "_record", lambda step: events.append("record") or record(step))

    def on_token(token_id: int) -> bool:
        events.append("token")
        return False

    with torch.inference_mode():
        for _ in range(2):  # the decoder's first pass also runs one step eagerly before recording
            events.clear()
            decoder.run(inputs, max_new_tokens=6, generation_kwargs={"min_new_tokens": 6}, on_token=on_token,
                        stop_ids=set())  # fmt: skip
            assert events == ["token", "record"] + ["token"] * 5
            assert decoder.recording_ms > 0  # the recording's host time, which the decode time includes
    assert decoder.failure is None


def test_graph_decoder_refuses_a_pass_it_cannot_reproduce():
    decoder = GraphDecoder(VideoQA.tiny().model)
    with pytest.raises(ValueError, match="cannot decode this pass: generation options num_beams need generate"):
        decoder.run(None, max_new_tokens=2, generation_kwargs={"num_beams": 2}, on_token=bool, stop_ids=set())


def test_the_vision_attention_avoids_cudnn_by_default_and_any_order_can_be_named():
    from vcast.pipeline import DEFAULT_VISION_SDPA

    qa = VideoQA.tiny()
    assert qa.vision_sdpa_backends == list(DEFAULT_VISION_SDPA) and "cudnn" not in DEFAULT_VISION_SDPA
    qa.vision_sdpa_backends = ["math"]  # on the CPU the choice is not applied: the same features either way
    clip = synthetic_clip(4, 64, 64)
    first = qa.encode(qa.prompt(clip, QUESTION)).features.embeds
    qa.vision_sdpa_backends = None
    assert torch.equal(first, qa.encode(qa.prompt(clip, QUESTION)).features.embeds)
