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


class StandIn:
    """What catalogue.load needs of a loaded (non-tiny) VideoQA, recording its warm-ups; `fails` warm-ups on a compiled
    vision tower raise the ModelError a failed compilation gives."""

    def __init__(self, model_id: str, options: dict, fails: int = 0):
        self.model_id, self.is_tiny, self.fails = model_id, False, fails
        self.vision_compiled, self.frozen, self.warmed = bool(options.get("compile_vision")), False, []
        self.prefill_compiled = bool(options.get("compile_prefill"))  # as for a dense Qwen3-VL
        self.graph_decoder = None  # tests/test_compiled_prefill.py warms up a real one

    def warm_up(self, clip, num_frames=4):
        self.warmed.append((clip, num_frames, self.vision_compiled))
        if self.vision_compiled and self.fails:
            self.fails -= 1
            raise catalogue.ModelError("Compiling the vision tower failed (BackendCompilerFailed: no C++ compiler)")
        return 1.0

    def use_eager_vision(self):
        self.vision_compiled = False

    def use_eager_prefill(self):
        self.prefill_compiled = False

    def freeze_vision_compilation(self):
        self.frozen = self.vision_compiled or self.prefill_compiled


@pytest.fixture
def loaded(monkeypatch):
    """What catalogue.load asks VideoQA.from_pretrained for, and the stand-ins it returned."""
    calls, served = [], []
    fails = {"count": 0}

    def from_pretrained(model_id, **options):
        calls.append((model_id, options))
        served.append(StandIn(model_id, options, fails["count"]))
        return served[-1]

    monkeypatch.setattr(VideoQA, "from_pretrained", from_pretrained)
    return calls, served, fails


def test_load_gives_the_time_limit_and_warms_a_real_model_up_on_the_video(loaded, monkeypatch):
    calls, served, _ = loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    load("Qwen/Qwen3-VL-2B-Instruct")
    assert calls == [("Qwen/Qwen3-VL-2B-Instruct", {"max_generation_s": 7.0})]
    assert served[0].warmed == [(CLIP, 4, False)] and not served[0].frozen


def test_on_zero_gpu_the_weights_go_to_cuda_with_no_warm_up_no_compiling_and_eager_decoding(loaded, monkeypatch):
    calls, served, _ = loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load("Qwen/Qwen3-VL-2B-Instruct", zero_gpu=True)
    load("Qwen/Qwen3-VL-2B-Instruct", zero_gpu=True, compile_model=True)
    expected = {"max_generation_s": 7.0, "device_map": "cuda", "graph_decode": False}
    assert calls == [("Qwen/Qwen3-VL-2B-Instruct", expected)] * 2 and [s.warmed for s in served] == [[], []]


def test_qwen3_vl_on_a_dedicated_gpu_compiles_its_vision_tower_by_default_and_freezes_it_after_warm_up(loaded,
                                                                                                         monkeypatch):
    calls, served, _ = loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for model_id in ("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-30B-A3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct",
                     "/a/local/folder"):  # fmt: skip
        load(model_id)
    compiled = [(bool(options.get("compile_vision")), bool(options.get("compile_prefill"))) for _, options in calls]
    # other families were not measured compiled: asked only; VideoQA compiles the prefill only where it can
    assert compiled == [(True, True), (True, True), (False, False), (False, False)]
    frames = catalogue.COMPILED_WARM_UP_FRAMES
    assert served[0].warmed == [(CLIP, frames, True)] and served[0].frozen and frames >= 32
    assert served[2].warmed == [(CLIP, 4, False)] and not served[2].frozen
    load("Qwen/Qwen2.5-VL-7B-Instruct", compile_model=True)  # asked for
    load("Qwen/Qwen3-VL-8B-Instruct", compile_model=False)  # refused
    assert [bool(options.get("compile_vision")) for _, options in calls[-2:]] == [True, False]


def test_compiling_is_asked_for_only_where_there_is_a_cuda_gpu(loaded, monkeypatch):
    calls, served, _ = loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    load("Qwen/Qwen3-VL-8B-Instruct")
    load("m", compile_model=True)
    assert [options for _, options in calls] == [{"max_generation_s": 7.0}] * 2
    assert [s.warmed for s in served] == [[(CLIP, 4, False)]] * 2


def test_a_vision_tower_that_fails_to_compile_is_served_eagerly_and_the_log_says_why(loaded, monkeypatch, caplog):
    _, served, fails = loaded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fails["count"] = 1
    with caplog.at_level("WARNING", logger="vcast.catalogue"):
        load("Qwen/Qwen3-VL-8B-Instruct")
    frames = catalogue.COMPILED_WARM_UP_FRAMES
    assert served[0].warmed == [(CLIP, frames, True), (CLIP, 4, False)] and not served[0].vision_compiled
    assert not served[0].prefill_compiled and not served[0].frozen
    assert ("serving Qwen/Qwen3-VL-8B-Instruct eagerly (no compiled vision tower or prefill): Compiling the vision "
            "tower failed") in caplog.text  # fmt: skip


def test_which_models_compile_by_default(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert catalogue.family_of("random-weights:Qwen3-VL-8B") == "qwen3_vl"
    assert catalogue.family_of("random-weights:Qwen2.5-VL-7B") == "qwen2_5_vl"
    assert catalogue.family_of("tiny") is None and not catalogue.compiles_by_default("tiny")
    assert catalogue.compiles_by_default("Qwen/Qwen3-VL-2B-Instruct")
    assert not catalogue.compiles_by_default("Qwen/Qwen3-VL-2B-Instruct", zero_gpu=True)


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
