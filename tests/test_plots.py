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
from viz.export import SelectionRecord, group_times
from viz.plots import (
    BUDGET_TRACE,
    CURVATURE_TRACE,
    AllocationRecord,
    allocation_figure,
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


def test_cost_bars_hold_the_metric_values_and_titles_the_ratios():
    fig = cost_figure(PRUNED, UNPRUNED)
    assert [t.y[0] for t in _bars(fig, "V-CAST")] == list(PRUNED.values())
    assert [t.y[0] for t in _bars(fig, "unpruned")] == list(UNPRUNED.values())
    titles = [a.text for a in fig.layout.annotations]
    assert "0.25×" in titles[0] and "−75%" in titles[0]
    assert "0.30×" in titles[1] and "0.90×" in titles[3]
    assert "(ms)" in titles[1] and "(MB)" in titles[3]


def test_cost_figure_without_an_unpruned_run_shows_pruned_bars_and_says_why():
    fig = cost_figure(PRUNED, None)
    assert not _bars(fig, "unpruned")
    assert len(_bars(fig, "V-CAST")) == 4
    assert "no unpruned run" in fig.layout.title.subtitle.text
    assert not any("×" in a.text for a in fig.layout.annotations)


def test_missing_metric_is_written_na_not_drawn_as_zero():
    fig = cost_figure({**PRUNED, "peak_memory_mb": None}, UNPRUNED)
    pruned_memory = _bars(fig, "V-CAST")[3]
    assert pruned_memory.text[0] == "n/a"
    assert "ratio n/a" in fig.layout.annotations[3].text


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

    fig = cost_figure(
        PassMetrics(440, 120.0, 150.0, 900.0, "process_rss"), PassMetrics(1760, 400, 450, 1000, "process_rss")
    )
    assert [t.y[0] for t in _bars(fig, "V-CAST")] == [440, 120.0, 150.0, 900.0]
    assert "peak process memory (RSS)" in fig.layout.annotations[3].text
