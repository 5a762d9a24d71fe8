"""The selection JSON: what it holds, and that it round-trips exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vcast
from viz.export import (
    SelectionRecord,
    group_times,
    load_selection_json,
    save_selection_json,
    selection_from_json,
    selection_to_dict,
    selection_to_json,
)

GRID_HW = (3, 4)


def _record(num_groups: int = 6, seed: int = 0) -> SelectionRecord:
    features = torch.randn(num_groups, GRID_HW[0] * GRID_HW[1], 16, generator=torch.Generator().manual_seed(seed))
    config = vcast.VCastConfig(retain_ratio=0.3)
    selection = vcast.select_tokens(features, config)
    times = group_times(np.arange(2 * num_groups) * 0.5)
    return SelectionRecord.from_selection(selection, times_s=times, grid_hw=GRID_HW, config=config)


def _assert_same(a: SelectionRecord, b: SelectionRecord) -> None:
    for name in ("times_s", "curvature", "weights", "budgets", "keep_mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.config == b.config
    assert a.frames_per_group == b.frames_per_group


def test_json_file_round_trips_exactly(tmp_path):
    record = _record()
    loaded = load_selection_json(save_selection_json(record, tmp_path / "selection.json"))
    _assert_same(record, loaded)
    assert loaded.scores is None  # scores are for drawing, not part of the file


def test_record_from_selection_matches_the_selection():
    features = torch.randn(5, 12, 8, generator=torch.Generator().manual_seed(1))
    selection = vcast.select_tokens(features, retain_ratio=0.4)
    record = SelectionRecord.from_selection(selection, times_s=np.arange(5.0), grid_hw=GRID_HW)
    np.testing.assert_array_equal(record.keep_mask.reshape(5, -1), selection.keep_mask.numpy())
    np.testing.assert_array_equal(record.budgets, selection.budgets.numpy())
    np.testing.assert_array_equal(record.curvature, selection.curvature.numpy())
    np.testing.assert_array_equal(record.scores.reshape(5, -1), selection.scores.numpy())


def test_json_lists_time_curvature_weight_budget_and_kept_cells_per_group():
    record = _record()
    data = json.loads(selection_to_json(record))
    assert data["grid"] == {"rows": 3, "cols": 4}
    assert data["total_kept"] == int(record.budgets.sum())
    assert data["config"]["retain_ratio"] == 0.3
    assert len(data["groups"]) == record.keep_mask.shape[0]
    for t, group in enumerate(data["groups"]):
        assert group["time_s"] == record.times_s[t]
        assert np.float32(group["curvature"]) == record.curvature[t]
        assert np.float32(group["weight"]) == record.weights[t]
        assert group["budget"] == len(group["kept_cells"]) == record.budgets[t]
        for row, col in group["kept_cells"]:
            assert record.keep_mask[t, row, col]


@settings(max_examples=40, deadline=None)
@given(
    masks=st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=7),
    floats=st.lists(st.floats(0, 2, width=32), min_size=7, max_size=7),
)
def test_any_selection_round_trips_through_json(masks, floats):
    keep_mask = np.array(masks).reshape(-1, 2, 3)
    num_groups = keep_mask.shape[0]
    record = SelectionRecord(
        times_s=np.arange(num_groups) * 1.0 / 3.0,  # not exactly representable in decimal
        curvature=floats[:num_groups],
        weights=np.full(num_groups, 1.0 / num_groups),
        budgets=keep_mask.sum(axis=(1, 2)),
        keep_mask=keep_mask,
        config={"allocation": "curvature", "temperature": 0.7},
    )
    _assert_same(record, selection_from_json(selection_to_json(record)))


def test_group_times_are_the_mean_of_each_pair_and_pad_an_odd_last_frame():
    np.testing.assert_allclose(group_times([0.0, 0.5, 1.0, 1.5]), [0.25, 1.25])
    np.testing.assert_allclose(group_times([0.0, 0.5, 1.0]), [0.25, 1.0])


def test_record_rejects_budgets_that_disagree_with_the_mask():
    with pytest.raises(ValueError, match="budgets must equal"):
        SelectionRecord(times_s=[0.0], curvature=[1.0], weights=[1.0], budgets=[2], keep_mask=np.ones((1, 1, 3), bool))


def test_from_selection_rejects_a_grid_that_does_not_match_n():
    selection = vcast.select_tokens(torch.randn(2, 12, 4))
    with pytest.raises(ValueError, match="rows\\*cols == N"):
        SelectionRecord.from_selection(selection, times_s=[0.0, 1.0], grid_hw=(5, 5))


def test_loader_rejects_other_json():
    with pytest.raises(ValueError, match="not a V-CAST selection"):
        selection_from_json('{"groups": []}')


def test_dict_form_is_plain_json_types():
    data = selection_to_dict(_record())
    assert json.loads(json.dumps(data)) == data
