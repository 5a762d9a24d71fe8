"""Properties of V-CAST selection: exact budgets, faithful scores, stable indices."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vcast import (
    VCastConfig,
    allocate_budgets,
    frame_curvature,
    frame_means,
    select_tokens,
    token_scores,
    total_budget,
)


def _features(T: int, N: int, D: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, N, D, generator=g).to(dtype)


def _scene_cut_features(cuts: list[int], T: int = 24, N: int = 30, D: int = 64, seed: int = 0) -> torch.Tensor:
    """A steady drift inside each scene (smooth motion), a jump to an unrelated place at each cut.

    The drift dominates the per-frame noise, as consecutive frames of one shot do in practice.
    """
    g = torch.Generator().manual_seed(seed)
    scenes = [0, *cuts, T]
    groups = []
    for start, stop in itertools.pairwise(scenes):
        base, drift = torch.randn(D, generator=g) * 3, torch.randn(D, generator=g) * 0.3
        for t in range(stop - start):
            groups.append(base + t * drift + 0.1 * torch.randn(N, D, generator=g))
    return torch.stack(groups)  # (T, N, D)


# --- budgets -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=80),
    cap=st.integers(1, 50),
    min_per_frame=st.integers(0, 50),
    fill=st.floats(0.0, 1.0),
)
def test_budgets_sum_exactly_and_stay_within_min_and_cap(weights, cap, min_per_frame, fill):
    w = torch.tensor(weights, dtype=torch.float32)
    if w.sum() <= 0:
        w = w + 1.0
    min_per_frame = min(min_per_frame, cap)
    T = len(weights)
    total = T * min_per_frame + round(fill * T * (cap - min_per_frame))
    budgets = allocate_budgets(w, total, min_per_frame=min_per_frame, cap=cap)
    assert budgets.dtype == torch.int64 and budgets.shape == (T,)
    assert int(budgets.sum()) == total
    assert int(budgets.min()) >= min_per_frame and int(budgets.max()) <= cap


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(0.01, 5.0), min_size=2, max_size=40), total=st.integers(0, 400))
def test_uncapped_budgets_are_largest_remainder_of_the_proportional_shares(weights, total):
    w = torch.tensor(weights, dtype=torch.float64)
    budgets = allocate_budgets(w, total, min_per_frame=0, cap=10_000)
    exact = (w / w.sum() * total).tolist()
    for b, e in zip(budgets.tolist(), exact, strict=True):
        assert math.floor(e) <= b <= math.floor(e) + 1  # each group at most +1 from the remainders


def test_remainder_ties_go_to_the_earlier_frame():
    budgets = allocate_budgets(torch.ones(4), 6, min_per_frame=0, cap=10)
    assert budgets.tolist() == [2, 2, 1, 1]


def test_capped_frame_excess_flows_to_the_others_in_proportion():
    budgets = allocate_budgets(torch.tensor([0.7, 0.2, 0.1]), 20, min_per_frame=1, cap=8)
    # Frame 0 saturates (1 + 7 = 8); the other 10 units split 2:1 as 6.67 / 3.33, rounded to 7 / 3.
    assert budgets.tolist() == [8, 8, 4]


def test_allocate_budgets_rejects_an_impossible_total():
    with pytest.raises(ValueError, match=r"total must lie in"):
        allocate_budgets(torch.ones(3), 10, min_per_frame=0, cap=3)
    with pytest.raises(ValueError, match=r"min_per_frame"):
        allocate_budgets(torch.ones(3), 3, min_per_frame=4, cap=3)


# --- curvature -----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(T=st.integers(1, 40), D=st.integers(1, 32), seed=st.integers(0, 10_000))
def test_curvature_endpoints_are_one_and_interior_lies_in_0_2(T, D, seed):
    m = torch.randn(T, D, generator=torch.Generator().manual_seed(seed))
    c = frame_curvature(m)
    assert c.shape == (T,) and c.dtype == torch.float32
    assert c[0] == 1.0 and c[-1] == 1.0
    assert bool(((c >= 0) & (c <= 2)).all())


def test_curvature_of_a_straight_line_is_zero_and_of_a_reversal_is_two():
    line = torch.stack([torch.tensor([1.0, 0.1 * t]) for t in range(5)])  # normalisation bends it slightly
    assert frame_curvature(line)[1:-1].max() < 0.05
    back_and_forth = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert frame_curvature(back_and_forth)[1] == pytest.approx(2.0)


@pytest.mark.parametrize("cuts", [[8], [6, 15], [5, 12, 19]])
def test_highest_curvatures_sit_at_scene_cuts(cuts):
    features = _scene_cut_features(cuts)
    c = frame_curvature(frame_means(features))
    interior = c[1:-1]
    top = set((torch.topk(interior, 2 * len(cuts)).indices + 1).tolist())
    # A cut between groups k-1 and k bends the trajectory at k-1 and at k.
    assert top == {k for cut in cuts for k in (cut - 1, cut)}


def test_curvature_allocation_gives_the_cut_frames_more_budget():
    features = _scene_cut_features([12])
    sel = select_tokens(features, retain_ratio=0.3)
    assert set(torch.topk(sel.budgets[1:-1], 2).indices.add(1).tolist()) == {11, 12}


# --- scores and selection --------------------------------------------------------------------------


def test_token_scores_match_the_dual_anchor_formula():
    x = _features(4, 9, 16, seed=3)
    m = frame_means(x)
    cos = torch.nn.functional.cosine_similarity(x.double(), m.double()[:, None, :], dim=-1)
    norms = x.double().norm(dim=-1)
    spread = (norms - norms.amin(1, keepdim=True)) / (norms.amax(1, keepdim=True) - norms.amin(1, keepdim=True))
    expected = (1 - cos) + spread
    torch.testing.assert_close(token_scores(x, m).double(), expected, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 12),
    N=st.integers(1, 40),
    ratio=st.floats(0.01, 1.0),
    min_tokens=st.integers(0, 3),
    allocation=st.sampled_from(["curvature", "uniform", "uniqueness"]),
    seed=st.integers(0, 1000),
)
def test_kept_indices_are_ascending_unique_in_range_and_match_budgets(T, N, ratio, min_tokens, allocation, seed):
    x = _features(T, N, 8, seed)
    config = VCastConfig(retain_ratio=ratio, min_tokens_per_frame=min_tokens, allocation=allocation)
    sel = select_tokens(x, config)
    keep = sel.keep
    assert keep.dtype == torch.int64
    assert bool((keep[1:] > keep[:-1]).all())  # strictly ascending, hence unique
    assert int(keep.min()) >= 0 and int(keep.max()) < T * N
    assert keep.numel() == total_budget(T, N, config) == int(sel.budgets.sum())
    assert torch.equal(torch.bincount(keep // N, minlength=T), sel.budgets)
    assert torch.equal(sel.keep_mask.flatten().nonzero().squeeze(1), keep)
    assert int(sel.budgets.min()) >= min(min_tokens, N)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 10), N=st.integers(1, 30), ratio=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_kept_tokens_of_each_frame_are_exactly_its_top_budget_tokens(T, N, ratio, seed):
    x = _features(T, N, 8, seed)
    sel = select_tokens(x, retain_ratio=ratio)
    for t in range(T):
        k = int(sel.budgets[t])
        top = set(torch.topk(sel.scores[t], k).indices.tolist())
        assert set(sel.keep_mask[t].nonzero().squeeze(1).tolist()) == top


def test_retain_ratio_one_keeps_every_token():
    x = _features(6, 25, 16)
    sel = select_tokens(x, retain_ratio=1.0)
    assert torch.equal(sel.keep, torch.arange(6 * 25))
    assert bool(sel.keep_mask.all()) and sel.budgets.tolist() == [25] * 6


@pytest.mark.parametrize(("T", "N"), [(1, 1), (1, 7), (2, 1), (2, 5), (3, 1)])
@pytest.mark.parametrize("ratio", [0.01, 0.25, 1.0])
def test_tiny_shapes_work(T, N, ratio):
    sel = select_tokens(_features(T, N, 4), retain_ratio=ratio)
    assert sel.budgets.shape == (T,) and int(sel.budgets.sum()) == sel.keep.numel() >= T
    if T <= 2:  # no interior group: every curvature is the endpoint value
        assert sel.curvature.tolist() == [1.0] * T


def test_results_are_identical_for_float32_and_float64_inputs():
    x = _features(16, 40, 32, seed=7)
    a, b = select_tokens(x), select_tokens(x.double())
    for field in ("keep", "keep_mask", "budgets", "curvature", "weights", "scores"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype):
    x = _features(8, 30, 32, seed=1, dtype=dtype)
    half, wide = select_tokens(x), select_tokens(x.float())
    assert half.scores.dtype == torch.float32 and half.curvature.dtype == torch.float32
    torch.testing.assert_close(half.scores, wide.scores, atol=1e-5, rtol=0)
    assert torch.equal(half.keep, wide.keep)


def test_weights_are_the_softmax_of_curvature_over_temperature():
    sel = select_tokens(_features(10, 12, 8), temperature=0.35)
    torch.testing.assert_close(sel.weights, torch.softmax(sel.curvature / 0.35, 0))


def test_uniform_allocation_splits_evenly():
    sel = select_tokens(_features(8, 50, 8), retain_ratio=0.25, allocation="uniform")
    assert sel.budgets.tolist() == [13, 13, 13, 13, 12, 12, 12, 12]


def test_uniqueness_allocation_favours_the_odd_frame():
    x = _features(9, 20, 16, seed=2) * 0.1 + torch.randn(16)  # all frames alike...
    x[4] = x[4] - 2 * x[4].mean(0)  # ...but one
    sel = select_tokens(x, retain_ratio=0.3, allocation="uniqueness")
    assert int(sel.budgets.argmax()) == 4


def test_total_budget_rounds_half_to_even_as_the_reference_and_respects_the_floor():
    assert total_budget(1, 10, VCastConfig(retain_ratio=0.25)) == 2  # 2.5 -> 2
    assert total_budget(1, 14, VCastConfig(retain_ratio=0.25)) == 4  # 3.5 -> 4
    assert total_budget(7, 14, VCastConfig(retain_ratio=0.25)) == 24  # 24.5 -> 24
    assert total_budget(4, 10, VCastConfig(retain_ratio=0.01, min_tokens_per_frame=2)) == 8
    assert select_tokens(_features(7, 14, 8), retain_ratio=0.25).keep.numel() == 24


def test_overrides_replace_config_fields():
    x = _features(4, 10, 8)
    assert select_tokens(x, VCastConfig(retain_ratio=0.5), retain_ratio=0.1).keep.numel() == 4


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retain_ratio": 0.0}, r"retain_ratio must be in \(0, 1\]"),
        ({"retain_ratio": 1.5}, r"retain_ratio must be in \(0, 1\]"),
        ({"retain_ratio": float("nan")}, r"retain_ratio must be in \(0, 1\]"),
        ({"retain_ratio": float("inf")}, r"retain_ratio must be in \(0, 1\]"),
        ({"retain_ratio": float("-inf")}, r"retain_ratio must be in \(0, 1\]"),
        ({"retain_ratio": "0.25"}, r"retain_ratio must be a number"),
        ({"temperature": 0.0}, r"temperature must be a finite number >= 1e-30"),
        ({"temperature": -1.0}, r"temperature must be a finite number >= 1e-30"),
        ({"temperature": 1e-300}, r"temperature must be a finite number >= 1e-30 \(below it softmax"),
        ({"temperature": 1e-31}, r"temperature must be a finite number >= 1e-30"),
        ({"temperature": float("nan")}, r"temperature must be a finite number >= 1e-30"),
        ({"temperature": float("inf")}, r"temperature must be a finite number >= 1e-30"),
        ({"temperature": 10**400}, r"temperature must be a finite number >= 1e-30"),
        ({"temperature": True}, r"temperature must be a finite number >= 1e-30"),
        ({"min_tokens_per_frame": -1}, r"min_tokens_per_frame must be >= 0"),
        ({"min_tokens_per_frame": 1.5}, r"min_tokens_per_frame must be an integer"),
        ({"allocation": "random"}, r"allocation must be one of 'curvature', 'uniform', 'uniqueness'"),
    ],
)
def test_invalid_configs_raise_value_error_naming_the_allowed_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VCastConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        select_tokens(_features(2, 3, 4), **kwargs)


@pytest.mark.parametrize("allocation", ["curvature", "uniqueness"])
def test_the_smallest_allowed_temperature_still_gives_finite_weights(allocation):
    # Just above the floor the weights are an argmax; just below the float32 edge (2 / 3.4e38)
    # softmax(c / t) would be NaN, which is why such temperatures are refused.
    x = _scene_cut_features([12])
    sel = select_tokens(x, retain_ratio=0.3, temperature=1e-30, allocation=allocation)
    assert bool(torch.isfinite(sel.weights).all()) and float(sel.weights.sum()) == pytest.approx(1.0)
    assert int(sel.budgets.sum()) == sel.keep.numel() == total_budget(24, 30, VCastConfig(retain_ratio=0.3))
    assert bool(torch.softmax(torch.tensor([0.0, 2.0]) / 5e-39, 0).isnan().any())  # the edge is real


def test_config_is_frozen_and_keyword_only():
    config = VCastConfig()
    with pytest.raises(AttributeError):
        config.retain_ratio = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        VCastConfig(0.5)  # type: ignore[misc]


@pytest.mark.parametrize("shape", [(3, 4), (0, 4, 4), (2, 0, 4)])
def test_bad_feature_shapes_raise_value_error(shape):
    with pytest.raises(ValueError, match=r"\(T, N, D\)"):
        select_tokens(torch.zeros(shape))


def test_integer_features_raise_value_error():
    with pytest.raises(ValueError, match="float"):
        select_tokens(torch.zeros(2, 3, 4, dtype=torch.int64))


_INTERPRETED_KERNEL_CHECK = """
import torch
from vcast._kernels import curvature_triton, keep_triton, token_scores_triton
from vcast.core import frame_curvature, token_scores, top_budget_mask
worst, keep_equal = 0.0, True
for seed, dtype in enumerate((torch.float32, torch.bfloat16, torch.float16)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(21, 37, 300, generator=g).to(dtype)
    means = x.float().mean(1) * 3.0  # any length: the kernels normalise
    scores = token_scores(x, means)
    worst = max(worst, float((token_scores_triton(x, means, 1e-8) - scores).abs().max()))
    worst = max(worst, float((curvature_triton(means, 1e-8) - frame_curvature(means)).abs().max()))
    budgets = torch.randint(0, 38, (21,), generator=g)
    budgets[3] = 0
    scores[0, :5] = scores[0, 5]  # ties go to the lower index
    mask, keep = keep_triton(scores, budgets, torch.cumsum(budgets, 0) - budgets, int(budgets.sum()))
    expected = top_budget_mask(scores, budgets)
    keep_equal &= torch.equal(mask, expected) and torch.equal(keep, expected.flatten().nonzero().squeeze(1))
print(worst, keep_equal)
"""


def test_fused_triton_kernels_match_the_torch_formulas():
    """The CUDA kernels, run by Triton's CPU interpreter, on ragged sizes (37 tokens, 300 dims)."""
    pytest.importorskip("triton", reason="the fused kernels need Triton, which ships with CUDA builds of torch")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED_KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    worst, keep_equal = result.stdout.split()
    assert float(worst) < 1e-5
    assert keep_equal == "True"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; CPU path is covered above")
def test_one_compiled_kernel_serves_every_video_size():
    """A new video size must not pay a Triton compilation (it cost 1-3 s per size on an H200): sizes are
    not specialised on, so videos of any group count and up to 1024 tokens per group share one kernel."""
    from vcast import _kernels

    kernels = (_kernels._token_stats_kernel, _kernels._finish_scores_kernel, _kernels._curvature_kernel,
               _kernels._keep_kernel)  # fmt: skip
    for groups, tokens in ((16, 196), (8, 200), (1, 16), (33, 1000), (64, 120), (5, 1024)):
        select_tokens(_features(groups, tokens, 512, dtype=torch.bfloat16).cuda(), retain_ratio=0.3)
    device = torch.cuda.current_device()
    for kernel in kernels:
        compiled = kernel.device_caches[device][0]  # Triton's per-device cache of compiled specialisations
        assert len(compiled) == 1, (kernel.fn.__name__, list(compiled))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; CPU path is covered above")
def test_cuda_selection_matches_cpu():
    x = _features(32, 196, 256, dtype=torch.bfloat16)
    cpu, gpu = select_tokens(x), select_tokens(x.cuda())
    assert torch.equal(cpu.budgets, gpu.budgets.cpu())
    torch.testing.assert_close(cpu.scores, gpu.scores.cpu(), atol=1e-4, rtol=0)
