"""The app's handlers on the tiny offline model and the example clips (CPU, no downloads, no server)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from viz import BUDGET_TRACE, CURVATURE_TRACE, comparison_trace_name, load_selection_json

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = json.loads((ROOT / "assets" / "examples.json").read_text())
CLIP = str(ROOT / "assets" / EXAMPLES[0]["file"])
QUESTION = EXAMPLES[0]["question"]
FRAMES = 8  # 4 temporal groups: enough for curvature, quick on the CPU


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The metrics table's rows: label -> [V-CAST, unpruned, ratio]."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][1:]  # skip the header
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def run_ui(app, video=CLIP, question=QUESTION, *, frames=FRAMES, compare=True, allocation="curvature"):
    """All updates the Run button's handler yields (overlays without the heatmap)."""
    return list(app.run(video, question, 25, frames, "tiny", compare, 0.7, allocation, 12, False))


@pytest.fixture(scope="module")
def updates(app):
    return run_ui(app)


def test_the_example_clips_and_questions_are_offered_in_one_click(app):
    assert [[str(ROOT / "assets" / e["file"]), e["question"]] for e in EXAMPLES] == app.EXAMPLES
    assert all(Path(path).is_file() for path, _ in app.EXAMPLES)


def test_offline_start_serves_the_tiny_model_and_says_so(app):
    assert app.MODEL_ID == "tiny" and app.MODEL_CHOICES == ["tiny"]
    assert "random weights" in app.BANNER and "--model" in app.BANNER
    qa, banner = app.load_startup_model(None, hub_ok=False, gpu_gib=80.0)
    assert qa.is_tiny
    assert "cannot be reached" in banner and "random weights" in banner and app.SMALL_DEFAULT in banner


def test_a_model_that_cannot_load_leaves_the_tiny_model_and_a_banner_with_the_reason(app, tmp_path):
    qa, banner = app.load_startup_model(str(tmp_path / "no-such-checkpoint"), hub_ok=False, gpu_gib=0.0)
    assert qa.is_tiny
    assert "no-such-checkpoint" in banner and "tiny random model" in banner


def test_the_default_model_is_8b_on_a_large_gpu_and_2b_otherwise(app):
    assert app.default_model_id(80.0) == "Qwen/Qwen3-VL-8B-Instruct"
    assert app.default_model_id(24.0) == "Qwen/Qwen3-VL-8B-Instruct"
    assert app.default_model_id(16.0) == "Qwen/Qwen3-VL-2B-Instruct"
    assert app.default_model_id(0.0) == "Qwen/Qwen3-VL-2B-Instruct"


def test_the_model_dropdown_offers_what_fits_the_hardware(app):
    assert app.model_choices("tiny", hub_ok=False, gpu_gib=80.0) == ["tiny"]
    on_h100 = app.model_choices("Qwen/Qwen3-VL-8B-Instruct", hub_ok=True, gpu_gib=79.0)
    assert on_h100 == ["Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"]
    assert app.model_choices("Qwen/Qwen3-VL-2B-Instruct", hub_ok=True, gpu_gib=0.0) == ["Qwen/Qwen3-VL-2B-Instruct"]
    assert app.model_choices("/models/mine", hub_ok=True, gpu_gib=0.0) == ["/models/mine", "Qwen/Qwen3-VL-2B-Instruct"]


def test_without_spaces_the_gpu_function_is_the_plain_generator(app):
    assert app.spaces is None and not app.ON_ZERO_GPU
    assert inspect.isgeneratorfunction(app.answer_stream)


def test_the_server_binds_to_localhost_unless_told_otherwise(app):
    args = app.parse_args([])
    assert args.host is None  # Gradio then binds GRADIO_SERVER_NAME, else 127.0.0.1
    assert app.parse_args(["--host", "0.0.0.0", "--port", "7870", "--model", "tiny"]).host == "0.0.0.0"


def test_compile_is_off_unless_asked_by_flag_or_environment(app, monkeypatch):
    assert app.parse_args([]).compile is False
    assert app.parse_args(["--compile"]).compile is True
    monkeypatch.setenv("VCAST_COMPILE", "1")
    assert app.parse_args([]).compile is True


def test_a_local_checkpoint_loads_compiled_only_on_a_gpu(app, tmp_path):
    from vcast.models.tiny import tiny_model, tiny_processor

    tiny_model().save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    qa, banner = app.load_startup_model(str(tmp_path), hub_ok=False, gpu_gib=0.0, compile_model=True)
    assert qa.model_id == str(tmp_path) and not qa.is_tiny
    on_gpu = qa.device.type == "cuda"
    assert (qa.decode_caches is not None) == on_gpu  # CUDA graphs need a GPU; on the CPU nothing is compiled
    assert (banner is None) == on_gpu  # the CPU banner still says what runs where


def test_run_streams_the_vcast_answer_then_the_unpruned_one(app, updates):
    answers = [u for u in updates if app.vcast_answer in u]
    first, *streamed, last = answers
    assert first[app.results].visible is True and first[app.vcast_answer] == "" and first[app.full_answer] == ""
    vcast, full = last[app.vcast_answer], last[app.full_answer]
    assert vcast and full
    pairs = [(u[app.vcast_answer], u[app.full_answer]) for u in streamed]
    assert all(vcast.startswith(v) and full.startswith(f) for v, f in pairs)  # the text only grows
    assert pairs[0][0] and pairs[0][1] == ""  # V-CAST streams first, on its own
    assert any(v == vcast and f for v, f in pairs)  # the unpruned pass streams after V-CAST has finished


def test_streaming_refreshes_a_few_times_a_second_not_once_per_token(app, monkeypatch):
    pieces = [("vcast", "a")] * 50 + [("full", "b")] * 50
    monkeypatch.setattr(app, "answer_stream", lambda *args: iter(pieces))  # instant, and ends without a result
    streamed = []
    with pytest.raises(gr.Error, match="stopped before it finished"):
        for update in app.run(CLIP, QUESTION, 25, FRAMES, "tiny", True, 0.7, "curvature", 12, False):
            if update.get(app.vcast_answer):
                streamed.append((update[app.vcast_answer], update[app.full_answer]))
    assert streamed == [("a", ""), ("a" * 50, "b")]  # the first piece of each pass; the rest comes with the result


def test_run_says_each_stage_decoding_encoding_generating_drawing_as_it_starts(app, updates):
    stages = list(dict.fromkeys(u[app.status] for u in updates if app.status in u))  # in order, once each
    assert stages[:-1] == [
        "Step 1 of 5 · **Decoding and sampling the frames…**",
        f"Step 2 of 5 · **Encoding {FRAMES} frames and selecting tokens…**",
        "Step 3 of 5 · **Generating the V-CAST answer…**",
        "Step 4 of 5 · **Generating the unpruned answer…**",
        "Step 5 of 5 · **Drawing the figures and overlays…**",
    ]
    assert stages[-1].startswith("**Done** in ")
    first = updates[0]  # before the video is decoded: the stage, and the last run's results cleared
    assert first[app.status] == stages[0] and first[app.results].visible is True
    assert first[app.vcast_answer] == "" and first[app.gallery] == [] and first[app.budget_plot] is None


def test_unusable_settings_are_refused_before_anything_on_the_page_changes(app):
    with pytest.raises(gr.Error, match="Type a question"):
        next(app.run(CLIP, "", 25, FRAMES, "tiny", True, 0.7, "curvature", 12, False))
    cleanup = app.after_failure()  # what the page shows after any failed run
    assert cleanup[app.status] == "" and cleanup[app.results].visible is False


def test_run_ends_with_the_figures_overlays_metrics_and_selection(app, updates):
    last = updates[-1]
    view = last[app.overlay_state]
    num_groups = FRAMES // 2
    assert view.frames.shape[0] == FRAMES and view.keep_masks.shape[0] == num_groups
    assert max(view.frames.shape[1:3]) <= app.DISPLAY_SIDE_PX and view.frames.dtype == np.uint8

    # The allocation figure: V-CAST's budgets and curvature, and the uniform and uniqueness splits of the
    # same total.
    traces = {t.name: t for t in last[app.budget_plot].data}
    budgets = np.asarray(traces[BUDGET_TRACE].y)
    np.testing.assert_array_equal(budgets, view.budgets)
    assert len(traces[CURVATURE_TRACE].y) == num_groups
    uniform = np.asarray(traces[comparison_trace_name("uniform")].y)
    assert uniform.sum() == budgets.sum() and uniform.max() - uniform.min() <= 1
    uniqueness = np.asarray(traces[comparison_trace_name("uniqueness")].y)
    assert uniqueness.sum() == budgets.sum() and len(uniqueness) == num_groups

    # The gallery: one overlay per sampled frame, opened on the first; the frame slider spans them.
    gallery = last[app.gallery]
    assert isinstance(gallery, gr.Gallery) and gallery.selected_index == 0
    assert len(gallery.value) == FRAMES
    assert last[app.frame_slider].maximum == FRAMES - 1

    sheet = last[app.sheet]
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.dtype == np.uint8

    record = load_selection_json(last[app.selection_file])
    assert Path(last[app.selection_file]).name == "vcast_selection.json"
    np.testing.assert_array_equal(record.budgets, view.budgets)
    np.testing.assert_array_equal(record.keep_mask, view.keep_masks)

    assert "Done" in last[app.status] and "tiny" in last[app.status]
    assert len(last[app.cost_plot].data) == 2 * len(app.COST_PANELS)  # V-CAST and unpruned bar per panel


def test_the_metrics_table_gives_both_runs_and_their_ratio(app, updates):
    rows = table_rows(updates[-1][app.metrics_table])
    assert len(rows) == 7
    kept, total, ratio = rows["Visual tokens to the LLM"]
    assert int(kept) < int(total) and ratio == f"{int(kept) / int(total):.2f}×"
    for label in ("Prefill (ms)", "Time to first token (ms)", "Total (ms)", "Peak process memory, RSS (MB)"):
        assert rows[label][2].endswith("×")


def test_without_the_comparison_only_vcast_runs(app):
    last = run_ui(app, compare=False)[-1]
    assert last[app.full_answer] == app.COMPARE_OFF_TEXT
    assert all(row[1] == "–" and row[2] == "–" for row in table_rows(last[app.metrics_table]).values())
    assert [t.name for t in last[app.cost_plot].data] == ["V-CAST"] * len(app.COST_PANELS)


def test_another_allocation_is_compared_with_the_curvature_split_vcast_would_make(app, updates):
    uniform_run = run_ui(app, allocation="uniform")[-1]
    traces = {t.name: np.asarray(t.y) for t in uniform_run[app.budget_plot].data}
    budgets = traces[BUDGET_TRACE]
    assert budgets.max() - budgets.min() <= 1  # the run itself split evenly
    # Same clip, same frames, same features: its curvature comparison is what the curvature run kept.
    np.testing.assert_array_equal(traces[comparison_trace_name("curvature")], updates[-1][app.overlay_state].budgets)


def test_the_heatmap_toggle_redraws_gallery_and_sheet_on_the_same_frame(app, updates):
    view = updates[-1][app.overlay_state]
    kept, heat = app.redraw_overlays(view, False, 3), app.redraw_overlays(view, True, 3)
    assert kept[app.gallery].selected_index == heat[app.gallery].selected_index == 3
    assert len(kept[app.gallery].value) == len(heat[app.gallery].value) == FRAMES
    assert kept[app.sheet].shape == heat[app.sheet].shape and not np.array_equal(kept[app.sheet], heat[app.sheet])
    kept_image, kept_caption = app.gallery_items(view, False)[3]
    heat_image, heat_caption = app.gallery_items(view, True)[3]
    assert kept_caption == heat_caption == f"{view.times_s[3]:.1f} s · {view.budgets[1]}/{view.keep_masks[1].size} kept"
    assert kept_image.shape == heat_image.shape and not np.array_equal(kept_image, heat_image)


def test_the_frame_slider_and_the_gallery_follow_each_other(app):
    assert app.show_frame(5).selected_index == 5
    assert app.frame_of_selection(gr.SelectData(None, {"index": 2, "value": None})) == 2


def test_analyze_returns_answers_metrics_and_one_budget_per_group(app):
    record = app.analyze(CLIP, QUESTION, num_frames=FRAMES, max_new_tokens=6)
    json.dumps(record)  # plain JSON for gradio_client users
    vcast, full = record["vcast"], record["full"]
    assert vcast["answer"] and full["answer"]
    assert vcast["metrics"]["visual_tokens_kept"] < full["metrics"]["visual_tokens_kept"]
    num_groups = record["grid_thw"][0]
    assert num_groups == FRAMES // 2 == len(record["budgets"]) == record["selection"]["num_groups"]
    assert sum(record["budgets"]) == vcast["metrics"]["visual_tokens_kept"] == record["selection"]["total_kept"]


@pytest.mark.parametrize(
    ("video", "question", "frames", "message"),
    [
        (None, QUESTION, FRAMES, "Upload a video"),
        (CLIP, "   ", FRAMES, "Type a question"),
        (CLIP, QUESTION, 7, "even number"),
        ("text", QUESTION, FRAMES, "text file"),
        ("missing", QUESTION, FRAMES, "No video file"),
    ],
)
def test_bad_input_becomes_a_readable_error(app, tmp_path, video, question, frames, message):
    if video == "text":
        video = tmp_path / "notes.mp4"
        video.write_text("these are my notes, not a video\n")
    elif video == "missing":
        video = tmp_path / "gone.mp4"
    with pytest.raises(gr.Error, match=message):
        run_ui(app, video, question, frames=frames)
    with pytest.raises(gr.Error, match=message):
        app.analyze(video, question, num_frames=frames, max_new_tokens=4)


def test_a_too_long_video_is_refused_with_the_limit(app, monkeypatch):
    monkeypatch.setattr(app, "MAX_DURATION_S", 10.0)
    with pytest.raises(gr.Error, match=r"more than the 10\.0 s limit"):
        app.analyze(CLIP, QUESTION, num_frames=FRAMES)


def test_model_errors_are_shown_and_the_model_stays_loaded(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")
        yield

    monkeypatch.setattr(app, "answer_stream", broken)
    with pytest.raises(gr.Error, match=r"The model failed on this video .*device-side assert"):
        app.analyze(CLIP, QUESTION, num_frames=FRAMES)
    monkeypatch.undo()
    assert app.analyze(CLIP, QUESTION, num_frames=FRAMES, max_new_tokens=2)["vcast"]["answer"] is not None


def test_a_real_model_is_warmed_up_by_one_short_run_of_both_passes(app, monkeypatch, tmp_path):
    results = []
    qa = app.MODELS.get("tiny")
    answer = qa.answer  # patched on the instance: other tests may have left an instance attribute there
    monkeypatch.setattr(qa, "answer", lambda *args, **kwargs: results.append(answer(*args, **kwargs)))
    assert app.warm_up(qa) > 0
    [result] = results
    assert result.full is not None and result.clip.num_frames == 4 and len(result.pruned.token_ids) <= 2
    assert app.warm_up(app.MODELS.get("tiny"), tmp_path / "missing.mp4") == 0.0


def test_the_loaded_model_is_reused_across_requests(app):
    assert app.MODELS.get("tiny") is app.MODELS.get("tiny")
