"""The app's handlers on the tiny offline models and the example clips (CPU, no downloads, no server)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from vcast import catalogue
from vcast.pipeline import VideoQA
from vcast.report import metric_markdown
from viz import BUDGET_TRACE, CURVATURE_TRACE, budget_trace_name, comparison_trace_name

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = json.loads((ROOT / "assets" / "examples.json").read_text())
CLIP = str(ROOT / "assets" / EXAMPLES[0]["file"])
QUESTION = EXAMPLES[0]["question"]
FRAMES = 8  # 4 temporal groups of the Qwen families: enough for curvature, quick on the CPU
UPLOAD = {"path": CLIP, "meta": {"_type": "gradio.FileData"}}  # what gradio_client's handle_file sends


def run_ui(app, methods=("vcast",), *, video=CLIP, frames=FRAMES, compare=True, model="tiny", request=None, **kw):
    """All updates the Run button's handler yields (overlays without the heatmap)."""
    s = {"retain_percent": 25, "temperature": 0.7, "allocation": "curvature", "max_new_tokens": 12, **kw}
    return list(app.run(video, QUESTION, list(methods), s["retain_percent"], frames, model, compare, s["temperature"],
                        s["allocation"], s["max_new_tokens"], False, request))  # fmt: skip


def captions(gallery: gr.Gallery) -> list[str]:
    return [item["caption"] for item in gallery.value]


@pytest.fixture(scope="module")
def updates(app):
    return run_ui(app, ("vcast", "evs"))


def test_importing_the_app_loads_no_model():
    code = "import app; assert app.MODELS.held is None and app.OFFERED == []"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": ""})


def test_the_example_clips_and_questions_are_offered_in_one_click(app):
    assert [[str(ROOT / "assets" / e["file"]), e["question"]] for e in EXAMPLES] == app.EXAMPLES


def test_offline_start_serves_the_tiny_model_says_so_and_offers_every_tiny_family(app, caplog):
    assert app.MODELS.model_id == "tiny" and list(catalogue.TINY_MODELS) == app.OFFERED
    assert "random model" in app.BANNER and "--model" in app.BANNER and "cannot be reached" in app.BANNER
    with caplog.at_level("WARNING", logger="vcast.app"):
        app.load_startup_model(None, hub_ok=False, gpu_gib=80.0)
    assert "tiny random model" in caplog.text  # `python app.py` says it in its log too


def test_a_model_that_cannot_load_leaves_the_tiny_model_and_a_banner_with_the_reason(app, tmp_path):
    qa, banner = app.load_startup_model(str(tmp_path / "no-such-checkpoint"), hub_ok=False, gpu_gib=0.0)
    assert qa.is_tiny and "no-such-checkpoint" in banner


def test_the_catalogue_picks_by_hardware_and_offers_every_family_that_fits():
    assert catalogue.default_model_id(24.0) == "Qwen/Qwen3-VL-8B-Instruct"
    assert catalogue.default_model_id(0.0) == "Qwen/Qwen3-VL-2B-Instruct"
    assert catalogue.startup_model_id(None, hub_ok=False, gpu_gib=80.0) == "tiny"
    on_h100 = catalogue.model_choices("Qwen/Qwen3-VL-8B-Instruct", hub_ok=True, gpu_gib=79.0)
    families = {c.family for c in catalogue.CHECKPOINTS if c.model_id in on_h100}
    assert families == {"qwen3_vl", "qwen2_5_vl", "qwen3_5", "llava_onevision"}
    assert "Qwen/Qwen3-VL-32B-Instruct" not in on_h100
    mine = catalogue.model_choices("/models/mine", hub_ok=True, gpu_gib=0.0)
    assert mine == ["/models/mine", "Qwen/Qwen3-VL-2B-Instruct"]


def test_the_model_slot_keeps_one_model_and_swaps_it_on_request():
    loads = []
    slot = catalogue.ModelSlot(lambda model_id: loads.append(model_id) or types.SimpleNamespace(model_id=model_id))
    assert slot.get("a") is slot.get("a") and slot.get("b").model_id == "b" and loads == ["a", "b"]


def test_zero_gpu_reserves_time_by_frames_methods_and_tokens_within_its_cap(app):
    clip = types.SimpleNamespace(num_frames=16)
    short = app.gpu_seconds("tiny", clip, "q", None, ["vcast"], False, 32)
    assert short < app.gpu_seconds("tiny", clip, "q", None, ["vcast", "evs"], True, 32)
    assert short < app.gpu_seconds("tiny", types.SimpleNamespace(num_frames=64), "q", None, ["vcast"], False, 32)
    assert app.gpu_seconds("tiny", clip, "q", None, ["vcast"] * 4, True, 512) == app.ZERO_GPU_MAX_S
    assert app.spaces is None and not app.ON_ZERO_GPU  # here: answer_events is the plain generator


def test_run_streams_each_method_then_the_unpruned_answer_in_its_own_box(app, updates):
    first, last = updates[0], updates[-1]
    assert first["answer_0"].label == "V-CAST answer" and first["answer_1"].label == "EVS (vLLM) answer"
    assert first["answer_2"].visible is False and first["answer_3"].visible is False
    streamed = [(u["answer_0"], u["answer_1"], u["full_answer"]) for u in updates if "full_answer" in u][1:]
    final = streamed[-1]
    assert all(final)
    assert all(f.startswith(s) for step in streamed for s, f in zip(step, final, strict=True))  # text only grows
    assert streamed[0][0] and not streamed[0][1] and not streamed[0][2]  # V-CAST first, on its own
    assert last["status"].startswith("**Done** in ")


def test_run_says_each_stage_as_it_starts(app, updates):
    stages = list(dict.fromkeys(u["status"] for u in updates if "status" in u))
    assert stages[:-1] == [
        "Step 1 of 6 · **Decoding and sampling the frames…**",
        f"Step 2 of 6 · **Encoding {FRAMES} frames and selecting tokens…**",
        "Step 3 of 6 · **Generating the V-CAST answer…**",
        "Step 4 of 6 · **Generating the EVS (vLLM) answer…**",
        "Step 5 of 6 · **Generating the unpruned answer…**",
        "Step 6 of 6 · **Drawing the figures and overlays…**",
    ]


def test_a_run_starts_by_hiding_the_last_results_and_showing_nothing_empty(app, updates):
    first = updates[0]
    assert first["results"].visible and first["costs"].visible is False and first["drawn"].visible is False
    assert first["result_file"].visible is False and first["stop_button"].visible


def test_every_method_gets_a_budget_series_over_the_curvature_and_an_overlay_choice(app, updates):
    last = updates[-1]
    traces = {t.name: np.asarray(t.y) for t in last["budget_plot"].data}
    view = last["overlay_state"]
    np.testing.assert_array_equal(traces[BUDGET_TRACE], view.records["vcast"].budgets)
    np.testing.assert_array_equal(traces[comparison_trace_name("EVS (vLLM)")], view.records["evs"].budgets)
    assert len(traces[CURVATURE_TRACE]) == FRAMES // 2
    assert last["overlay_method"].choices == [("V-CAST", "vcast"), ("EVS (vLLM)", "evs")]
    gallery = last["gallery"]
    assert len(gallery.value) == FRAMES and gallery.selected_index is None  # no preview: nothing scrolls the page
    assert max(view.frames.shape[1:3]) <= 640 and last["sheet"].dtype == np.uint8


def test_the_overlay_selector_redraws_another_methods_gallery(app, updates):
    view = updates[-1]["overlay_state"]
    evs, vcast = app.overlays(view, "evs", False, 3), app.overlays(view, "vcast", False, 3)
    assert evs["gallery"].selected_index == 3
    assert captions(evs["gallery"]) != captions(vcast["gallery"])  # each method's own budgets per frame
    heat = app.overlays(view, "evs", True)
    assert not np.array_equal(heat["sheet"], evs["sheet"])


def test_on_the_tiny_model_the_costs_say_timings_mean_nothing_and_show_counts_only(app, updates):
    last = updates[-1]
    table = last["metrics_table"]
    assert table.startswith(app.TINY_COSTS)
    assert "prefill" not in table.removeprefix(app.TINY_COSTS) and "tokens/s" not in table
    assert "| visual tokens | " in table and "V-CAST / unpruned" in table
    panels = {a.text for a in last["cost_plot"].layout.annotations}
    assert panels == {"visual tokens to the LLM", "sequence length", "peak process memory, RSS (MB)"}
    assert {t.name for t in last["cost_plot"].data} == {"V-CAST", "EVS (vLLM)", "unpruned"}


def test_the_cost_table_keeps_the_timings_where_they_mean_something(app):
    result = app.MODELS.get("tiny").answer(CLIP, QUESTION, num_frames=4, max_new_tokens=2)
    assert "prefill ms" in metric_markdown(result, timings=True)
    assert "prefill ms" not in metric_markdown(result, timings=False)


def test_the_json_export_is_what_analyze_returns_with_every_method(app, updates):
    path = Path(updates[-1]["result_file"].value["path"])
    record = json.loads(path.read_text())
    assert path.name == "vcast_result.json" and updates[-1]["result_file"].visible
    assert list(record["methods"]) == ["vcast", "evs"] and list(record["selections"]) == ["vcast", "evs"]
    for name, entry in record["methods"].items():
        assert [g["budget"] for g in record["selections"][name]["groups"]] == entry["budgets"]
    assert record["vcast"] == record["methods"]["vcast"] and record["full"]["answer"]


def test_stop_shows_what_was_computed_and_no_empty_placeholder(app, monkeypatch):
    request = types.SimpleNamespace(session_hash="page-1")
    updates, stopped = [], False
    for update in app.run(CLIP, QUESTION, ["vcast", "evs"], 25, FRAMES, "tiny", True, 0.7, "curvature", 64, False,
                          request):  # fmt: skip
        updates.append(update)
        if not stopped and isinstance(update.get("answer_0"), str) and update["answer_0"]:  # V-CAST answers: Stop
            app.stop_run(request)
            stopped = True
    last = updates[-1]
    assert last["status"] == app.STOPPED and last["stop_button"].visible is False
    assert last["answer_0"] and last["drawn"].visible and last["budget_plot"] is not None and last["gallery"].value
    assert "costs" not in last and "result_file" not in last  # no pass ended: the costs stay hidden, not empty
    assert last["answer_1"] == last["full_answer"] == "(stopped before this answer began)"  # no empty box
    assert "page-1" not in app.STOP_REQUESTS


def test_merging_and_score_free_methods_show_their_kept_slots(app):
    last = run_ui(app, ("avgpool_2x2", "first_2x2"), compare=False)[-1]
    view = last["overlay_state"]
    assert list(view.records) == ["avgpool_2x2", "first_2x2"] and last["full_answer"] == app.COMPARE_OFF
    for record in view.records.values():
        assert record.keep_mask.sum() == record.budgets.sum() > 0
    assert budget_trace_name("avg-pool 2x2") in {t.name for t in last["budget_plot"].data}  # the first is the bars
    assert len(view.gallery("avgpool_2x2", heatmap=True)) == FRAMES  # a heatmap without scores draws


def test_a_llava_onevision_model_uses_one_frame_per_temporal_group(app):
    last = run_ui(app, frames=4, model="tiny-llava_onevision")[-1]
    view = last["overlay_state"]
    assert view.records["vcast"].frames_per_group == 1 and view.records["vcast"].keep_mask.shape[0] == 4
    assert len(last["gallery"].value) == 4 and "tiny-llava_onevision" in last["status"]
    assert app.MODELS.get("tiny").model_id == "tiny"  # and back


def test_analyze_returns_every_method_the_unpruned_answer_and_one_budget_per_group(app):
    record = app.analyze(UPLOAD, QUESTION, methods=["vcast", "evs", "vidcom2"], num_frames=FRAMES, max_new_tokens=4)
    json.dumps(record)
    assert list(record["methods"]) == ["vcast", "evs", "vidcom2"] and record["full"]["answer"]
    for entry in record["methods"].values():
        assert entry["answer"] and len(entry["budgets"]) == FRAMES // 2 == record["grid_thw"][0]
        assert sum(entry["budgets"]) == entry["metrics"]["visual_tokens_kept"]
    assert record["selection"] == record["selections"]["vcast"] and record["notes"] == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_frames": "4.0"}, "Frames sampled (num_frames) must be an even number from 2 to 64, got '4.0'."),
        ({"num_frames": 10**400}, "Frames sampled (num_frames) must be an even number from 2 to 64, got "
                                  "1000000000000000… (401 characters)."),
        ({"compare": "false"}, "Compare with the unpruned model (compare) must be true or false, got 'false'."),
        ({"methods": ["vcast", "evs", "uniform", "vidcom2", "first_2x2"]}, "Choose at most 4 methods at once (methods), got 5."),  # noqa: E501
        ({"methods": ["magic"]}, "unknown method 'magic'; the methods are vcast, uniform, uniqueness, first_2x2, "
                                 "random_2x2, avgpool_2x2, evs, vidcom2"),
        ({"retain_percent": float("nan")}, "Visual tokens kept (retain_percent) must be a number, got nan."),
        ({"temperature": 1e-300}, None),  # VCastConfig's own sentence
    ],
)
def test_unusable_api_values_are_refused_with_a_sentence_naming_the_setting(app, settings, message):
    with pytest.raises(gr.Error) as caught:
        app.analyze(UPLOAD, QUESTION, **settings)
    assert message is None or caught.value.message == message
    assert "\n" not in caught.value.message and len(caught.value.message) < 300


@pytest.mark.parametrize(
    ("video", "question", "message"),
    [
        (None, QUESTION, "Upload a video"),
        (UPLOAD, "   ", "Type a question"),
        ("/etc/passwd", QUESTION, "Send the video as a file"),
        ({"path": CLIP}, QUESTION, "Send the video as a file"),  # no file marker: Gradio never checked it
        ({**UPLOAD, "path": str(ROOT / "assets")}, QUESTION, "names a folder"),
        (UPLOAD, "What is <|im_end|> here?", "control token"),
    ],
)
def test_bad_input_becomes_a_readable_error(app, video, question, message):
    with pytest.raises(gr.Error, match=message):
        app.analyze(video, question, num_frames=4, max_new_tokens=2)


def test_model_errors_are_shown_and_the_model_stays_loaded(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")
        yield

    monkeypatch.setattr(app, "answer_events", broken)
    with pytest.raises(gr.Error, match=r"The model failed on this video .*device-side assert"):
        app.analyze(UPLOAD, QUESTION, num_frames=4)
    monkeypatch.undo()
    assert app.analyze(UPLOAD, QUESTION, num_frames=4, max_new_tokens=2)["vcast"]["answer"]


def test_streaming_refreshes_a_few_times_a_second_not_once_per_token(app, monkeypatch):
    pieces = [("vcast", "a")] * 50 + [("full", "b")] * 50
    monkeypatch.setattr(app, "answer_events", lambda *args: (p for p in pieces))  # instant; ends without a result
    shown = []
    with pytest.raises(gr.Error, match="stopped before it finished"):
        for u in app.run(CLIP, QUESTION, ["vcast"], 25, FRAMES, "tiny", True, 0.7, "curvature", 12, False):
            shown += [(u["answer_0"], u["full_answer"])] if isinstance(u.get("answer_0"), str) else []
    assert shown == [("a", ""), ("a" * 50, "b")]  # the first piece of each pass; the rest would come at the end


def test_the_tiny_model_is_not_warmed_up_and_keeps_the_apps_time_limit(app, monkeypatch):
    warmed = []
    monkeypatch.setattr(VideoQA, "warm_up", lambda self, clip, **kw: warmed.append(clip) or 0.0)
    qa = app.load("tiny-qwen2_5_vl")
    assert qa.is_tiny and warmed == [] and qa.max_generation_s == app.MAX_GENERATION_S
