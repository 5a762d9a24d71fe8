"""Compiled decoding (`vcast.models.decode`, VideoQA's compile_decode): static KV caches, new per
pass or kept across requests, answer exactly like generate's default dynamic cache."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import StaticCache, StaticLayer

from benchmarks.bench import synthetic_clip
from vcast import VCastConfig
from vcast.models.base import cache_argument
from vcast.models.decode import DEFAULT_CACHE_BUCKET, DecodeCaches, cache_bytes
from vcast.models.tiny import tiny_config, tiny_model, tiny_processor
from vcast.pipeline import ModelError, VideoQA


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
    text = tiny_config().text_config
    per_layer = 2 * text.num_key_value_heads * 64 * text.head_dim * torch.finfo(caches.dtype).bits // 8
    # every layer allocated up front, on the model's device, counters included (no upload in the prefill)
    assert first.get_max_length() == 64 and cache_bytes(first) == text.num_hidden_layers * per_layer
    for layer in first.layers:
        assert layer.keys.shape == (1, text.num_key_value_heads, 64, text.head_dim)
        assert layer.keys.device == layer.cumulative_length.device == torch.device("cpu")
        assert layer.keys.dtype == caches.dtype
    keys = torch.randn(1, text.num_key_value_heads, 5, text.head_dim, dtype=caches.dtype)
    with torch.inference_mode():  # as generate runs in VideoQA: the caches are inference tensors
        for layer in range(text.num_hidden_layers):
            first.update(keys, keys, layer)
    assert int(first.get_seq_length()) == 5
    assert cache_bytes(first) == text.num_hidden_layers * per_layer
    again = caches.get(60)
    assert again is first and int(again.get_seq_length()) == 0 and not again.layers[0].keys.any()
    second = caches.get(100)  # another bucket: another cache
    assert second is not first and caches.lengths() == [64, 128]
    assert cache_bytes(second) == 2 * cache_bytes(first)  # twice the slots
    assert caches.held_bytes() == 3 * cache_bytes(first) and caches.held_bytes(besides=first) == cache_bytes(second)
    caches.get(129)  # a third length drops the least recently used (64)
    assert caches.lengths() == [128, 192] and caches.get(64) is not first


def test_each_cache_layer_is_made_on_its_decoder_layers_device_with_its_counter_already_there(monkeypatch):
    caches = DecodeCaches(tiny_model(), bucket=8)
    layers = tiny_config().text_config.num_hidden_layers
    assert caches.layer_devices == [torch.device("cpu")] * layers and not caches.offloaded
    # a model spread over devices: "meta" stands in for a second device here
    caches.layer_devices = [torch.device("meta") if i % 2 else torch.device("cpu") for i in range(layers)]
    counters = []
    initialize = StaticLayer.lazy_initialization

    def spy(layer, keys, values):
        counters.append(layer.cumulative_length.device)  # moved before, or it would be uploaded here
        return initialize(layer, keys, values)

    monkeypatch.setattr(StaticLayer, "lazy_initialization", spy)
    cache = caches.get(5)
    assert counters == caches.layer_devices
    assert [layer.keys.device for layer in cache.layers] == caches.layer_devices
    assert all(layer.keys.is_inference() for layer in cache.layers)  # as generate's own tensors
    caches.offloaded = True  # offloaded weights: left to allocate on first use
    assert cache_bytes(caches.get(5)) == 0


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


@pytest.mark.parametrize("kept", [0, 4])
def test_static_caches_answer_exactly_like_the_dynamic_cache_across_requests(kept, monkeypatch):
    dynamic, static = VideoQA.tiny(seed=3), VideoQA.tiny(seed=3, compile_decode=True)
    assert dynamic.decode_caches is None and static.decode_caches.kept == 0  # the default: nothing held
    assert static.decode_caches.bucket == DEFAULT_CACHE_BUCKET
    static.decode_caches = DecodeCaches(static.model, kept=kept, bucket=1)  # each pass its exact length
    handed, generate = [], static.model.generate

    def spy(**kwargs):
        handed.append((kwargs[cache_argument(static.model)], kwargs["input_ids"].shape[1]))
        return generate(**kwargs)

    monkeypatch.setattr(static.model, "generate", spy)
    short, long = synthetic_clip(4, 64, 96), synthetic_clip(8, 96, 128)
    requests = [(short, "What moves?", {}), (long, "Describe it.", {"config": VCastConfig(retain_ratio=0.5)}),
                (short, "What moves?", {})]  # fmt: skip
    for clip, question, kwargs in requests:
        assert _answers(static, clip, question, **kwargs) == _answers(dynamic, clip, question, **kwargs)
    assert len(handed) == 6  # both passes of every request decoded into a static cache of prompt + 8 slots
    assert all(isinstance(c, StaticCache) and c.get_max_length() == prompt + 8 for c, prompt in handed)
    lengths = [c.get_max_length() for c, _ in handed]
    # The third request repeats the first: kept caches hand the same objects back, else new ones.
    assert [c is d for (c, _), (d, _) in zip(handed[:2], handed[4:], strict=True)] == [bool(kept)] * 2
    assert static.decode_caches.lengths()[-2:] == (lengths[-2:] if kept else [])


def test_options_that_need_another_cache_are_refused_with_compile_decode():
    qa = VideoQA.tiny(compile_decode=True)
    clip = synthetic_clip(4, 64, 96)
    refused = [({"num_beams": 2}, "num_beams > 1"), ({"num_return_sequences": 2}, "num_return_seq"),
               ({"cache_implementation": "static"}, "cache_implementation cannot be passed")]  # fmt: skip
    for options, message in refused:
        with pytest.raises(ValueError, match=message):
            qa.answer(clip, "What moves?", max_new_tokens=2, **options)


def test_out_of_memory_drops_the_kept_caches(monkeypatch):
    qa = VideoQA.tiny(compile_decode=True)
    qa.decode_caches = DecodeCaches(qa.model, kept=2)
    clip = synthetic_clip(4, 64, 96)
    qa.answer(clip, "What moves?", max_new_tokens=2)
    assert qa.decode_caches.lengths()
    monkeypatch.setattr(qa.model, "generate", lambda **kwargs: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(ModelError, match="ran out of memory"):
        qa.answer(clip, "What moves?", max_new_tokens=2)
    assert qa.decode_caches.lengths() == []


def test_from_pretrained_passes_compile_decode_on_for_hub_folders_and_tiny(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    for model_id in (str(tmp_path), "tiny"):
        assert isinstance(VideoQA.from_pretrained(model_id, compile_decode=True).decode_caches, DecodeCaches)
        assert VideoQA.from_pretrained(model_id).decode_caches is None


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
