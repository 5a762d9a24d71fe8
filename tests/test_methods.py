"""Properties of every selection method behind `vcast.prune`, and of `merge_features`.

The baselines are checked against direct, loop-based transcriptions of their reference rules
(vLLM's EVS, the official VidCom2 code) and against small cases worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vcast import METHODS, Selection, VCastConfig, prune, select_tokens, total_budget
from vcast.core import video_curvature
from vcast.methods import merge_features

_SPATIAL = ("first_2x2", "random_2x2", "avgpool_2x2")


def _features(T: int, N: int, D: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, D, generator=g, dtype=torch.float64).to(dtype)


def _window_ids(h: int, w: int) -> torch.Tensor:
    """(N,) the 2x2 window of each token of a row-major h x w grid (border windows cut short)."""
    return ((torch.arange(h) // 2)[:, None] * ((w + 1) // 2) + (torch.arange(w) // 2)[None, :]).reshape(-1)


def _assert_consistent(sel: Selection, T: int, N: int) -> None:
    keep = sel.keep
    assert keep.dtype == torch.int64 and keep.dim() == 1
    assert bool((keep[1:] > keep[:-1]).all())  # strictly ascending, hence unique
    if keep.numel():
        assert int(keep.min()) >= 0 and int(keep.max()) < T * N
    assert sel.keep_mask.shape == (T, N) and sel.keep_mask.dtype == torch.bool
    assert torch.equal(sel.keep_mask.flatten().nonzero().squeeze(1), keep)
    assert sel.budgets.dtype == torch.int64 and sel.budgets.shape == (T,)
    assert torch.equal(torch.bincount(keep // N, minlength=T), sel.budgets)
    assert int(sel.budgets.sum()) == keep.numel()
    assert sel.curvature.shape == (T,) and sel.curvature.dtype == torch.float32
    assert sel.weights.shape == (T,) and sel.weights.dtype == torch.float32
    assert float(sel.weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert sel.scores.shape == (T, N) and sel.scores.dtype == torch.float32


# --- every method ------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(
    method=st.sampled_from(sorted(METHODS)),
    T=st.integers(1, 7),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
)
def test_every_method_keeps_ascending_unique_indices_matching_mask_and_budgets(method, T, h, w, ratio, seed):
    N = h * w
    x = _features(T, N, 8, seed)
    ratio = 0.25 if method in _SPATIAL else ratio
    sel = prune(x, method, ratio, grid_hw=(h, w))
    _assert_consistent(sel, T, N)
    assert sel.method == method
    assert (sel.assign is not None) == (method == "avgpool_2x2")
    # The curvature is always the video's, whatever selected: every method plots against the same curve.
    assert torch.equal(sel.curvature, video_curvature(x))
    assert torch.equal(sel.curvature, select_tokens(x).curvature)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_every_method_takes_any_float_dtype_and_returns_float32_records(method, dtype):
    sel = prune(_features(5, 16, 12, seed=4, dtype=dtype), method, grid_hw=(4, 4))
    _assert_consistent(sel, 5, 16)
    merged = merge_features(_features(5, 16, 12, seed=4, dtype=dtype), sel)
    assert merged.dtype == dtype and merged.shape == (sel.keep.numel(), 12)


def test_methods_describe_themselves_in_one_line():
    assert set(METHODS) == {
        "vcast",
        "uniform",
        "uniqueness",
        "first_2x2",
        "random_2x2",
        "avgpool_2x2",
        "evs",
        "vidcom2",
    }
    assert all(isinstance(text, str) and text and "\n" not in text for text in METHODS.values())


# --- V-CAST and its allocation variants ---------------------------------------------------------------


def test_vcast_method_is_select_tokens_with_the_same_settings():
    x = _features(9, 20, 16, seed=5)
    a = prune(x, "vcast", 0.3, temperature=0.35, min_tokens_per_frame=2)
    b = select_tokens(x, VCastConfig(retain_ratio=0.3, temperature=0.35, min_tokens_per_frame=2))
    for field in ("keep", "keep_mask", "budgets", "curvature", "weights", "scores"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.method == "vcast" and a.assign is None


@pytest.mark.parametrize("allocation", ["uniform", "uniqueness"])
def test_uniform_and_uniqueness_are_v_cast_scores_with_their_allocation(allocation):
    x = _features(9, 20, 16, seed=6)
    a = prune(x, allocation, 0.3)
    b = select_tokens(x, retain_ratio=0.3, allocation=allocation)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.scores, b.scores) and torch.equal(a.weights, b.weights)
    assert a.method == allocation


def test_uniform_budgets_are_equal_up_to_one():
    sel = prune(_features(8, 50, 8), "uniform", 0.25)
    assert sel.budgets.tolist() == [13, 13, 13, 13, 12, 12, 12, 12]
    assert torch.equal(sel.weights, torch.full((8,), 1 / 8))


@pytest.mark.parametrize(
    ("T", "N", "exact", "expected"), [(7, 14, 24.5, 24), (6, 17, 25.5, 26), (1, 10, 2.5, 2), (1, 14, 3.5, 4)]
)
def test_v_cast_totals_round_half_to_even_as_the_reference(T, N, exact, expected):
    # T*N*R is exactly x.5 here: Python's round sends each to the even neighbour (half up would not).
    assert exact == T * N * 0.25
    for method in ("vcast", "uniform", "uniqueness"):
        sel = prune(_features(T, N, 8), method, 0.25, min_tokens_per_frame=0)
        assert sel.keep.numel() == expected, method


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 10), N=st.integers(1, 30), ratio=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_v_cast_family_totals_are_round_of_t_n_r(T, N, ratio, seed):
    x = _features(T, N, 8, seed)
    expected = total_budget(T, N, VCastConfig(retain_ratio=ratio))
    assert expected == min(max(round(T * N * ratio), 1, T), T * N)
    for method in ("vcast", "uniform", "uniqueness"):
        assert prune(x, method, ratio).keep.numel() == expected


# --- 2x2 spatial ablations ----------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(4, 6), (2, 2), (8, 8)])
@pytest.mark.parametrize("method", _SPATIAL)
def test_even_grids_keep_exactly_a_quarter(method, h, w):
    sel = prune(_features(3, h * w, 8), method, 0.25, grid_hw=(h, w))
    assert sel.keep.numel() == 3 * h * w // 4
    assert sel.budgets.tolist() == [h * w // 4] * 3


@pytest.mark.parametrize(("h", "w", "windows"), [(3, 4, 4), (4, 5, 6), (5, 5, 9), (1, 1, 1), (1, 7, 4)])
@pytest.mark.parametrize("method", _SPATIAL)
def test_odd_grids_cut_border_windows_and_keep_one_per_window(method, h, w, windows):
    sel = prune(_features(2, h * w, 8), method, 0.25, grid_hw=(h, w))
    assert sel.budgets.tolist() == [windows, windows]  # ceil(h/2) * ceil(w/2): more than a quarter
    window_of = _window_ids(h, w)
    for t in range(2):
        kept_windows = window_of[sel.keep_mask[t]]
        assert sorted(kept_windows.tolist()) == list(range(windows))  # exactly one per window


def test_first_2x2_keeps_each_window_top_left_token():
    h, w = 5, 6
    sel = prune(_features(3, h * w, 8), "first_2x2", 0.25, grid_hw=(h, w))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    top_left = ((rows % 2 == 0) & (cols % 2 == 0)).reshape(-1)
    assert torch.equal(sel.keep_mask, top_left.expand(3, -1))
    assert bool(sel.scores.isnan().all())


def test_random_2x2_is_deterministic_per_seed_and_differs_across_seeds():
    x = _features(6, 36, 8)
    a, b = prune(x, "random_2x2", grid_hw=(6, 6), seed=3), prune(x, "random_2x2", grid_hw=(6, 6), seed=3)
    assert torch.equal(a.keep, b.keep)
    assert not torch.equal(a.keep, prune(x, "random_2x2", grid_hw=(6, 6), seed=4).keep)
    default = prune(x, "random_2x2", grid_hw=(6, 6))
    assert torch.equal(default.keep, prune(x, "random_2x2", grid_hw=(6, 6), seed=0).keep)  # seed 0 by default


def test_random_2x2_draws_every_position_of_a_window():
    sel = prune(_features(400, 4, 4), "random_2x2", grid_hw=(2, 2), seed=1)
    counts = torch.bincount(sel.keep % 4, minlength=4)
    assert counts.sum() == 400 and int(counts.min()) > 70  # uniform: about 100 each


def test_random_2x2_ignores_the_features():
    a = prune(_features(4, 16, 8, seed=1), "random_2x2", grid_hw=(4, 4), seed=9)
    b = prune(_features(4, 16, 8, seed=2), "random_2x2", grid_hw=(4, 4), seed=9)
    assert torch.equal(a.keep, b.keep)


@pytest.mark.parametrize(("h", "w"), [(4, 4), (3, 5), (1, 3)])
def test_avgpool_2x2_merges_each_window_into_its_top_left_slot(h, w):
    T, N, D = 3, h * w, 6
    x = _features(T, N, D, seed=2)
    sel = prune(x, "avgpool_2x2", 0.25, grid_hw=(h, w))
    first = prune(x, "first_2x2", 0.25, grid_hw=(h, w))
    assert torch.equal(sel.keep, first.keep)  # positions: the windows' top-left tokens
    assert sel.assign.shape == (T * N,) and bool((sel.assign >= 0).all())  # every token is merged somewhere
    merged = merge_features(x, sel)
    grid = x.view(T, h, w, D)
    expected = []
    for t in range(T):
        for r in range(0, h, 2):
            for c in range(0, w, 2):
                expected.append(grid[t, r : r + 2, c : c + 2].reshape(-1, D).mean(dim=0))
    torch.testing.assert_close(merged, torch.stack(expected), rtol=0, atol=1e-6)
    # Slot k of `keep` receives exactly the tokens of its window.
    window_of = _window_ids(h, w)
    slot_of = (torch.arange(T)[:, None] * int(window_of.max() + 1) + window_of).reshape(-1)
    assert torch.equal(sel.assign, slot_of)
    assert torch.equal(sel.keep[sel.assign] // N, torch.arange(T * N) // N)  # never across groups


# --- merge_features ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["vcast", "evs", "vidcom2", "first_2x2"])
def test_merge_features_of_pruning_methods_is_features_at_keep(method):
    x = _features(4, 16, 8, seed=3)
    sel = prune(x, method, 0.25, grid_hw=(4, 4))
    assert torch.equal(merge_features(x, sel), x.reshape(-1, 8)[sel.keep])
    assert torch.equal(merge_features(x.reshape(-1, 8), sel), x.reshape(-1, 8)[sel.keep])


def test_merge_features_averages_assigned_tokens_and_drops_unassigned_ones():
    x = torch.arange(12.0).view(6, 2)  # (T*N, D) with T=2, N=3
    keep_mask = torch.tensor([[True, False, False], [False, True, False]])
    sel = Selection(
        keep=torch.tensor([0, 4]),
        keep_mask=keep_mask,
        budgets=torch.tensor([1, 1]),
        curvature=torch.ones(2),
        weights=torch.full((2,), 0.5),
        scores=torch.full((2, 3), float("nan")),
        method="hand",
        assign=torch.tensor([0, 0, -1, 1, 1, 1]),
    )
    merged = merge_features(x.to(torch.bfloat16), sel)
    assert merged.dtype == torch.bfloat16
    # slot 0: rows 0, 1 -> ((0+2)/2, (1+3)/2); slot 1: rows 3, 4, 5 -> ((6+8+10)/3, (7+9+11)/3).
    assert merged.float().tolist() == [[1.0, 2.0], [8.0, 9.0]]


def test_merge_features_refuses_features_of_another_shape():
    sel = prune(_features(2, 4, 8), "vcast")
    with pytest.raises(ValueError, match=r"features hold 12 tokens but the selection covers 8"):
        merge_features(_features(3, 4, 8), sel)


# --- EVS (vLLM's compute_retention_mask) -------------------------------------------------------------------


def _evs_by_hand(x: torch.Tensor, retain_ratio: float) -> list[int]:
    """vLLM's rule, one token at a time: rank by 1 - cos to the previous group's token at the same
    position (the first group outranks all), ties to the lower flat index, keep the first
    max(N, int(T*N*(1 - q))) with q = 1 - R."""
    T, N, _ = x.shape
    q = 1 - retain_ratio
    ranked = []
    for t in range(T):
        for n in range(N):
            d = math.inf if t == 0 else 1 - F.cosine_similarity(x[t, n], x[t - 1, n], dim=0).item()
            ranked.append((-d, t * N + n))
    ranked.sort()
    return sorted(index for _, index in ranked[: max(N, int(T * N * (1 - q)))])


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(1, 8),
    N=st.integers(1, 12),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
    repeats=st.lists(st.integers(1, 7), max_size=3),
)
def test_evs_keeps_exactly_what_vllms_rule_keeps_with_planted_ties(T, N, ratio, seed, repeats):
    x = _features(T, N, 6, seed, dtype=torch.float64)
    for t in repeats:  # a group equal to the previous one: N tokens tied at dissimilarity ~0
        if t < T:
            x[t] = x[t - 1]
    if T >= 5:  # groups 3-4 repeat groups 1-2: group 4's dissimilarities tie group 2's, token by token
        x[3:5] = x[1:3].clone()
    if N >= 2:  # one token duplicated at another position of every group
        x[:, N - 1] = x[:, 0]
    sel = prune(x, "evs", ratio)
    assert sel.keep.tolist() == _evs_by_hand(x, ratio)
    assert bool(sel.keep_mask[0].all())  # the first group is always kept whole
    assert sel.scores[0].tolist() == [255.0] * N


@pytest.mark.parametrize(
    ("T", "N", "ratio", "expected"),
    [
        (20, 10, 0.1, 19),  # 1 - (1 - 0.1) = 0.09999999999999998: int(19.999999999999996) = 19, as vLLM
        (10, 10, 0.3, 30),
        (8, 10, 0.25, 20),
        (4, 12, 0.25, 12),  # int(12.0) = 12 = N: only the first group survives
        (10, 10, 0.05, 10),  # int(5.0) < N: the first group's N tokens are the floor
        (1, 7, 0.1, 7),
    ],
)
def test_evs_total_is_max_of_n_and_int_of_t_n_times_one_minus_q(T, N, ratio, expected):
    assert max(N, int(T * N * (1 - (1 - ratio)))) == expected
    sel = prune(_features(T, N, 4), "evs", ratio)
    assert sel.keep.numel() == expected
    assert torch.equal(sel.weights, torch.full((T,), 1 / T))


def test_evs_keeps_the_tokens_that_changed():
    x = _features(4, 9, 8)
    x[1:] = x[0]  # a still video...
    x[2, 5] = -x[2, 5]  # ...but for one token that flips in group 2 (and flips back in group 3)
    sel = prune(x, "evs", 11.5 / 36)  # int(11.5) = N + 2 tokens
    assert sel.keep.tolist() == [*range(9), 2 * 9 + 5, 3 * 9 + 5]


# --- VidCom2 (official code) ------------------------------------------------------------------------------

_BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1, 2)


def _gaussian(distance_sq: float) -> float:
    return sum(math.exp(-distance_sq / (2 * a)) for a in _BANDWIDTHS)


def _vidcom2_by_hand(x: torch.Tensor, retain_ratio: float) -> tuple[list[int], list[int], list[float]]:
    """The official steps, one group and one token at a time, in float64 Python arithmetic.

    Returns the budgets, the kept flat indices and each group's unrounded scale * N.
    """
    T, N, D = x.shape
    flat = x.double().reshape(T * N, D)
    variance = flat.var(dim=0, unbiased=False).tolist()
    channels = sorted(range(D), key=lambda c: (variance[c], c))[: int(D * 0.5)]
    unit = F.normalize(flat[:, channels], dim=-1).reshape(T, N, -1)
    video_centre = unit.mean(dim=(0, 1))
    to_video = [[_gaussian(float(((unit[t, n] - video_centre) ** 2).sum())) for n in range(N)] for t in range(T)]
    to_group = []
    for t in range(T):
        centre = unit[t].mean(dim=0)
        to_group.append([_gaussian(float(((unit[t, n] - centre) ** 2).sum())) for n in range(N)])
    importance = [-sum(row) / N for row in to_video]
    top = max(importance)
    e = [math.exp((i - top) / 0.01) for i in importance]
    p = [v / sum(e) for v in e]
    unrounded = [min(1.0, retain_ratio * (1 + pt - sum(p) / T)) * N for pt in p]
    budgets = [max(1, round(u)) for u in unrounded]  # Python's round is torch.round: half to even
    keep = []
    for t in range(T):
        order = sorted(range(N), key=lambda n: (to_video[t][n] + to_group[t][n], n))
        keep += [t * N + n for n in sorted(order[: budgets[t]])]
    return budgets, keep, unrounded


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 6),
    N=st.integers(1, 12),
    D=st.integers(1, 9),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 1000),
    spread=st.floats(0.0, 3.0),
)
def test_vidcom2_matches_a_loop_transcription_of_the_official_code(T, N, D, ratio, seed, spread):
    x = _features(T, N, D, seed, dtype=torch.float64)
    x = x + spread * torch.arange(T, dtype=torch.float64)[:, None, None]  # groups drift apart
    budgets, keep, unrounded = _vidcom2_by_hand(x, ratio)
    assume(all(abs(u - math.floor(u) - 0.5) > 1e-9 for u in unrounded))  # no float-level half ties
    sel = prune(x, "vidcom2", ratio)
    assert sel.budgets.tolist() == budgets
    assert sel.keep.tolist() == keep


def test_vidcom2_by_hand_low_variance_channels_budgets_and_outliers():
    # Channels 0-1 vary a lot (+-5: variance 25); channels 2-3 little: the latter are the chosen half.
    # After normalising those two channels every token is one of a = (1, 0), b = (0, 1), c = (-1, 0).
    a, b, c = [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]
    low = 0.1 * torch.tensor([[a, a, a, a], [a, b, c, b]])  # (T=2, N=4, 2)
    high = 5 * torch.tensor([[[1, -1], [-1, 1], [1, 1], [-1, -1]], [[-1, 1], [1, -1], [-1, -1], [1, 1]]])
    x = torch.cat([high.float(), low], dim=-1)  # (2, 4, 4)
    # Video centre = (5a + 2b + c) / 8 = (0.5, 0.25): squared distances a 0.3125, b 0.8125, c 2.3125.
    # G(d) = sum_a exp(-d / 2a): G(0.3125) = 3.3335, G(0.8125) = 2.1617, G(2.3125) = 0.9845.
    # Mean similarity to the video: group 0 3.3335, group 1 (3.3335 + 2 * 2.1617 + 0.9845) / 4 = 2.1604,
    # so group 1 is the more unique by 1.17 and softmax(. / 0.01) gives it p = 1 (p_0 = e^-117).
    # R = 0.5: k_0 = round(4 * 0.5 * (1 + 0 - 0.5)) = 1, k_1 = round(4 * 0.5 * (1 + 1 - 0.5)) = 3.
    # Group 1's centre is (0, 0.5): squared distances a 1.25, b 0.25, c 1.25. Summed similarity:
    # a 3.3335 + G(1.25) = 4.9757, b 2.1617 + G(0.25) = 5.7368, c 0.9845 + G(1.25) = 2.6267: keep the
    # lowest three, c, a and the first b (the two b tokens tie; the lower index wins). Group 0: all tie.
    sel = prune(x, "vidcom2", 0.5)
    assert sel.budgets.tolist() == [1, 3]
    assert sel.keep.tolist() == [0, 4, 5, 6]
    torch.testing.assert_close(sel.scores[1], torch.tensor([-4.9757, -5.7368, -2.6267, -5.7368]), atol=2e-4, rtol=0)
    torch.testing.assert_close(sel.weights, torch.tensor([0.25, 0.75]))  # shares of the unrounded budgets
    # Only the low-variance half matters: rewriting the high-variance channels changes nothing...
    shuffled = x.clone()
    shuffled[..., :2] = -shuffled[..., :2].flip(1)
    assert torch.equal(prune(shuffled, "vidcom2", 0.5).keep, sel.keep)
    # ...while one low-variance value moved does: token 3 of group 1 turns from b into c.
    moved = x.clone()
    moved[1, 3, 2:] = torch.tensor([-0.1, 0.0])
    assert not torch.equal(prune(moved, "vidcom2", 0.5).keep, sel.keep)


@pytest.mark.parametrize(
    ("N", "ratio", "expected"),
    [(10, 0.25, 2), (6, 0.25, 2), (14, 0.25, 4), (2, 0.25, 1), (3, 0.1, 1), (8, 1.0, 8)],
)
def test_vidcom2_rounds_each_budget_half_to_even_and_keeps_at_least_one(N, ratio, expected):
    # One group: p = 1 = mean p, so scale = R and k = round(R * N): 2.5 -> 2, 1.5 -> 2, 3.5 -> 4;
    # 0.5 -> 0 and 0.3 -> 0 are raised to 1.
    assert prune(_features(1, N, 6), "vidcom2", ratio).budgets.tolist() == [expected]


def test_vidcom2_budgets_stay_within_one_and_n():
    x = _features(6, 10, 8) + 4 * torch.arange(6.0)[:, None, None]
    sel = prune(x, "vidcom2", 0.9)
    assert int(sel.budgets.max()) <= 10 and int(sel.budgets.min()) >= 1
    # The most unique group is capped at N (scale 0.9 * (1 + 1 - 1/6) > 1).
    assert 10 in sel.budgets.tolist()


# --- refusals -----------------------------------------------------------------------------------------------


def test_unknown_method_lists_the_methods():
    with pytest.raises(ValueError, match=r"method must be one of 'vcast', 'uniform', .*'vidcom2', got 'tome'"):
        prune(_features(2, 4, 4), "tome")


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("evs", {"temperature": 0.5}, r"method 'evs' takes the options grid_hw; got temperature"),
        ("uniform", {"allocation": "curvature"}, r"takes the options grid_hw, min_tokens_per_frame; got allocation"),
        ("random_2x2", {"sed": 1}, r"takes the options grid_hw, seed; got sed"),
        ("vcast", {"retain": 0.5}, r"grid_hw, temperature, min_tokens_per_frame, allocation; got retain"),
    ],
)
def test_unknown_options_list_the_allowed_ones(method, options, message):
    with pytest.raises(ValueError, match=message):
        prune(_features(2, 4, 4), method, 0.25, grid_hw=(2, 2), **options)


@pytest.mark.parametrize("method", _SPATIAL)
def test_spatial_methods_refuse_other_ratios_and_a_missing_or_wrong_grid(method):
    x = _features(2, 12, 4)
    with pytest.raises(ValueError, match=r"keeps exactly one token of every 2x2 window, i\.e\. retain_ratio=0\.25"):
        prune(x, method, 0.3, grid_hw=(3, 4))
    with pytest.raises(ValueError, match=r"needs one group's merged grid: pass grid_hw=\(h, w\)"):
        prune(x, method, 0.25)
    with pytest.raises(ValueError, match=r"grid_hw=\(3, 3\) holds 9 tokens per group, but the features have N=12"):
        prune(x, method, 0.25, grid_hw=(3, 3))
    with pytest.raises(ValueError, match=r"grid_hw must be \(h, w\), two positive integers"):
        prune(x, method, 0.25, grid_hw=(12,))


def test_grid_is_checked_for_every_method_that_gets_one():
    with pytest.raises(ValueError, match=r"holds 9 tokens per group"):
        prune(_features(2, 12, 4), "vcast", grid_hw=(3, 3))


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", 2**63])
def test_random_2x2_refuses_a_bad_seed(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        prune(_features(2, 4, 4), "random_2x2", grid_hw=(2, 2), seed=seed)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("ratio", [0.0, 1.5, float("nan"), float("inf"), -0.25])
def test_every_method_refuses_a_ratio_outside_0_1(method, ratio):
    with pytest.raises(ValueError, match=r"retain_ratio must be in \(0, 1\]"):
        prune(_features(2, 4, 4), method, ratio, grid_hw=(2, 2))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_refuses_bad_features(method):
    with pytest.raises(ValueError, match=r"\(T, N, D\)"):
        prune(torch.zeros(4, 4), method, grid_hw=(2, 2))
    with pytest.raises(ValueError, match="float"):
        prune(torch.zeros(2, 4, 4, dtype=torch.int64), method, grid_hw=(2, 2))


def test_vcast_options_are_validated_by_vcast_config():
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 1e-30"):
        prune(_features(2, 4, 4), "uniqueness", temperature=1e-300)
