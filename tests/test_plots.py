"""The figures show the selection's own numbers: bars, lines, hover data, thumbnails, ratios."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vcast
from viz import SelectionView
from viz.export import SelectionRecord, as_numpy, group_times
from viz.plots import (
    BUDGET_TRACE,
    COUNT_METRICS,
    CURVATURE_TRACE,
    AllocationRecord,
    allocation_figure,
    budget_trace_name,
    comparison_trace_name,
    cost_figure,
    cost_ratio,
)

GRID_HW = (4, 6)
NUM_GROUPS = 8


@pytest.fixture(scope="module")
def selections() -> dict[str, vcast.Selection]:
    # A trajectory with a sharp turn halfway, so budgets are uneven, as in a real clip with a cut.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 32, generator=g)
    turn = torch.zeros(NUM_GROUPS, 1, 32)
    turn[NUM_GROUPS // 2 :, :, :8] = 3.0
    features = base + turn + 0.3 * torch.randn(NUM_GROUPS, GRID_HW[0] * GRID_HW[1], 32, generator=g)
    config = vcast.VCastConfig(retain_ratio=0.25)
    return {a: vcast.select_tokens(features, config, allocation=a) for a in ("curvature", "uniform", "uniqueness")}


@pytest.fixture(scope="module")
def record(selections) -> AllocationRecord:
    frame_times = np.arange(2 * NUM_GROUPS) * 0.5
    selection_record = SelectionRecord.from_selection(
        selections["curvature"], times_s=group_times(frame_times), grid_hw=GRID_HW
    )
    thumbnails = np.random.default_rng(0).integers(0, 256, (NUM_GROUPS, 36, 64, 3), dtype=np.uint8)
    others = {"uniform": selections["uniform"], "uniqueness": selections["uniqueness"]}
    return AllocationRecord.from_record(selection_record, comparisons=others, thumbnails=thumbnails)


def _trace(fig, name):
    (trace,) = [t for t in fig.data if t.name == name]
    return trace


def test_budget_bars_equal_the_selection_budgets_one_bar_per_group(record, selections):
    bars = _trace(allocation_figure(record), BUDGET_TRACE)
    assert bars.type == "bar"
    assert len(bars.y) == len(bars.x) == NUM_GROUPS
    np.testing.assert_array_equal(np.asarray(bars.y), selections["curvature"].budgets.numpy())
    np.testing.assert_array_equal(np.asarray(bars.x), record.times_s)


def test_curvature_line_equals_the_selection_curvature_on_the_second_axis(record, selections):
    line = _trace(allocation_figure(record), CURVATURE_TRACE)
    np.testing.assert_array_equal(np.asarray(line.y, dtype=np.float32), selections["curvature"].curvature.numpy())
    assert line.yaxis == "y2"


def test_comparison_lines_equal_the_other_allocations(record, selections):
    fig = allocation_figure(record)
    for name in ("uniform", "uniqueness"):
        line = _trace(fig, comparison_trace_name(name))
        np.testing.assert_array_equal(np.asarray(line.y), selections[name].budgets.numpy())
        assert sum(line.y) == sum(np.asarray(_trace(fig, BUDGET_TRACE).y))  # same total, another split


def test_hover_carries_curvature_and_kept_share_of_each_group(record):
    bars = _trace(allocation_figure(record), BUDGET_TRACE)
    custom = np.asarray(bars.customdata)
    np.testing.assert_allclose(custom[:, 0], record.curvature)
    np.testing.assert_allclose(custom[:, 1], record.budgets / (GRID_HW[0] * GRID_HW[1]))
    for word in ("curvature", "keeps", "of 24 tokens"):
        assert word in bars.hovertemplate
    assert allocation_figure(record).layout.hovermode == "x unified"  # the header shows the time


def test_each_group_has_a_thumbnail_at_its_time(record):
    images = allocation_figure(record).layout.images
    assert len(images) == NUM_GROUPS
    np.testing.assert_allclose([im.x for im in images], record.times_s)
    assert all(im.source.startswith("data:image/png;base64,") and im.xref == "x" for im in images)


def test_many_groups_get_an_evenly_spread_subset_of_thumbnails():
    n = 40
    thumbs = np.zeros((n, 8, 8, 3), np.uint8)
    record = AllocationRecord(
        times_s=np.arange(n), curvature=np.ones(n), budgets=np.ones(n, int), tokens_per_group=4, thumbnails=thumbs
    )
    images = allocation_figure(record, max_thumbnails=10).layout.images
    assert len(images) == 10
    assert images[0].x == 0 and images[-1].x == n - 1


def test_figure_reads_on_light_and_dark_pages_and_titles_axes_with_units(record):
    layout = allocation_figure(record).layout
    assert layout.paper_bgcolor == layout.plot_bgcolor == "rgba(0,0,0,0)"
    assert "(s)" in layout.xaxis.title.text
    assert "tokens" in layout.yaxis.title.text
    assert "curvature" in layout.yaxis2.title.text


def test_figure_without_thumbnails_or_comparisons_serialises():
    record = AllocationRecord(times_s=[0.5], curvature=[1.0], budgets=[3], tokens_per_group=4)
    fig = allocation_figure(record)
    assert len(fig.layout.images) == 0
    assert fig.to_json()


def test_allocation_record_rejects_a_length_mismatch():
    with pytest.raises(ValueError, match="curvature must have one value per group"):
        AllocationRecord(times_s=[0.0, 1.0], curvature=[1.0], budgets=[1, 1], tokens_per_group=4)


PRUNED = {"visual_tokens_kept": 440, "prefill_ms": 120.0, "ttft_ms": 150.0, "peak_memory_mb": 9000.0}
UNPRUNED = {"visual_tokens_kept": 1760, "prefill_ms": 400.0, "ttft_ms": 450.0, "peak_memory_mb": 10000.0}


def _bars(fig, name):
    return [t for t in fig.data if t.name == name]


def test_cost_bars_hold_every_runs_values_and_write_the_ratio_to_unpruned():
    fig = cost_figure({"V-CAST": PRUNED, "EVS": {**PRUNED, "prefill_ms": 200.0}, "unpruned": UNPRUNED})
    assert [t.x[0] for t in _bars(fig, "V-CAST")] == list(PRUNED.values())
    assert [t.x[0] for t in _bars(fig, "unpruned")] == list(UNPRUNED.values())
    assert _bars(fig, "V-CAST")[0].text[0] == "440 · <b>0.25×</b>"
    assert _bars(fig, "EVS")[1].text[0] == "200 ms · <b>0.50×</b>"
    assert "×" not in _bars(fig, "unpruned")[0].text[0]  # the baseline is not divided by itself
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["visual tokens to the LLM", "prefill (ms)", "time to first token (ms)", "peak memory (MB)"]


def test_cost_panels_stack_in_one_column_so_a_phone_shows_them_all():
    fig = cost_figure({"V-CAST": PRUNED, "unpruned": UNPRUNED})
    domains = [fig.layout[f"xaxis{i or ''}"].domain for i in ("", 2, 3, 4)]
    assert all(tuple(d) == (0.0, 1.0) for d in domains)  # every panel spans the full width
    assert all(t.orientation == "h" for t in fig.data)
    assert all(a.xanchor == "left" and a.x == 0 for a in fig.layout.annotations)  # titles never cut at the edges


def test_cost_figure_without_an_unpruned_run_shows_values_without_ratios_and_says_why():
    fig = cost_figure({"V-CAST": PRUNED})
    assert len(_bars(fig, "V-CAST")) == 4 and not _bars(fig, "unpruned")
    assert not any("×" in t.text[0] for t in fig.data)
    assert any("no unpruned run" in a.text for a in fig.layout.annotations)


def test_counting_panels_leave_timings_out():
    fig = cost_figure({"V-CAST": {**PRUNED, "sequence_length": 500}, "unpruned": {**UNPRUNED, "sequence_length": 1800}},
                      metrics=COUNT_METRICS)  # fmt: skip
    titles = {a.text for a in fig.layout.annotations}
    assert titles == {"visual tokens to the LLM", "sequence length", "peak memory (MB)"}


def test_missing_metric_is_written_na_not_drawn_as_zero():
    fig = cost_figure({"V-CAST": {**PRUNED, "peak_memory_mb": None}, "unpruned": UNPRUNED})
    assert _bars(fig, "V-CAST")[3].text[0] == "n/a"


def test_cost_ratio_is_pruned_over_unpruned_or_none():
    assert cost_ratio(1.0, 4.0) == 0.25
    assert cost_ratio(None, 4.0) is None and cost_ratio(1.0, 0.0) is None


def test_viz_imports_neither_torch_nor_gradio():
    code = "import sys, viz; bad = {'torch', 'gradio'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_cost_figure_takes_metrics_dataclasses_and_names_the_memory_kind():
    @dataclasses.dataclass(frozen=True)
    class PassMetrics:  # the fields of vcast.pipeline.PassMetrics that the figure reads
        visual_tokens_kept: int
        prefill_ms: float
        ttft_ms: float
        peak_memory_mb: float
        memory_kind: str

    fig = cost_figure({"V-CAST": PassMetrics(440, 120.0, 150.0, 900.0, "process_rss"),
                       "unpruned": PassMetrics(1760, 400, 450, 1000, "process_rss")})  # fmt: skip
    assert [t.x[0] for t in _bars(fig, "V-CAST")] == [440, 120.0, 150.0, 900.0]
    assert fig.layout.annotations[3].text == "peak process memory, RSS (MB)"


def test_the_bars_can_be_another_methods_with_every_method_as_a_line(record, selections):
    fig = allocation_figure(AllocationRecord.from_record(record, comparisons={"V-CAST": selections["uniform"]},
                                                         label="EVS (vLLM)"))  # fmt: skip
    np.testing.assert_array_equal(_trace(fig, budget_trace_name("EVS (vLLM)")).y, record.budgets)
    uniform = as_numpy(selections["uniform"].budgets)
    np.testing.assert_array_equal(_trace(fig, comparison_trace_name("V-CAST")).y, uniform)


def _answer(methods: tuple[str, ...]):
    """A stand-in for a vcast.QAResult: 8 frames in 4 groups of a 4 x 6 grid, each method's selection."""
    import types

    features = torch.randn(4, 24, 16, generator=torch.Generator().manual_seed(1))
    selections = {m: vcast.prune(features, method=m, retain_ratio=0.25, grid_hw=(4, 6)) for m in methods}
    config = vcast.VCastConfig()
    clip = types.SimpleNamespace(frames=np.zeros((8, 720, 1280, 3), np.uint8), timestamps=np.arange(8) * 0.5)
    allocations = {"curvature": [1, 2, 2, 1], "uniform": [2, 2, 1, 1], "uniqueness": [3, 1, 1, 1]}
    return types.SimpleNamespace(clip=clip, selections=selections, allocations=allocations, config=config,
                                 grid=(4, 4, 6), group_times=[0.25, 1.25, 2.25, 3.25], frames_per_group=2)  # fmt: skip


def test_a_selection_view_draws_each_method_and_compares_v_cast_alone_with_the_other_allocations():
    alone = SelectionView.of(_answer(("vcast",)), {"vcast": "V-CAST"})
    assert alone.frames.shape == (8, 360, 640, 3)  # display size
    assert {t.name for t in alone.allocation().data} >= {BUDGET_TRACE, "uniform budget", "uniqueness budget"}
    both = SelectionView.of(_answer(("evs", "vcast")), {"vcast": "V-CAST", "evs": "EVS"})
    traces = {t.name: np.asarray(t.y) for t in both.allocation().data}
    assert both.main == "vcast" and "uniform budget" not in traces
    np.testing.assert_array_equal(traces["EVS budget"], both.records["evs"].budgets)
    assert len(both.gallery("evs")) == 8 and both.sheet("evs", heatmap=True).dtype == np.uint8
