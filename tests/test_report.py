"""What one answer shows a user (vcast.report): the app's cost table, /analyze's record, the status line, the JSON
file, and a streamed answer read event by event; on a tiny offline model's real answer (CPU, no downloads)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import types
from pathlib import Path

import pytest

from vcast import report
from vcast.pipeline import FULL, ModelError, VideoQA

CLIP = str(Path(__file__).resolve().parents[1] / "assets" / "brief_event.mp4")


@pytest.fixture(scope="module")
def result():
    """V-CAST and EVS beside the unpruned pass, on the tiny model: 4 frames, 2 temporal groups."""
    return VideoQA.tiny().answer(CLIP, "What word appears on the yellow sign?", methods=["vcast", "evs"], num_frames=4,
                                 max_new_tokens=2)  # fmt: skip


def with_metrics(result, **metrics):
    vcast = result.passes["vcast"]
    vcast = dataclasses.replace(vcast, metrics=dataclasses.replace(vcast.metrics, **metrics))
    return dataclasses.replace(result, passes={**result.passes, "vcast": vcast})


def test_the_tiny_model_costs_show_counts_only_and_say_why(result):
    table = report.cost_markdown(result)
    assert not report.has_timings(result) and table.startswith(report.TINY_COSTS)
    assert table.removeprefix(report.TINY_COSTS) == report.metric_markdown(result, timings=False)
    assert "visual tokens" in table and "prefill" not in table.removeprefix(report.TINY_COSTS)


def test_a_real_model_costs_show_every_timing(result):
    real = dataclasses.replace(result, model_id="Qwen/Qwen3-VL-2B-Instruct")
    assert report.has_timings(real) and report.cost_markdown(real) == report.metric_markdown(real)
    assert "| prefill ms |" in report.cost_markdown(real)


def test_pass_metrics_are_keyed_by_display_name_methods_first_then_unpruned(result):
    runs = report.pass_metrics(result)
    assert list(runs) == ["V-CAST", "EVS (vLLM)", "unpruned"]
    assert runs["EVS (vLLM)"] is result.passes["evs"].metrics and runs["unpruned"] is result.full.metrics
    assert list(report.pass_metrics(dataclasses.replace(result, full=None))) == ["V-CAST", "EVS (vLLM)"]


def test_notes_say_how_the_video_was_read_and_which_answer_the_time_limit_cut(result):
    assert report.notes(result) == list(result.clip.notes)
    evs = dataclasses.replace(result.passes["evs"], stop_reason="time_limit")
    clip = dataclasses.replace(result.clip, notes=("The video's rotation was applied.",))
    cut = dataclasses.replace(result, passes={**result.passes, "evs": evs}, clip=clip)
    assert report.notes(cut) == [
        "The video's rotation was applied.",
        f"The EVS (vLLM) answer stopped after {evs.metrics.new_tokens} tokens: the answer reached the time limit; "
        "ask for a shorter answer or use fewer frames.",
    ]


def test_analyze_record_adds_every_selection_the_main_one_and_the_notes(result):
    selections = {"vcast": {"kept": [[0, 1]]}, "evs": {"kept": [[2]]}}
    record = report.analyze_record(result, selections)
    assert record == {**report.result_record(result), "selections": selections, "selection": {"kept": [[0, 1]]},
                      "notes": report.notes(result)}  # fmt: skip
    assert json.loads(json.dumps(record)) == record  # JSON as it is


def test_the_done_line_gives_time_model_frames_and_the_share_kept_then_each_note(result):
    done = with_metrics(result, visual_tokens_kept=1234, visual_tokens_in=4936)
    assert report.done_markdown(done, 12.345) == (
        "**Done** in 12.3 s on `tiny` · 4 frames · V-CAST kept **1,234 of 4,936** visual tokens (25%). "
    )
    noted = dataclasses.replace(done, clip=dataclasses.replace(done.clip, notes=("Read at 2 fps.", "Trimmed.")))
    assert report.done_markdown(noted, 1.0).endswith("visual tokens (25%). ⚠️ Read at 2 fps. ⚠️ Trimmed.")


def test_write_json_puts_each_record_in_a_folder_of_its_own_and_sweeps_only_old_ones(tmp_path):
    old = report.write_json({"a": 1}, tmp_path, max_age_s=3600)
    os.utime(old.parent, (0, 0))  # written in 1970: older than an hour
    kept = report.write_json({"b": [1, 2]}, tmp_path, max_age_s=3600)
    assert not old.parent.exists() and kept.name == "vcast_result.json" and kept.parent.parent == tmp_path
    assert kept.read_text(encoding="utf-8") == json.dumps({"b": [1, 2]}, indent=1)
    newest = report.write_json({"c": "é"}, tmp_path, max_age_s=3600)
    assert kept.exists() and newest.parent != kept.parent
    assert json.loads(newest.read_text(encoding="utf-8")) == {"c": "é"}


def events(*pieces):
    """VideoQA.stream's events around `pieces`: the selections first, each pass as it ends, then the result."""
    return [("selected", "partial"), *pieces, ("pass", types.SimpleNamespace(method="vcast")), ("done", "result")]


def test_following_shows_each_pass_first_piece_at_once_and_throttles_the_rest():
    seen = report.StreamedAnswer(dict.fromkeys(["vcast", FULL], ""))
    shown = list(seen.follow(events(("vcast", "a"), ("vcast", "b"), (FULL, "c"), (FULL, "d")), threading.Event(),
                             refresh_s=float("inf")))  # fmt: skip
    assert shown == ["vcast", FULL] and seen.texts == {"vcast": "ab", FULL: "cd"}
    assert seen.partial == "partial" and list(seen.passes) == ["vcast"] and seen.result == "result"
    every = report.StreamedAnswer(dict.fromkeys(["vcast", FULL], ""))
    assert list(every.follow(events(("vcast", "a"), ("vcast", "b")), threading.Event(), refresh_s=-1)) == ["vcast"] * 2


def test_a_stop_ends_the_following_at_the_next_event_without_a_result_or_an_error():
    stop, seen = threading.Event(), report.StreamedAnswer({"vcast": ""})
    for _ in seen.follow(events(("vcast", "a"), ("vcast", "b")), stop):
        stop.set()
    assert seen.texts == {"vcast": "a"} and seen.result is None and seen.passes == {}
    finished = report.StreamedAnswer({"vcast": ""})  # the result came with the stop: it is kept
    assert list(finished.follow([("done", "result")], stop)) == [] and finished.result == "result"


def test_a_stream_that_ends_without_its_result_is_a_model_error():
    seen = report.StreamedAnswer({"vcast": ""})
    with pytest.raises(ModelError) as caught:
        list(seen.follow([("selected", "partial"), ("vcast", "a")], threading.Event()))
    assert str(caught.value) == "The model stopped before it finished its answers; please run again."


def test_so_far_holds_the_selections_with_the_passes_that_ended(result):
    seen = report.StreamedAnswer(dict.fromkeys(["vcast", "evs", FULL], ""))
    assert seen.so_far() is None  # nothing selected yet: nothing to draw
    seen.partial = dataclasses.replace(result, passes={}, full=None)
    seen.passes = {"evs": result.passes["evs"], FULL: result.full}
    so_far = seen.so_far()
    assert so_far.passes == {"evs": result.passes["evs"]} and so_far.full is result.full
    assert so_far.selections is result.selections and so_far.main_method == "evs"
