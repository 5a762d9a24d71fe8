"""Compiled decoding (`vcast.models.decode`, VideoQA's compile_decode): static KV caches kept
across requests answer exactly like the default dynamic cache."""

from __future__ import annotations

import threading

import pytest
import torch

from vcast import VCastConfig
from vcast.bench import synthetic_clip
from vcast.models.decode import DEFAULT_CACHE_BUCKET, DecodeCaches, cache_bytes
from vcast.models.tiny import tiny_config, tiny_model, tiny_processor
from vcast.pipeline import VideoQA


@pytest.fixture(scope="module")
def caches() -> DecodeCaches:
    return DecodeCaches(tiny_model(), bucket=64, kept=2)


def test_cache_lengths_round_up_to_the_bucket(caches):
    assert [caches.length_for(n) for n in (1, 63, 64, 65, 200)] == [64, 64, 64, 128, 256]
    with pytest.raises(ValueError, match="at least one slot"):
        caches.length_for(0)
    with pytest.raises(ValueError, match="bucket >= 1 and kept >= 0"):
        DecodeCaches(tiny_model(), bucket=0)


def test_the_same_cache_comes_back_empty_for_its_bucket_and_the_oldest_is_dropped():
    caches = DecodeCaches(tiny_model(), bucket=64, kept=2)
    first = caches.get(50)
    assert first.get_max_length() == 64 and cache_bytes(first) == 0  # allocated on first use
    text = tiny_config().text_config
    keys = torch.randn(1, text.num_key_value_heads, 5, text.head_dim)
    for layer in range(text.num_hidden_layers):
        first.update(keys, keys, layer)
    assert int(first.get_seq_length()) == 5
    per_layer = 2 * text.num_key_value_heads * 64 * text.head_dim * keys.element_size()
    assert cache_bytes(first) == text.num_hidden_layers * per_layer
    again = caches.get(60)
    assert again is first and int(again.get_seq_length()) == 0 and not again.layers[0].keys.any()
    second = caches.get(100)  # another bucket: another cache
    assert second is not first and caches.lengths() == [64, 128]
    assert caches.held_bytes() == cache_bytes(first) and caches.held_bytes(besides=first) == 0
    caches.get(129)  # a third length drops the least recently used (64)
    assert caches.lengths() == [128, 192] and caches.get(64) is not first


def test_by_default_every_pass_gets_a_new_cache_and_none_is_held():
    caches = DecodeCaches(tiny_model(), bucket=64)
    first, second = caches.get(50), caches.get(50)
    assert first is not second and first.get_max_length() == second.get_max_length() == 64
    assert caches.lengths() == [] and caches.held_bytes() == 0
    with pytest.raises(ValueError, match="kept >= 0"):
        DecodeCaches(tiny_model(), kept=-1)


def _answers(qa: VideoQA, clip, question: str, **kwargs):
    result = qa.answer(clip, question, max_new_tokens=8, **kwargs)
    return result.pruned.token_ids, result.full.token_ids


@pytest.mark.parametrize("kept", [0, 2])
def test_static_caches_answer_exactly_like_the_dynamic_cache_across_requests(kept):
    dynamic, static = VideoQA.tiny(seed=3), VideoQA.tiny(seed=3, compile_decode=True)
    assert dynamic.decode_caches is None and static.decode_caches.kept == 0  # the default: nothing held
    static.decode_caches = DecodeCaches(static.model, kept=kept)
    short, long = synthetic_clip(4, 64, 96), synthetic_clip(8, 96, 128)
    requests = [(short, "What moves?", {}), (long, "Describe it.", {"config": VCastConfig(retain_ratio=0.5)}),
                (short, "What moves?", {})]  # fmt: skip
    for clip, question, kwargs in requests:
        assert _answers(static, clip, question, **kwargs) == _answers(dynamic, clip, question, **kwargs)
    # Each pass decoded into a cache of its rounded length: here all fit one bucket, so with
    # kept caches one cache served every pass (emptied each time).
    assert static.decode_caches.lengths() == ([DEFAULT_CACHE_BUCKET] if kept else [])


def test_from_pretrained_passes_compile_decode_on():
    qa = VideoQA.from_pretrained("tiny", compile_decode=True)
    assert isinstance(qa.decode_caches, DecodeCaches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="generate compiles the decode step only on a GPU")
def test_cuda_compiled_decode_matches_eager_and_runs_in_a_worker_thread():
    clip = synthetic_clip(8, 96, 128)
    eager = VideoQA(tiny_model(seed=5).cuda(), tiny_processor(), model_id="tiny-cuda")
    compiled = VideoQA(tiny_model(seed=5).cuda(), tiny_processor(), model_id="tiny-cuda", compile_decode=True)
    expected = _answers(eager, clip, "What moves?")
    assert _answers(compiled, clip, "What moves?") == expected
    assert _answers(compiled, clip, "What moves?") == expected  # replayed from the recorded graphs
    assert hasattr(compiled.model, "_compiled_call")  # generate did compile the decode step
    # The app streams from a worker thread; the compiled step must work there too.
    seen = {}

    def work():
        events = list(compiled.stream(clip, "What moves?", max_new_tokens=8))
        result = events[-1][1]
        seen["ids"] = (result.pruned.token_ids, result.full.token_ids)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen.get("ids") == expected
