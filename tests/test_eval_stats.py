"""Bootstrap intervals with known answers, stratified subsets, and the summary built from result records."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcast.eval.manifest import Item
from vcast.eval.report import build_summary, summary_markdown
from vcast.eval.stats import bootstrap_accuracies, pass_statistics, percentile_interval
from vcast.eval.subset import allocate, stratified_subset


def _clusters(n: int) -> list[str]:
    return [f"v{i}" for i in range(n)]


def test_identical_passes_have_a_difference_interval_of_exactly_zero():
    rng = np.random.default_rng(1)
    scores = rng.random(200) < 0.6
    stats = pass_statistics(np.stack([scores, scores], axis=1), _clusters(200), ["full", "vcast"], resamples=2000)
    assert stats["vcast"]["ci"] == (0.0, 0.0)
    assert stats["vcast"]["delta_full"] == 0.0
    assert stats["vcast"]["retention"] == 1.0 and stats["vcast"]["retention_ci"] == (1.0, 1.0)


def test_a_pass_right_wherever_the_other_is_wrong_has_an_interval_excluding_zero():
    right = np.arange(100) % 2 == 0  # half right
    stats = pass_statistics(np.stack([right, ~right], axis=1), _clusters(100), ["full", "evs"], resamples=2000)
    low, high = stats["evs"]["ci"]
    assert stats["evs"]["delta_full"] == 0.0  # same accuracy, yet ...
    assert low < 0 < high  # ... a difference of 0 is inside: this is the control case
    always = np.ones(100, bool)
    stats = pass_statistics(np.stack([~always, always], axis=1), _clusters(100), ["full", "vcast"], resamples=2000)
    assert stats["vcast"]["ci"] == (1.0, 1.0)  # right on every item the other gets wrong: excludes 0


def test_one_method_better_on_a_few_items_is_separated_by_pairing():
    rng = np.random.default_rng(2)
    full = rng.random(1000) < 0.5
    better = full.copy()
    flips = np.flatnonzero(~full)[:30]  # right on 30 more items, the same on all others
    better[flips] = True
    stats = pass_statistics(np.stack([full, better], axis=1), _clusters(1000), ["full", "vcast"], resamples=4000)
    low, high = stats["vcast"]["ci"]
    assert 0.0 < low <= 0.03 <= high
    # Unpaired, the two accuracy intervals overlap widely: pairing is what separates them.
    assert stats["vcast"]["accuracy_ci"][0] < stats["full"]["accuracy_ci"][1]


def test_interval_width_matches_the_binomial_standard_error():
    rng = np.random.default_rng(3)
    scores = (rng.random(400) < 0.5)[:, None]
    p = scores.mean()
    low, high = percentile_interval(bootstrap_accuracies(scores, _clusters(400), resamples=10_000)[:, 0])
    half_width = 1.96 * math.sqrt(p * (1 - p) / 400)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.12)
    assert low < p < high


def test_questions_of_one_video_are_resampled_together():
    rng = np.random.default_rng(4)
    per_video = rng.random((150, 1)) < 0.7
    alone = bootstrap_accuracies(per_video, _clusters(150), resamples=3000, seed=5)
    # Three identical answers per video: the same draws of videos, hence exactly the same accuracies.
    tripled = bootstrap_accuracies(
        np.repeat(per_video, 3, axis=0), np.repeat(_clusters(150), 3), resamples=3000, seed=5
    )
    np.testing.assert_allclose(tripled, alone)


def test_bootstrap_is_deterministic_for_a_seed():
    scores = np.random.default_rng(6).random((50, 2)) < 0.5
    a = bootstrap_accuracies(scores, _clusters(50), resamples=500, seed=7)
    assert np.array_equal(a, bootstrap_accuracies(scores, _clusters(50), resamples=500, seed=7))
    assert not np.array_equal(a, bootstrap_accuracies(scores, _clusters(50), resamples=500, seed=8))


def test_retention_interval_is_undefined_when_the_reference_never_scores():
    scores = np.zeros((10, 2), bool)
    stats = pass_statistics(scores, _clusters(10), ["full", "vcast"], resamples=200)
    assert math.isnan(stats["vcast"]["retention"])
    assert all(math.isnan(v) for v in stats["vcast"]["retention_ci"])


def _item(i: int, task: str, duration: float | str | None = None) -> Item:
    return Item(
        id=f"i{i:03d}", video=f"/v/{i}.mp4", question="q", options=("a", "b"), answer="A", task=task, duration=duration
    )


def test_allocate_gives_every_stratum_one_then_shares_in_proportion():
    counts = allocate({("a", ""): 50, ("b", ""): 30, ("c", ""): 2}, 10)
    assert sum(counts.values()) == 10
    assert counts[("c", "")] == 1
    assert counts[("a", "")] > counts[("b", "")]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.integers(1, 200))
def test_allocate_never_exceeds_a_stratum_and_sums_to_n(sizes: list[int], n: int):
    strata = {(f"t{i}", ""): size for i, size in enumerate(sizes)}
    counts = allocate(strata, n)
    assert sum(counts.values()) == min(n, sum(sizes))
    assert all(0 <= counts[k] <= strata[k] for k in strata)


def test_stratified_subset_is_seeded_order_free_and_covers_every_task_and_duration():
    cells = [(t, d) for t in ("count", "colour", "ocr") for d in ("short", "medium", "long") for _ in range(7)]
    items = [_item(i, task, duration) for i, (task, duration) in enumerate(cells)]
    subset = stratified_subset(items, 18, seed=3)
    assert len(subset) == 18
    assert {(it.task, it.duration_class) for it in subset} == {(it.task, it.duration_class) for it in items}
    assert subset == stratified_subset(items, 18, seed=3)
    assert {it.id for it in subset} == {it.id for it in stratified_subset(items[::-1], 18, seed=3)}
    assert {it.id for it in subset} != {it.id for it in stratified_subset(items, 18, seed=4)}
    assert [items.index(it) for it in subset] == sorted(items.index(it) for it in subset)  # manifest order
    assert stratified_subset(items, 1000, seed=0) == items


def test_duration_in_seconds_goes_to_the_nearest_video_mme_class():
    assert [_item(0, "t", s).duration_class for s in (30.0, 179.0, 600.0, 1349.0, 3000.0)] == [
        "short",
        "short",
        "medium",
        "medium",
        "long",
    ]
    assert _item(0, "t", "long").duration_class == "long"
    assert _item(0, "t", None).duration_class == ""


def _records(item: Item, replies: dict[str, bool | str], ms: float = 10.0) -> list[dict]:
    """One record per pass: True/False = right/wrong, a string = that pass's error."""
    out = []
    for name, outcome in replies.items():
        error = outcome if isinstance(outcome, str) else None
        metrics = {} if error else {"prefill_ms": ms, "total_ms": 2 * ms}
        correct, pred = (None, None) if error else (outcome, "A")
        out.append({"id": item.id, "pass": name, "error": error, "correct": correct, "pred": pred, "metrics": metrics})
    return out


def test_summary_scores_only_items_every_pass_answered():
    items = [_item(i, "colour" if i < 6 else "count", 10.0) for i in range(10)]
    records = []
    for i, item in enumerate(items[:8]):  # items 8 and 9 have no results yet
        full_right, vcast_right = i < 4, i < 3
        records += _records(item, {"full": full_right, "vcast": vcast_right}, ms=float(i))
    records += _records(items[7], {"full": True, "vcast": "ModelError: out of memory"})  # replaces item 7's vcast
    summary = build_summary(items, records, ["full", "vcast"], {"model": "m", "frames": 4}, resamples=300)
    assert (summary["items"], summary["items_with_errors"], summary["items_missing"]) == (7, 1, 2)
    assert summary["errors"] == {"i007": "ModelError: out of memory"}
    assert summary["error_kinds"] == {"ModelError": 1}
    assert summary["time"]["mean_seconds_per_item"] is None  # these records carry no wall times
    assert summary["full"]["accuracy"] == pytest.approx(400 / 7, abs=1e-3)
    vcast = summary["methods"]["vcast"]
    assert vcast["accuracy"] == pytest.approx(300 / 7, abs=1e-3)
    assert vcast["retention"] == pytest.approx(75.0)
    assert vcast["delta_full"] == pytest.approx(-100 / 7, abs=1e-3)
    assert vcast["per_task"] == {"colour": pytest.approx(50.0), "count": 0.0}
    assert vcast["costs"]["median_prefill_ms"] == 3.0 and vcast["costs"]["median_total_ms"] == 6.0
    table = summary_markdown(summary)
    assert "| vcast | 42.9 [" in table and "| colour | 6 |" in table
