"""How a server picks, loads and serves its model (vcast.catalogue), on the tiny offline models (CPU, no downloads)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from vcast import catalogue
from vcast.pipeline import VideoQA

CLIP = str(Path(__file__).resolve().parents[1] / "assets" / "brief_event.mp4")
TINY_BANNER = (
    "⚠️ **Offline demo: a tiny random model** ({why}). Its answers are noise; selections, figures and token counts "
    "are real. For real answers, run it where huggingface.co is reachable or give `--model` a downloaded checkpoint."
)


def load(model_id: str, **options) -> VideoQA:
    return catalogue.load(model_id, max_generation_s=7.0, warm_up_video=CLIP, **options)


@pytest.fixture
def loaded(monkeypatch):
    """What catalogue.load asks VideoQA.from_pretrained for, and the clips a (non-tiny) stand-in is warmed up on."""
    calls, warmed = [], []

    def from_pretrained(model_id, **options):
        calls.append((model_id, options))
        def warm_up(clip, num_frames=4):
            warmed.append((clip, num_frames))
            return 1.0

        return types.SimpleNamespace(model_id=model_id, is_tiny=False, warm_up=warm_up)

    monkeypatch.setattr(VideoQA, "from_pretrained", from_pretrained)
    return calls, warmed


def test_load_gives_the_time_limit_and_warms_a_real_model_up_on_the_video(loaded):
    calls, warmed = loaded
    load("Qwen/Qwen3-VL-2B-Instruct")
    assert calls == [("Qwen/Qwen3-VL-2B-Instruct", {"max_generation_s": 7.0})] and warmed == [(CLIP, 4)]


def test_on_zero_gpu_the_weights_go_to_cuda_with_no_warm_up_no_compiling_and_eager_decoding(loaded):
    calls, warmed = loaded
    load("Qwen/Qwen3-VL-2B-Instruct", zero_gpu=True, compile_model=True)
    expected = {"max_generation_s": 7.0, "device_map": "cuda", "graph_decode": False}
    assert calls == [("Qwen/Qwen3-VL-2B-Instruct", expected)] and warmed == []


def test_compiling_is_asked_for_only_where_there_is_a_cuda_gpu(loaded, monkeypatch):
    calls, warmed = loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    load("m", compile_model=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load("m", compile_model=True)
    assert [options for _, options in calls] == [
        {"max_generation_s": 7.0},
        {"max_generation_s": 7.0, "compile_vision": True},
    ]
    # the compiled vision tower warms up on a clip of ordinary length, so that longer videos compile nothing more
    assert warmed == [(CLIP, 4), (CLIP, catalogue.COMPILED_WARM_UP_FRAMES)] and catalogue.COMPILED_WARM_UP_FRAMES >= 32


def test_the_tiny_model_loads_with_the_time_limit_and_is_not_warmed_up(monkeypatch):
    warmed = []
    monkeypatch.setattr(VideoQA, "warm_up", lambda self, clip, **kw: warmed.append(clip) or 0.0)
    qa = load("tiny-qwen2_5_vl")
    assert qa.is_tiny and qa.family == "qwen2_5_vl" and qa.max_generation_s == 7.0 and warmed == []


def test_offline_start_serves_the_tiny_model_with_a_banner_saying_why_and_logs_it(caplog):
    with caplog.at_level("WARNING", logger="vcast.catalogue"):
        qa, banner = catalogue.load_startup_model(None, hub_ok=False, gpu_gib=80.0, load=load)
    why = "the Hugging Face hub cannot be reached from here"
    assert qa.model_id == "tiny" and banner == TINY_BANNER.format(why=why)
    assert f"serving tiny, a tiny random model ({why}): its answers are noise" in caplog.text


def test_a_model_that_cannot_load_falls_back_to_the_tiny_model_with_the_reason(tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    qa, banner = catalogue.load_startup_model(missing, hub_ok=False, gpu_gib=0.0, load=load)
    assert qa.is_tiny and banner.startswith("⚠️ **Offline demo: a tiny random model** (") and missing in banner
    _, asked = catalogue.load_startup_model("tiny", hub_ok=True, gpu_gib=0.0, load=load)
    assert asked == TINY_BANNER.format(why="as asked")


def test_the_banner_says_a_cpu_is_slow_and_a_gpu_needs_none():
    def served(device: str):
        return types.SimpleNamespace(model_id="Qwen/Qwen3-VL-2B-Instruct", is_tiny=False, device=torch.device(device))

    assert catalogue.degraded_banner(served("cpu"), "as asked") == (
        "⚠️ **No GPU:** `Qwen/Qwen3-VL-2B-Instruct` runs on the CPU; an answer takes minutes."
    )
    assert catalogue.degraded_banner(served("meta"), "as asked") is None  # any accelerator: nothing to say


def test_the_loaded_model_is_offered_first_and_once():
    assert catalogue.offered_models("b", ["a", "b", "c"], hub_ok=True, gpu_gib=0.0) == ["b", "a", "c"]
    on_h100 = catalogue.offered_models("Qwen/Qwen3-VL-8B-Instruct", hub_ok=True, gpu_gib=79.0)
    assert on_h100[0] == "Qwen/Qwen3-VL-8B-Instruct" and on_h100.count("Qwen/Qwen3-VL-8B-Instruct") == 1
    assert catalogue.offered_models("tiny-qwen3_5", hub_ok=False, gpu_gib=0.0) == [
        "tiny-qwen3_5", "tiny", "tiny-qwen3_vl_moe", "tiny-qwen2_5_vl", "tiny-llava_onevision"
    ]  # fmt: skip


def test_zero_gpu_reserves_15_s_plus_frames_plus_each_pass_by_its_token_cap_up_to_its_longest():
    clip = types.SimpleNamespace(num_frames=16)
    assert catalogue.gpu_seconds("tiny", clip, "q", None, ["vcast"], False, 32) == 24  # 15 + 4.8 + (3 + 1.6)
    assert catalogue.gpu_seconds("tiny", clip, "q", None, ["vcast", "evs"], True, 100) == 43  # 15 + 4.8 + 3 x 8
    assert catalogue.gpu_seconds("tiny", clip, "q", None, ["vcast"] * 4, True, 512) == catalogue.ZERO_GPU_MAX_S == 120


def test_on_zero_gpu_the_memory_is_the_slice_s_and_elsewhere_the_gpu_s_or_none():
    assert catalogue.gpu_memory_gib(zero_gpu=True) == catalogue.ZERO_GPU_GIB == 70.0
    expected = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0
    assert catalogue.gpu_memory_gib() == expected
