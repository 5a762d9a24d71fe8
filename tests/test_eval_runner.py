"""The evaluation runner end to end on the tiny offline model: a small synthetic benchmark whose answers are
a colour or a count shown in the clip, a corrupt video, reruns, an interrupted run, and two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from vcast import VideoQA
from vcast.eval.__main__ import main
from vcast.eval.runner import EvalError, EvalSettings, run

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
METHODS = ("vcast", "evs")
PASSES = ["full", *METHODS]
TIMING = ("metrics", "rank")  # fields that differ between runs of the same items


def _write_clip(path: Path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def _colour_clip(name: str) -> list[np.ndarray]:
    """8 frames of 64 x 64: a square of the colour, moving one pixel a frame."""
    frames = [np.zeros((64, 64, 3), np.uint8) for _ in range(8)]
    for i, rgb in enumerate(frames):
        rgb[16 + i : 40 + i, 16:40] = COLOURS[name]
    return frames


def _count_clip(count: int) -> list[np.ndarray]:
    """8 frames of 64 x 64 with `count` white dots."""
    frames = [np.zeros((64, 64, 3), np.uint8) for _ in range(8)]
    for rgb in frames:
        for k in range(count):
            rgb[24:32, 4 + 15 * k : 12 + 15 * k] = 255
    return frames


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """manifest.jsonl: 3 colour questions (answers as letters), 3 count questions (answers as option text)
    and 1 question about a corrupt video."""
    root = tmp_path_factory.mktemp("bench")
    records = []
    for i, name in enumerate(("red", "blue", "yellow")):
        _write_clip(root / f"colour{i}.mp4", _colour_clip(name))
        records.append(
            {
                "video": f"colour{i}.mp4",
                "question": "What colour is the square?",
                "options": list(COLOURS),
                "answer": "ABCD"[list(COLOURS).index(name)],
                "task": "colour",
                "duration": 1.0,
            }
        )
    for i, count in enumerate((1, 2, 3)):
        _write_clip(root / f"count{i}.mp4", _count_clip(count))
        records.append(
            {
                "video": f"count{i}.mp4",
                "question": "How many white dots are there?",
                "options": ["1", "2", "3", "4"],
                "answer": str(count),
                "task": "count",
                "duration": 1.0,
            }
        )
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    records.append(
        {
            "id": "corrupt",
            "video": "corrupt.mp4",
            "question": "What colour is the square?",
            "options": list(COLOURS),
            "answer": "A",
            "task": "colour",
            "duration": 1.0,
        }
    )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def qa() -> VideoQA:
    return VideoQA.tiny()


class _Counting:
    """A VideoQA that counts what it is asked to do."""

    def __init__(self, qa: VideoQA):
        self.qa, self.prepared, self.generated = qa, 0, []

    def __getattr__(self, name: str):
        return getattr(self.qa, name)

    def prepare(self, *args, **kwargs):
        self.prepared += 1
        return self.qa.prepare(*args, **kwargs)

    def generate(self, prepared, selection, **kwargs):
        self.generated.append("full" if selection is None else selection.method)
        return self.qa.generate(prepared, selection, **kwargs)


def _settings(bench: Path, out: Path, **overrides) -> EvalSettings:
    options = {"model": "tiny", "methods": METHODS, "frames": 4, "max_new_tokens": 3, "resamples": 500, "png": False}
    return EvalSettings(data=str(bench), out=str(out), **{**options, **overrides})


def _loader(qa):
    return lambda settings, rank: qa


def _no_model(settings, rank):
    raise AssertionError("the model was loaded although every pass was done")


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _scores(summary: dict) -> dict:
    """The summary without costs and the plot: what two runs of the same items must share."""
    keep = ("items", "items_total", "items_with_errors", "items_missing", "errors", "per_task", "per_duration")
    strip = lambda entry: {k: v for k, v in entry.items() if k != "costs"}  # noqa: E731
    return {
        **{k: summary[k] for k in keep},
        "full": strip(summary["full"]),
        "methods": {n: strip(e) for n, e in summary["methods"].items()},
    }


@pytest.fixture(scope="module")
def first_run(bench: Path, qa, tmp_path_factory) -> tuple[Path, dict, _Counting]:
    out = tmp_path_factory.mktemp("run") / "eval"
    counting = _Counting(qa)
    summary = run(_settings(bench, out, png=True), model_loader=_loader(counting))
    return out, summary, counting


def test_run_writes_results_summary_table_and_plot(first_run):
    out, summary, counting = first_run
    records = _lines(out)
    assert len(records) == 7 * len(PASSES)
    assert [r["pass"] for r in records[:3]] == PASSES  # item order, then pass order
    answered = [r for r in records if r["error"] is None]
    assert all(r["reply"] is not None and r["correct"] == (r["pred"] == r["answer"]) for r in answered)
    assert all(r["metrics"]["prefill_ms"] > 0 and r["metrics"]["peak_memory_mb"] > 0 for r in answered)
    assert counting.prepared == 6 and len(counting.generated) == 6 * len(PASSES)  # one vision pass per video read

    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["items"] == 6 and set(saved["methods"]) == set(METHODS)
    assert {"accuracy", "retention", "ci", "delta_vcast", "ci_vcast"} <= set(saved["methods"]["evs"])
    for entry in saved["methods"].values():
        assert entry["ci"][0] <= entry["delta_full"] <= entry["ci"][1]
        assert entry["costs"]["median_visual_tokens_kept"] < saved["full"]["costs"]["median_visual_tokens_kept"]
    assert 0.0 <= saved["full"]["accuracy"] <= 100.0
    assert set(saved["per_task"]) == {"colour", "count"}
    assert saved["full"]["costs"]["median_ttft_ms"] > 0 and saved["full"]["costs"]["median_total_ms"] > 0
    assert saved["time"]["mean_seconds_per_item"] > 0 and "h per 100 items" in (out / "summary.md").read_text()

    table = (out / "summary.md").read_text()
    assert "| unpruned |" in table and "| vcast |" in table and "| count | 3 |" in table
    assert (out / "summary.html").stat().st_size > 10_000
    plot = saved["plot"]
    assert plot["html"] == "summary.html"
    assert (plot["png"] == "summary.png" and (out / "summary.png").exists()) or plot["png_skipped"]
    assert len((out / "items.jsonl").read_text().splitlines()) == 7


def test_corrupt_video_is_recorded_and_the_rest_is_scored(first_run):
    out, summary, _ = first_run
    corrupt = [r for r in _lines(out) if r["id"] == "corrupt"]
    assert [r["pass"] for r in corrupt] == PASSES
    assert all(r["error"].startswith("VideoError") and r["reply"] is None for r in corrupt)
    assert summary["items_with_errors"] == 1 and "corrupt" in summary["errors"]
    assert summary["error_kinds"] == {"VideoError": 1}
    assert summary["items"] == 6


def test_rerun_skips_everything_without_loading_the_model(first_run, bench: Path):
    out, summary, _ = first_run
    before = (out / "results.jsonl").read_text()
    again = run(_settings(bench, out, png=False), model_loader=_no_model)
    assert (out / "results.jsonl").read_text() == before
    assert _scores(again) == _scores(summary)


def test_interrupted_run_resumes_to_the_same_results_and_summary(first_run, bench: Path, qa, tmp_path: Path):
    out = tmp_path / "eval"
    assert run(_settings(bench, out, stop_after=2), model_loader=_loader(qa)) is None  # "killed" after 2 items
    assert len(_lines(out)) == 2 * len(PASSES) and not (out / "summary.json").exists()
    with open(out / "results.jsonl", "a") as f:  # and killed again in the middle of writing a line
        f.write('{"id": "count0", "pass": "ful')
    counting = _Counting(qa)
    summary = run(_settings(bench, out), model_loader=_loader(counting))
    assert counting.prepared == 4  # only the 5 items not done, of which the corrupt one is not prepared
    assert _without_timing(_lines(out)) == _without_timing(_lines(first_run[0]))
    assert _scores(summary) == _scores(first_run[1])


def test_a_pass_lost_in_a_crash_is_redone_alone(first_run, bench: Path, qa, tmp_path: Path):
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("results.jsonl", "run.json"):
        (out / name).write_bytes((first_run[0] / name).read_bytes())
    records = _lines(out)
    lost = next(r for r in records if r["pass"] == "evs" and r["error"] is None)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r is not lost))
    counting = _Counting(qa)
    run(_settings(bench, out), model_loader=_loader(counting))
    assert (counting.prepared, counting.generated) == (1, ["evs"])
    assert _without_timing(_lines(out)) == _without_timing(_lines(first_run[0]))


def test_retry_errors_redoes_failed_items_once_the_video_is_fixed(first_run, bench: Path, qa, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    manifest = [json.loads(line) for line in (bench / "manifest.jsonl").read_text().splitlines()]
    for record in manifest:
        (data / record["video"]).write_bytes((bench / record["video"]).read_bytes())
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    out = tmp_path / "eval"
    assert run(_settings(data, out), model_loader=_loader(qa))["items_with_errors"] == 1
    _write_clip(data / "corrupt.mp4", _colour_clip("red"))  # re-downloaded
    assert run(_settings(data, out), model_loader=_no_model)["items_with_errors"] == 1  # errors count as done
    summary = run(_settings(data, out, retry_errors=True), model_loader=_loader(qa))
    assert (summary["items"], summary["items_with_errors"]) == (7, 0)
    assert len(_lines(out)) == 7 * len(PASSES)


def test_a_folder_of_other_settings_is_refused(first_run, bench: Path):
    with pytest.raises(EvalError, match="frames 4 -> 6"):
        run(_settings(bench, first_run[0], frames=6), model_loader=_no_model)


def test_settings_fail_before_any_model_loads(bench: Path, tmp_path: Path):
    with pytest.raises(EvalError, match="unknown method"):
        _settings(bench, tmp_path, methods=("vcast", "nope"))
    with pytest.raises(EvalError, match=r"first_2x2 at --retain 0\.5"):
        run(_settings(bench, tmp_path, methods=("first_2x2",), retain=0.5), model_loader=_no_model)
    with pytest.raises(EvalError, match="even"):
        _settings(bench, tmp_path, frames=5)


def test_cli_scores_a_stratified_subset_and_prints_the_table(bench: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval"
    argv = [
        "--data",
        str(bench / "manifest.jsonl"),
        "--model",
        "tiny",
        "--methods",
        "vcast",
        "--frames",
        "4",
        "--max-new-tokens",
        "2",
        "--subset",
        "4",
        "--seed",
        "1",
        "--resamples",
        "200",
        "--no-png",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| unpruned |" in printed and "| vcast |" in printed
    chosen = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(chosen) == 4 and {r["task"] for r in chosen} == {"colour", "count"}
    assert json.loads((out / "summary.json").read_text())["items_total"] == 4
    # The saved subset is a manifest: scoring it again runs nothing new.
    rerun = [
        "--data",
        str(out / "items.jsonl"),
        "--model",
        "tiny",
        "--methods",
        "vcast",
        "--frames",
        "4",
        "--max-new-tokens",
        "2",
        "--resamples",
        "200",
        "--no-png",
        "--out",
        str(out),
    ]
    assert main(rerun) == 0
    assert main(["--data", str(tmp_path / "missing.jsonl"), "--out", str(out), "--model", "tiny"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_two_gloo_processes_give_the_results_of_one(first_run, bench: Path, tmp_path: Path):
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vcast.eval",
        "--data",
        str(bench),
        "--model",
        "tiny",
        "--methods",
        ",".join(METHODS),
        "--frames",
        "4",
        "--max-new-tokens",
        "3",
        "--resamples",
        "500",
        "--no-png",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("results*.jsonl")) == ["results.jsonl"]  # rank files merged
    records = _lines(out)
    assert {r["rank"] for r in records} == {0, 1}  # both ranks worked
    assert _without_timing(records) == _without_timing(_lines(first_run[0]))
    assert _scores(json.loads((out / "summary.json").read_text())) == _scores(json.loads(json.dumps(first_run[1])))
