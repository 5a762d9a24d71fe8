"""`python -m vcast.bench` end to end on the CPU with the tiny model: the script the GPU tables come from."""

from __future__ import annotations

import gc
import json
import statistics

import pytest
import torch

from benchmarks import bench
from vcast import VCastConfig, VideoQA
from vcast.core import total_budget
from vcast.models import decode
from vcast.models.base import cache_argument
from vcast.models.decode import DecodeCaches, cache_bytes


def test_bench_measures_other_methods_and_families(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--sizes", "tiny-llava_onevision", "--videos", "4x64x96", "--ratios", "0.5,0.25", "--runs", "1",
                "--methods", "evs,first_2x2", "--new-tokens", "2", "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    # the 2x2 method only at its one ratio; LLaVA-OneVision: 4 frames of 16 tokens and the newline
    assert [(r["method"], r["retain_ratio"]) for r in rows] == [("unpruned", 1.0), ("evs", 0.5), ("evs", 0.25),
                                                               ("first_2x2", 0.25)]  # fmt: skip
    assert [r["visual_tokens"] for r in rows] == [65, 33, 17, 17]
    assert "| tiny-llava_onevision | 4, 96x64 | EVS R=0.5 | 33 |" in capsys.readouterr().out


def test_bench_runs_every_method_and_writes_consistent_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--sizes", "tiny", "--videos", "4x64x96,6x96x128", "--ratios", "0.5,0.25", "--runs", "2",
                "--new-tokens", "3", "--out", str(out)])  # fmt: skip
    data = json.loads(out.read_text())
    assert data["meta"]["gpu"] == "cpu" and data["meta"]["command"].startswith("python -m vcast.bench --sizes tiny")
    rows = data["rows"]
    assert [(r["frames"], r["method"], r["retain_ratio"]) for r in rows] == [
        (4, "unpruned", 1.0), (4, "vcast", 0.5), (4, "vcast", 0.25),
        (6, "unpruned", 1.0), (6, "vcast", 0.5), (6, "vcast", 0.25),
    ]  # fmt: skip
    for r in rows:
        unpruned = next(u for u in rows if u["frames"] == r["frames"] and u["method"] == "unpruned")
        groups = r["frames"] // 2
        config = VCastConfig(retain_ratio=r["retain_ratio"])
        assert r["visual_tokens"] == total_budget(groups, unpruned["visual_tokens"] // groups, config)
        # only video tokens leave the prompt
        assert unpruned["sequence_length"] - r["sequence_length"] == unpruned["visual_tokens"] - r["visual_tokens"]
        assert r["prefill_ms"] == pytest.approx(r["vision_ms"] + r["selection_ms"] + r["llm_prefill_ms"])
        assert r["ttft_ms"] > r["vision_ms"] and r["decode_tokens_per_s"] > 0
        # the tiny model runs on the CPU: no GPU memory or allocator figures to speak of
        gpu_only = ["peak_above_weights_mb", "peak_vision_mb", "peak_prefill_mb", "peak_generate_mb",
                    "held_before_mb_runs", "prefill_device_calls_runs"]  # fmt: skip
        assert all(r[key] is None for key in gpu_only)
        # each round's stages add up to its prefill, and the medians are the stages' columns
        assert len(r["stage_ms_runs"]) == len(r["prefill_ms_runs"]) == 2
        for stages, prefill in zip(r["stage_ms_runs"], r["prefill_ms_runs"], strict=True):
            assert sum(stages) == pytest.approx(prefill)
        columns = [statistics.median(column) for column in zip(*r["stage_ms_runs"], strict=True)]
        assert columns == pytest.approx([r["vision_ms"], r["selection_ms"], r["llm_prefill_ms"]])
        assert len(r["host_us_per_op_runs"]) == 2 and all(0 < pace < 10_000 for pace in r["host_us_per_op_runs"])
        # the host's time to queue the prefill lies inside the prefill's stage (on the CPU, its whole time)
        assert all(0 < host <= stages[2] for host, stages in zip(r["llm_prefill_host_ms_runs"], r["stage_ms_runs"],
                                                                  strict=True))  # fmt: skip
        assert r["recording_ms_runs"] is None  # generate decodes on the CPU: no step recorded
    table = capsys.readouterr().out
    assert "| tiny | 6, 128x96 | V-CAST R=0.25 | 9 |" in table
    for r in rows:  # each round's ratio to the unpruned pass of the same round
        unpruned = next(u for u in rows if u["frames"] == r["frames"] and u["method"] == "unpruned")
        prefills = [sum(stages) for stages in r["stage_ms_runs"]]
        base = [sum(stages) for stages in unpruned["stage_ms_runs"]]
        assert r["prefill_ratio_runs"] == pytest.approx([a / b for a, b in zip(prefills, base, strict=True)])
        assert r["decode_ratio_runs"] == pytest.approx(
            [a / b for a, b in zip(r["decode_tokens_per_s_runs"], unpruned["decode_tokens_per_s_runs"], strict=True)]
        )


def test_ratios_whose_rounds_disagree_are_flagged_not_summarised():
    row = bench.Row(size="8B", frames=32, height=448, width=448, method="vcast", retain_ratio=0.25, visual_tokens=1,
                    sequence_length=2, vision_ms=1, selection_ms=1, llm_prefill_ms=1, prefill_ms=3, ttft_ms=4,
                    decode_tokens_per_s=50, peak_above_weights_mb=None, prefill_ratio_runs=[0.50, 0.52, 0.66],
                    decode_ratio_runs=[1.40, 1.42, 1.41])  # fmt: skip
    unpruned = bench.Row(size="8B", frames=32, height=448, width=448, method="unpruned", retain_ratio=1.0,
                         visual_tokens=4, sequence_length=5, vision_ms=1, selection_ms=0, llm_prefill_ms=5,
                         prefill_ms=6, ttft_ms=7, decode_tokens_per_s=35, peak_above_weights_mb=None)  # fmt: skip
    flagged = bench.disagreements([unpruned, row], tolerance=0.10)
    assert flagged == ["8B 32 frames vcast R=0.25: prefill ratio rounds 0.500-0.660, spread 31% > 10%"]
    row.host_us_per_op_runs = [6.9, 7.2, 11.8]  # each round's host pace: where it is known, the line says it
    assert bench.disagreements([unpruned, row], tolerance=0.10) == [
        "8B 32 frames vcast R=0.25: prefill ratio rounds 0.500-0.660, spread 31% > 10% (host 6.9-11.8 us per launch)"]
    table = bench.table([unpruned, row], tolerance=0.10)
    assert "0.520 [0.500-0.660] (rounds disagree)" in table and "1.41 [1.40-1.42] |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_bench_refuses_real_sizes_without_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU for the real model sizes"):
        bench.main(["--sizes", "8B", "--out", str(tmp_path / "b.json")])


@pytest.mark.parametrize("keep", [False, True], ids=["new-cache-per-pass", "kept-caches"])
def test_bench_interleaves_the_methods_and_sizes_each_static_cache_to_its_pass(tmp_path, monkeypatch, keep):
    order, passes, originals = [], [], {}
    one_pass = bench.one_pass

    def spy(qa, prompt, method, new_tokens):
        ratio = None if method is None else method[1]
        order.append(ratio)
        generate = originals.setdefault(id(qa.model), qa.model.generate)  # not the previous pass's spy

        def generate_spy(**kwargs):
            cache = kwargs[cache_argument(qa.model)]
            filled = int(cache.get_seq_length())
            passes.append((ratio, cache, cache.get_max_length(), filled, kwargs["input_ids"].shape[1]))
            return generate(**kwargs)

        monkeypatch.setattr(qa.model, "generate", generate_spy)
        return one_pass(qa, prompt, method, new_tokens)

    monkeypatch.setattr(bench, "one_pass", spy)
    # no rounding with bucket 1: each method its own length
    options = ["--compile-decode", "--cache-bucket", "1", *(["--keep-decode-caches"] if keep else []),
               "--out", str(tmp_path / "b.json")]  # fmt: skip
    bench.main(["--sizes", "tiny", "--videos", "4x64x96", "--ratios", "0.5,0.25", "--runs", "2", "--new-tokens", "3",
                *options])  # fmt: skip
    methods = [None, 0.5, 0.25]
    # a warm-up of each method, then rounds of all, forward then backward (ABBA: drift falls on all alike)
    assert order == methods + methods + methods[::-1]
    for _ratio, _cache, cache_length, filled, prompt_length in passes:
        assert cache_length == prompt_length + 3
        assert filled == 0  # handed over empty
    assert len({length for _, _, length, *_ in passes}) == 3
    for ratio in methods:
        caches = {id(cache) for r, cache, *_ in passes if r == ratio}
        # kept: every pass of a method decodes into the same cache object, none was dropped;
        # otherwise each pass has a new one (the spy keeps them alive, so ids are not reused)
        assert len(caches) == (1 if keep else 3)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["meta"]["decode"].startswith("static caches (" + ("one kept" if keep else "a new one per pass"))
    assert "lengths rounded up to 1)" in data["meta"]["decode"]


def test_bench_rounds_static_caches_to_the_bucket_it_is_given(tmp_path, monkeypatch):
    lengths = []
    real_get = decode.DecodeCaches.get

    def get(self, tokens):
        assert not gc.isenabled()  # paused through each measured pass
        cache = real_get(self, tokens)
        lengths.append((tokens, cache.get_max_length()))
        return cache

    monkeypatch.setattr(decode.DecodeCaches, "get", get)
    bench.main(["--sizes", "tiny", "--videos", "4x64x96", "--ratios", "0.5", "--runs", "1", "--new-tokens", "3",
                "--compile-decode", "--cache-bucket", "7", "--out", str(tmp_path / "b.json")])  # fmt: skip
    assert gc.isenabled()  # and back on afterwards
    assert len(lengths) == 4 and len({tokens for tokens, _ in lengths}) == 2  # warm-up + 1 round, 2 methods
    for tokens, length in lengths:
        assert length % 7 == 0 and tokens <= length < tokens + 7


def test_a_pass_restores_the_garbage_collector_as_it_found_it(monkeypatch):
    qa = VideoQA.tiny()
    prompt = qa.prompt(bench.synthetic_clip(4, 64, 96), "What happens?")

    def broken(*args, **kwargs):
        assert not gc.isenabled()
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bench, "measured_pass", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        bench.one_pass(qa, prompt, ("vcast", 0.5), 3)
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(RuntimeError):
            bench.one_pass(qa, prompt, ("vcast", 0.5), 3)
        assert not gc.isenabled()  # a caller's choice stays
    finally:
        gc.enable()


def test_a_pass_is_charged_for_caches_allocated_before_it():
    """Memory held before a pass includes kept caches: the pass's own (reused) cache and any cache
    it displaces are charged to it; a new cache, allocated during the pass, is not subtracted."""
    model = VideoQA.tiny().model
    new_each_time = DecodeCaches(model, bucket=8)
    cache, charged = bench.pass_cache(new_each_time, 5)
    assert charged == 0 and cache_bytes(cache) > 0
    kept = DecodeCaches(model, bucket=8, kept=1)
    first, charged = bench.pass_cache(kept, 5)
    assert charged == 0  # new
    again, charged = bench.pass_cache(kept, 7)  # same length: the kept cache comes back
    assert again is first and charged == cache_bytes(first)
    other, charged = bench.pass_cache(kept, 12)  # another length displaces the kept one
    assert other is not first and charged == cache_bytes(first) and kept.lengths() == [16]
    two = DecodeCaches(model, bucket=8, kept=2)
    a, _ = bench.pass_cache(two, 5)
    b, charged = bench.pass_cache(two, 12)
    assert charged == 0  # room for both: nothing displaced
    _, charged = bench.pass_cache(two, 20)  # displaces the least recently used (a)
    assert charged == cache_bytes(a) and two.lengths() == [16, 24]
    _, charged = bench.pass_cache(two, 14)  # b again: its own bytes, nothing displaced
    assert charged == cache_bytes(b)


def test_bench_refuses_a_cache_bucket_below_one(tmp_path):
    with pytest.raises(SystemExit, match="--cache-bucket must be at least 1"):
        bench.main(["--sizes", "tiny", "--compile-decode", "--cache-bucket", "0", "--out", str(tmp_path / "b.json")])


def test_bench_keep_decode_caches_needs_compile_decode(tmp_path):
    with pytest.raises(SystemExit, match="--keep-decode-caches goes with --compile-decode"):
        bench.main(["--sizes", "tiny", "--keep-decode-caches", "--out", str(tmp_path / "b.json")])


def test_the_prefill_profile_finds_where_the_host_waits_for_the_device(tmp_path):
    """benchmarks/profile_prefill.py on the tiny model: both passes, their times, and the host waits of
    transformers' Qwen3-VL forward (the mask checks and the deepstack layers' boolean indexing)."""
    from benchmarks import profile_prefill

    out = tmp_path / "prefill.json"
    profile_prefill.main(["--model", "tiny", "--videos", "8x64x64", "--runs", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["vcast", "unpruned"]
    assert rows[0]["prompt_tokens"] < rows[1]["prompt_tokens"]
    for row in rows:
        assert row["host_waits"] == sum(row["host_waits_where"].values()) > 0
        assert any("_deepstack_process" in place for place in row["host_waits_where"])


def test_the_prefill_profile_times_the_compiled_prefill_with_each_of_inductors_wrappers(tmp_path):
    """`--wrappers python,cpp`: the graph decoder's compiled prefill with Inductor's Python and C++ wrappers in one
    process, a row per wrapper and pass, each round timing both; an unknown wrapper is refused by name."""
    from benchmarks import profile_prefill

    out = tmp_path / "wrappers.json"
    profile_prefill.main(["--model", "tiny", "--videos", "8x64x64", "--runs", "2", "--wrappers", "python,cpp",
                          "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["wrapper"], r["method"]) for r in rows] == [("python", "vcast"), ("python", "unpruned"),
                                                         ("cpp", "vcast"), ("cpp", "unpruned")]  # fmt: skip
    for row in rows:
        assert len(row["host_ms_runs"]) == len(row["gpu_ms_runs"]) == 2 and row["compile_s"] > 0
        assert row["host_ms"] > 0 and row["gpu_ms"] == row["host_ms"]  # on the CPU both are the wall time
    with pytest.raises(SystemExit):
        profile_prefill.main(["--model", "tiny", "--wrappers", "python,fortran"])


@pytest.mark.parametrize(("prefill", "compiled", "steps", "cache"), [
    ("app", True, True, "StackedPrefillCache"), ("prefill-only", True, False, "StackedPrefillCache"),
    ("eager", False, False, "StaticCache"), ("unstacked", True, True, "PrefillCache")])  # fmt: skip
def test_served_models_compile_the_llm_layers_as_the_prefill_setting_says(monkeypatch, prefill, compiled, steps, cache):
    """`--prefill app|prefill-only|eager|unstacked` of every GPU benchmark: the app's compiled layers (stacked caches)
    for the prefill and the decode steps, for the prefill only, neither, or the app's with a cache per layer. The tiny
    model stands in for the real shapes (on the CPU the graph decoder runs its steps eagerly through the layers)."""
    monkeypatch.setattr(bench.catalogue, "compiles_by_default", lambda model_id: True)  # as on a dedicated GPU
    built = {}

    def tiny(name, **options):
        built.update(options)
        return VideoQA.tiny(graph_decode=True, compile_prefill=options["compile_prefill"])

    monkeypatch.setattr(bench.VideoQA, "random_weights", tiny)
    qa = bench.served_model("8B", vision="eager", prefill=prefill)
    assert built["compile_prefill"] is compiled and built["compile_vision"] is False
    assert qa.prefill_compiled is compiled
    assert qa.graph_decoder.compiled_steps is steps
    assert type(qa.graph_decoder.caches.get(8)).__name__ == cache
    with pytest.raises(ValueError, match="prefill must be one of app, prefill-only, eager, unstacked"):
        bench.served_model("8B", prefill="steps")


def test_a_runner_can_share_one_served_model_between_measurements(monkeypatch):
    """`SHARED_MODELS` (benchmarks/answer_suite.py): the same arguments get the model built first; other arguments, or
    no runner, a model of their own."""
    built = []

    def tiny(name, **options):
        built.append(VideoQA.tiny(graph_decode=False))
        return built[-1]

    monkeypatch.setattr(bench.VideoQA, "random_weights", tiny)
    monkeypatch.setattr(bench, "SHARED_MODELS", {})
    first = bench.served_model("8B", vision="eager", prefill="eager")
    assert bench.served_model("8B", vision="eager", prefill="eager") is first and len(built) == 1
    assert bench.served_model("8B", vision="eager", prefill="eager", compile_decode=True) is not first
    monkeypatch.setattr(bench, "SHARED_MODELS", None)
    assert bench.served_model("8B", vision="eager", prefill="eager") is not first and len(built) == 3


def test_the_vision_profile_sorts_kernels_by_kind_and_counts_the_towers_products():
    from benchmarks.profile_vision import kernel_kind, linear_flops

    # Inductor names a fused kernel after what it fuses: the rotary before the attention op is still Inductor's
    assert kernel_kind("triton_poi_fused__to_copy_add_cat_cos_equal_groups_sdpa_mul_neg") == "Inductor's fused kernels"
    assert kernel_kind("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<96, 128>>") == "attention"
    assert kernel_kind("nvjet_sm90_tst_192x192_64x4_1x2_h_bz_coopB_bias_TNN") == "matrix products"
    assert kernel_kind("Memcpy HtoD (Pinned -> Device)") == "copies"
    visual = VideoQA.tiny().model.model.visual
    c = visual.config
    h, inner, out, merged_in = c.hidden_size, c.intermediate_size, c.out_hidden_size, c.hidden_size * 4
    patches, merged = 64, 16
    per_patch = c.depth * (3 * h * h + h * h + 2 * h * inner) + c.in_channels * c.temporal_patch_size * 16 * 16 * h
    mergers = 1 + len(c.deepstack_visual_indexes)  # the final merger and one per deepstack layer
    per_merged = mergers * (merged_in * merged_in + merged_in * out)
    assert linear_flops(visual, patches, merged) == 2 * (patches * per_patch + merged * per_merged)
