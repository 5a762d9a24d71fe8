"""V-CAST and the baselines it is compared with, behind one call: `prune(features, method=...)`.

Every method takes a video's merged visual tokens (T, N, D) and returns a `core.Selection`, so the
pipeline, the plots and the evaluation treat them alike; `merge_features` turns a selection into
the features the language model sees (kept tokens, or per-slot means for merging methods).
Pure torch, vectorised over temporal groups. The baselines follow their reference code (see
docs/DESIGN-NOTES.md, "Methods"): EVS is vLLM's `vllm/multimodal/evs.py` (compute_retention_mask),
VidCom2 the official `token_compressor/vidcom2/vidcom2.py` (Liu et al. 2025, arXiv:2505.14454).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .config import VCastConfig, check_retain_ratio
from .core import Selection, check_features, select_tokens, top_budget_mask, video_curvature

METHODS: dict[str, str] = {
    "vcast": "V-CAST: curvature-weighted budgets, dual-anchor token scores (round(T*N*R) kept)",
    "uniform": "equal budgets per group, V-CAST's dual-anchor token scores (round(T*N*R) kept)",
    "uniqueness": "global-uniqueness budgets, V-CAST's dual-anchor token scores (round(T*N*R) kept)",
    "first_2x2": "the top-left token of every 2x2 window of the merged grid (R = 0.25 only)",
    "random_2x2": "one seeded random token of every 2x2 window of the merged grid (R = 0.25 only)",
    "avgpool_2x2": "the mean of every 2x2 window, placed at its top-left token: merging (R = 0.25 only)",
    "evs": "vLLM's EVS: the max(N, int(T*N*(1-q))) tokens least like the previous group's, q = 1 - R",
    "vidcom2": "VidCom2 (official code): uniqueness-scaled budgets, tokens least like the video and group centres",
}

# Display names, for figures, tables and messages.
METHOD_LABELS: dict[str, str] = {
    "vcast": "V-CAST",
    "uniform": "uniform",
    "uniqueness": "uniqueness",
    "first_2x2": "first 2x2",
    "random_2x2": "random 2x2",
    "avgpool_2x2": "avg-pool 2x2",
    "evs": "EVS (vLLM)",
    "vidcom2": "VidCom2",
}

# Options each method takes besides `grid_hw` (accepted by every method, required by the 2x2 ones).
_OPTIONS: dict[str, tuple[str, ...]] = {
    "vcast": ("temperature", "min_tokens_per_frame", "allocation"),
    "uniform": ("min_tokens_per_frame",),
    "uniqueness": ("temperature", "min_tokens_per_frame"),
    "first_2x2": (),
    "random_2x2": ("seed",),
    "avgpool_2x2": (),
    "evs": (),
    "vidcom2": (),
}
_WINDOW_RATIO = 0.25  # a 2x2 window keeps one of its four tokens
_VIDCOM2_BANDWIDTHS = tuple(2.0**k for k in range(-3, 2))  # 1/8 .. 2, as the official code
_VIDCOM2_TEMPERATURE = 0.01  # softmax temperature of the group importances (official default)


def prune(features: torch.Tensor, method: str = "vcast", retain_ratio: float = 0.25, **options) -> Selection:
    """Choose (or merge) a video's merged visual tokens with one of `METHODS`.

    features: (T, N, D) float tensor, T temporal groups of N merged tokens, any device and dtype.
    retain_ratio: share of tokens kept, in (0, 1]; each method turns it into a total by its own rule.
    options, keyword-only: grid_hw=(h, w), one group's merged grid (h * w == N, row-major), taken by
    every method and needed by the 2x2 ones; "vcast": temperature, min_tokens_per_frame, allocation
    (VCastConfig fields); "uniform": min_tokens_per_frame; "uniqueness": temperature,
    min_tokens_per_frame; "random_2x2": seed (int >= 0, default 0).
    Returns a Selection on the features' device with `method` set; `assign` only for merging methods.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    allowed = ("grid_hw", *_OPTIONS[method])
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {method!r} takes the options {', '.join(allowed)}; got {', '.join(unknown)}")
    check_features(features)
    retain_ratio = check_retain_ratio(retain_ratio)
    grid_hw = _check_grid(options.pop("grid_hw", None), features.shape[1])

    if method in ("vcast", "uniform", "uniqueness"):
        settings = options if method == "vcast" else {**options, "allocation": method}
        selection = select_tokens(features, VCastConfig(retain_ratio=retain_ratio, **settings))
        return dataclasses.replace(selection, method=method)
    if method == "evs":
        return _evs(features, retain_ratio)
    if method == "vidcom2":
        return _vidcom2(features, retain_ratio)
    if grid_hw is None:
        raise ValueError(f"{method} needs one group's merged grid: pass grid_hw=(h, w) with h * w == N")
    if retain_ratio != _WINDOW_RATIO:
        raise ValueError(
            f"{method} keeps exactly one token of every 2x2 window, i.e. retain_ratio=0.25; got {retain_ratio!r}."
            " Use another method for other ratios"
        )
    if method == "random_2x2":
        return _random_2x2(features, grid_hw, seed=_check_seed(options.get("seed", 0)))
    return _first_2x2(features, grid_hw, merge=method == "avgpool_2x2")


def merge_features(features: torch.Tensor, selection: Selection) -> torch.Tensor:
    """The (K, D) features a selection hands to the language model, in `selection.keep` order.

    features: (T * N, D) or (T, N, D), any float dtype (merged tokens or a deepstack layer).
    Pruning methods: features[keep]. Merging methods: slot k gets the mean of the tokens with
    assign == k (accumulated in at least float32), returned in the features' dtype.
    """
    flat = features.reshape(-1, features.shape[-1])  # (T*N, D)
    if flat.shape[0] != selection.keep_mask.numel():
        raise ValueError(
            f"features hold {flat.shape[0]} tokens but the selection covers {selection.keep_mask.numel()}"
            f" (T * N = {tuple(selection.keep_mask.shape)}); pass the features the selection was made on"
        )
    if selection.assign is None:
        return flat[selection.keep]
    slots = selection.keep.numel()
    # Dropped tokens (-1) go to an extra slot that is cut off: no boolean indexing, no device sync.
    target = torch.where(selection.assign >= 0, selection.assign, slots)  # (T*N,)
    wide = torch.promote_types(flat.dtype, torch.float32)
    sums = torch.zeros(slots + 1, flat.shape[1], dtype=wide, device=flat.device).index_add_(0, target, flat.to(wide))
    counts = torch.bincount(target, minlength=slots + 1).to(wide)  # (K+1,)
    return (sums[:slots] / counts[:slots, None]).to(flat.dtype)  # (K, D)


def _check_grid(grid_hw: object, tokens_per_group: int) -> tuple[int, int] | None:
    """grid_hw as (h, w) with h * w == N, or None when not given; ValueError saying what is wrong."""
    if grid_hw is None:
        return None
    if (
        not isinstance(grid_hw, (tuple, list))
        or len(grid_hw) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid_hw)
    ):
        raise ValueError(f"grid_hw must be (h, w), two positive integers, got {grid_hw!r}")
    h, w = grid_hw
    if h * w != tokens_per_group:
        raise ValueError(f"grid_hw={(h, w)} holds {h * w} tokens per group, but the features have N={tokens_per_group}")
    return h, w


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer >= 0 (below 2**63), got {seed!r}")
    return seed


def _selection(
    features: torch.Tensor,
    method: str,
    keep_mask: torch.Tensor,
    total: int,
    *,
    scores: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    assign: torch.Tensor | None = None,
) -> Selection:
    """A Selection from a (T, N) keep mask holding `total` tokens; NaN scores and 1/T weights
    stand in where a method has none."""
    T, N = keep_mask.shape
    device = keep_mask.device
    if scores is None:
        scores = torch.full((T, N), float("nan"), dtype=torch.float32, device=device)
    if weights is None:
        weights = torch.full((T,), 1.0 / T, dtype=torch.float32, device=device)
    return Selection(
        keep=torch.nonzero_static(keep_mask.flatten(), size=total).squeeze(1),  # (K,) ascending
        keep_mask=keep_mask,
        budgets=keep_mask.sum(dim=1),  # (T,) int64
        curvature=video_curvature(features),
        weights=weights.float(),
        scores=scores.float(),
        method=method,
        assign=assign,
    )


# --- spatial 2x2 ablations (R = 0.25) ---------------------------------------------------------------


def _windows(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(W, 4) int64: the tokens of each 2x2 window of a row-major h x w grid, windows in row-major
    order, slots (top-left, top-right, bottom-left, bottom-right); -1 where an odd border cuts a window
    to 2x1, 1x2 or 1x1. Every token lies in exactly one window; slot 0 always exists."""
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    grid = torch.full((2 * h2, 2 * w2), -1, dtype=torch.int64, device=device)
    grid[:h, :w] = torch.arange(h * w, device=device).view(h, w)
    return grid.view(h2, 2, w2, 2).permute(0, 2, 1, 3).reshape(h2 * w2, 4)  # (W, 4)


def _first_2x2(features: torch.Tensor, grid_hw: tuple[int, int], *, merge: bool) -> Selection:
    """Keep each window's top-left token; with merge=True, average the window into it (avgpool)."""
    T, N, _ = features.shape
    device = features.device
    windows = _windows(*grid_hw, device)  # (W, 4)
    num_windows = windows.shape[0]
    keep_mask = torch.zeros(N, dtype=torch.bool, device=device)
    keep_mask[windows[:, 0]] = True
    keep_mask = keep_mask.expand(T, N).contiguous()  # (T, N)
    assign = None
    if merge:
        # Top-left tokens ascend in window order, so window i of group t is slot t * W + i of `keep`.
        h, w = grid_hw
        rows, cols = torch.arange(h, device=device) // 2, torch.arange(w, device=device) // 2
        window_of = (rows.unsqueeze(1) * ((w + 1) // 2) + cols).reshape(N)  # (N,) window of each token
        offsets = torch.arange(T, device=device).unsqueeze(1) * num_windows  # (T, 1)
        assign = (offsets + window_of).reshape(T * N)  # (T*N,)
    return _selection(features, "avgpool_2x2" if merge else "first_2x2", keep_mask, T * num_windows, assign=assign)


def _random_2x2(features: torch.Tensor, grid_hw: tuple[int, int], *, seed: int) -> Selection:
    """Keep one uniformly drawn token of each window; draws come from a CPU generator seeded with
    `seed`, so a seed gives the same choice on every device."""
    T, N, _ = features.shape
    device = features.device
    windows = _windows(*grid_hw, device)  # (W, 4)
    draws = torch.rand((T, *windows.shape), generator=torch.Generator().manual_seed(seed)).to(device)  # (T, W, 4)
    draws = draws.masked_fill(windows < 0, -1.0)  # slots outside the grid never win
    chosen = windows.expand(T, -1, -1).gather(2, draws.argmax(dim=2, keepdim=True)).squeeze(2)  # (T, W)
    keep_mask = torch.zeros(T, N, dtype=torch.bool, device=device).scatter_(1, chosen, True)
    return _selection(features, "random_2x2", keep_mask, chosen.numel())


# --- EVS (vLLM) ------------------------------------------------------------------------------------


def _evs(features: torch.Tensor, retain_ratio: float) -> Selection:
    """vLLM's EVS rule with pruning rate q = 1 - R.

    Each token's dissimilarity to the same position of the previous group, 1 - cos, in the
    features' own dtype (vLLM computes it in the embeddings' dtype); the first group gets 255 and
    so outranks every token. The video's top max(N, int(T*N*(1-q))) tokens survive, by a stable
    descending sort of the flat (T*N) scores: ties go to the lower flat index.
    """
    T, N, _ = features.shape
    q = 1.0 - retain_ratio
    total = max(N, int(T * N * (1 - q)))  # vLLM's retained count, with its float arithmetic
    similarity = F.cosine_similarity(features[1:], features[:-1], dim=-1)  # (T-1, N)
    first = torch.full_like(features[:1, :, 0], 255)  # (1, N)
    dissimilarity = torch.cat([first, 1 - similarity])  # (T, N)
    order = torch.argsort(dissimilarity.flatten(), descending=True, stable=True)  # (T*N,)
    keep_mask = torch.zeros(T * N, dtype=torch.bool, device=features.device)
    keep_mask[order[:total]] = True
    return _selection(features, "evs", keep_mask.view(T, N), total, scores=dissimilarity)


# --- VidCom2 (official code) -----------------------------------------------------------------------


def _vidcom2(features: torch.Tensor, retain_ratio: float) -> Selection:
    """VidCom2 as its official code runs it for Qwen-VL models, in the features' own dtype.

    Scores: minus the summed similarity to the video centre and to the group's centre (higher is
    kept first). Weights: each group's share of the unrounded budgets, scale_t / sum(scale).
    """
    T, N, D = features.shape
    x = features.reshape(T * N, D)  # (T*N, D) every token of the video
    # 1. The half of the channels with the lowest (population) variance over all tokens, ascending;
    #    ties to the lower channel (the official topk leaves them unspecified). Then unit length.
    variances = x.var(dim=0, unbiased=False)  # (D,)
    channels = torch.argsort(variances, stable=True)[: int(D * 0.5)]
    tokens = F.normalize(x[:, channels], dim=-1).view(T, N, -1)  # (T, N, D/2)
    # 2. Multi-scale Gaussian similarity to the video centre and to each group's centre (plain
    #    means of the unit tokens, not normalised again).
    to_video = _multi_scale_gaussian(tokens, tokens.mean(dim=(0, 1), keepdim=True))  # (T, N)
    to_group = _multi_scale_gaussian(tokens, tokens.mean(dim=1, keepdim=True))  # (T, N)
    # 3. Groups least like the video get more: scale_t = R * (1 + p_t - mean p), at most 1, with
    #    p = softmax(importance / 0.01); k_t = round(scale_t * N) (torch.round: half to even), >= 1.
    importance = -to_video.mean(dim=1)  # (T,)
    p = torch.softmax((importance - importance.max()) / _VIDCOM2_TEMPERATURE, dim=0)
    scales = (retain_ratio * (1 + p - p.mean())).clamp(max=1.0)  # (T,)
    budgets = (scales * N).round().long().clamp(min=1)  # (T,)
    # 4. Each group keeps its k_t tokens least similar to both centres; ties to the lower index.
    scores = -(to_video + to_group)  # (T, N)
    keep_mask = top_budget_mask(scores, budgets)
    shares = scales.float() / scales.float().sum()  # (T,) float32 even for half-precision scales
    return _selection(features, "vidcom2", keep_mask, int(budgets.sum()), scores=scores, weights=shares)


def _multi_scale_gaussian(tokens: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(T, N, C) tokens, a centre broadcastable to them -> (T, N): sum_a exp(-||x - c||^2 / (2a))."""
    dist_sq = ((tokens - centre) ** 2).sum(dim=-1)  # (T, N)
    return sum(torch.exp(-dist_sq / (2 * a)) for a in _VIDCOM2_BANDWIDTHS)
