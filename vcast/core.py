"""V-CAST token selection: curvature, budgets, scores and the composer, in pure torch.

Everything here is vectorised over temporal groups ("frames"): no Python loop over T and no
per-frame host sync, so that selection costs a fraction of a millisecond on a GPU.
Paper: Lin et al. 2026, "Video Curvature-Aware Spatio-Temporal Pruning".
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import VCastConfig

_EPS = 1e-8
_DEFAULT_CONFIG = VCastConfig()
_MAX_KERNEL_TOKENS = 16384  # the per-group kernels hold one group's N scores in registers


@dataclass(frozen=True)
class Selection:
    """Which visual tokens survive, and why. Tensors live on the input's device.

    keep: (K,) int64, ascending flat indices into T * N (row-major over (t, n)).
    keep_mask: (T, N) bool, True where a token is kept; keep_mask.flatten()[keep] is all True.
    budgets: (T,) int64, tokens kept per temporal group; sums to K.
    curvature: (T,) float32, 1 - cos of consecutive trajectory steps, in [0, 2]; endpoints 1.
        Always the video's curvature, whichever method selected, so any method plots against it.
    weights: (T,) float32, the allocation weights (softmax(curvature / temperature) for V-CAST;
        1/T for methods without an allocation).
    scores: (T, N) float32, the method's own per-token score (V-CAST: dual-anchor); higher is kept
        first; NaN where a method has no per-token score.
    method: the name of the method that made this selection (a key of `vcast.METHODS`).
    assign: None for pure pruning; for merging methods (T*N,) int64, the kept slot (an index into
        `keep`) each token is averaged into, -1 where a token is dropped.
    """

    keep: torch.Tensor
    keep_mask: torch.Tensor
    budgets: torch.Tensor
    curvature: torch.Tensor
    weights: torch.Tensor
    scores: torch.Tensor
    method: str = "vcast"
    assign: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Selection:
        """The same selection with every tensor on `device` (e.g. "cpu" for figures and records)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Selection(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def _compute_input(features: torch.Tensor) -> torch.Tensor:
    """Half-precision stays as is (kernels accumulate in float32); anything wider becomes float32."""
    return features if features.dtype in (torch.float16, torch.bfloat16, torch.float32) else features.float()


def check_features(features: torch.Tensor) -> None:
    """ValueError unless `features` is a non-empty (T, N, D) float tensor."""
    if features.dim() != 3 or 0 in features.shape:
        raise ValueError(f"features must be a non-empty (T, N, D) tensor, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a float tensor, got {features.dtype}")


def frame_means(features: torch.Tensor) -> torch.Tensor:
    """(T, N, D) any float -> (T, D) float32: the L2-normalised mean token of each group."""
    features = _compute_input(features)
    return F.normalize(features.mean(dim=1, dtype=torch.float32), dim=-1, eps=_EPS)


def frame_curvature(frame_means: torch.Tensor) -> torch.Tensor:
    """Discrete curvature of the frame trajectory.

    frame_means: (T, D) float, one vector per temporal group (normalised here).
    Returns (T,) float32: c_t = 1 - cos(m_t - m_{t-1}, m_{t+1} - m_t) for 0 < t < T-1, in [0, 2];
    the endpoints have no turn to measure and get 1 (the value of a right-angle turn), so they
    are neither favoured nor starved. A step of zero length counts as cos = 0, i.e. curvature 1.
    """
    if _use_triton(frame_means):
        from ._kernels import curvature_triton

        return curvature_triton(frame_means, _EPS)
    m = F.normalize(frame_means.float(), dim=-1, eps=_EPS)
    curvature = torch.ones(m.shape[0], dtype=torch.float32, device=m.device)
    if m.shape[0] >= 3:
        steps = m[1:] - m[:-1]  # (T-1, D)
        lengths = torch.linalg.vector_norm(steps, dim=-1)  # (T-1,)
        dots = (steps[:-1] * steps[1:]).sum(dim=-1)  # (T-2,)
        curvature[1:-1] = 1.0 - dots / (lengths[:-1] * lengths[1:]).clamp_min(_EPS)
    return curvature


def video_curvature(features: torch.Tensor) -> torch.Tensor:
    """(T, N, D) any float -> (T,) float32: the curvature of the group means, exactly as
    `select_tokens` computes it, so that every method's selection can be plotted against it."""
    return frame_curvature(_group_means(features))


def _group_means(features: torch.Tensor) -> torch.Tensor:
    """(T, N, D) any float -> (T, D) float32 mean token of each group (not normalised)."""
    return _compute_input(features).mean(dim=1, dtype=torch.float32)


def uniqueness(frame_means: torch.Tensor) -> torch.Tensor:
    """Global uniqueness of each group: u_t = 1 - cos(m_t, g), g = normalize(mean_t m_t).

    (T, D) -> (T,) float32 in [0, 2]. Frames least like the video as a whole score highest, as in
    VidCom2's global-uniqueness allocation; weights are then softmax(u / temperature).
    """
    m = F.normalize(frame_means.float(), dim=-1, eps=_EPS)
    g = F.normalize(m.mean(dim=0, keepdim=True), dim=-1, eps=_EPS)  # (1, D)
    return 1.0 - (m * g).sum(dim=-1)


def allocation_weights(
    curvature: torch.Tensor, frame_means: torch.Tensor, *, allocation: str, temperature: float
) -> torch.Tensor:
    """(T,) float32 weights summing to 1 for one of the strategies of VCastConfig.allocation."""
    # float(): an int temperature beyond int64 would not convert to a tensor scalar.
    if allocation == "curvature":
        return torch.softmax(curvature / float(temperature), dim=0)
    if allocation == "uniqueness":
        return torch.softmax(uniqueness(frame_means) / float(temperature), dim=0)
    if allocation == "uniform":
        return torch.full_like(curvature, 1.0 / curvature.shape[0])
    raise ValueError(f"allocation must be 'curvature', 'uniform' or 'uniqueness', got {allocation!r}")


def allocate_budgets(weights: torch.Tensor, total: int, *, min_per_frame: int, cap: int) -> torch.Tensor:
    """Split `total` tokens over T groups in proportion to `weights`, exactly.

    weights: (T,) finite, non-negative, with a positive sum. Every group first gets
    `min_per_frame`; the rest is split by the weights with no group above `cap` (water-filling: the
    excess of a capped group flows to the others in proportion), then rounded by largest remainder:
    floors first, then +1 to the largest fractional parts, ties to the earlier group.
    Returns (T,) int64 on the weights' device, with sum == total and min_per_frame <= b_t <= cap.

    Runs on the host in float64 (T numbers): exact integer bookkeeping without a chain of tiny
    device kernels; a device tensor costs one copy of T values.
    """
    w = weights.detach().to("cpu", torch.float64).numpy()
    num_frames = w.shape[0]
    if not 0 <= min_per_frame <= cap:
        raise ValueError(f"need 0 <= min_per_frame <= cap, got min_per_frame={min_per_frame}, cap={cap}")
    if not num_frames * min_per_frame <= total <= num_frames * cap:
        raise ValueError(
            f"total must lie in [T*min_per_frame, T*cap] = [{num_frames * min_per_frame}, {num_frames * cap}],"
            f" got {total}"
        )
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError("weights must be finite, non-negative and not all zero")
    rest, room = total - num_frames * min_per_frame, cap - min_per_frame
    budgets = min_per_frame + _largest_remainder(_water_fill(w, rest, room), rest, room)
    return torch.from_numpy(budgets).to(weights.device)


def _water_fill(weights: np.ndarray, rest: int, room: int) -> np.ndarray:
    """Real-valued shares s_t = min(room, lam * w_t) with sum_t s_t = rest, without a loop.

    With the weights sorted descending, saturating the k heaviest groups leaves
    lam_k = (rest - k * room) / sum_{j >= k} w_j for the others; the answer is the first k whose
    heaviest unsaturated group stays under the cap (lam_k * w_k <= room).
    """
    w = np.maximum(weights / weights.sum(), 1e-12)  # a zero weight would make lam infinite
    w_sorted = np.sort(w)[::-1]
    tail = np.cumsum(w_sorted[::-1])[::-1]  # (T,) tail[k] = sum_{j >= k} w_sorted[j]
    lam = (rest - np.arange(w.shape[0]) * room) / tail
    first_ok = np.argmax(lam * w_sorted <= room * (1 + 1e-12))
    return np.minimum(lam[first_ok] * w, room)


def _largest_remainder(share: np.ndarray, rest: int, room: int) -> np.ndarray:
    """Round real shares (sum == rest, each <= room) to int64 with the same sum, stably."""
    base = np.clip(np.floor(share), 0, room).astype(np.int64)
    frac = share - base
    missing = rest - int(base.sum())  # 0 <= missing < T, up to float error
    if missing > 0:  # largest fractions first, ties to the earlier group, only groups below the cap
        order = np.argsort(-np.where(base < room, frac, -1.0), kind="stable")
        base[order[:missing]] += 1
    elif missing < 0:  # float error overshot: take back from the smallest fractions
        order = np.argsort(np.where(base > 0, frac, 2.0), kind="stable")
        base[order[:-missing]] -= 1
    return base


def token_scores(features: torch.Tensor, frame_means: torch.Tensor) -> torch.Tensor:
    """Dual-anchor score of every token: (1 - cos(x, m_t)) + minmax_n(||x||).

    features: (T, N, D) float (any dtype, computed in float32); frame_means: (T, D) float, the
    group anchors (normalised here). Returns (T, N) float32, in [0, 3]. The first term favours
    tokens unlike their frame's gist (distinct content), the second tokens with large activations
    (salient content); min-max is per group, and a group whose norms are all equal gets 0 from it.
    """
    features = _compute_input(features)
    if _use_triton(features) and features.shape[1] <= _MAX_KERNEL_TOKENS:
        from ._kernels import token_scores_triton

        return token_scores_triton(features, frame_means, _EPS)
    m = F.normalize(frame_means.float(), dim=-1, eps=_EPS)  # (T, D)
    x = features.float()
    norms = torch.linalg.vector_norm(x, dim=-1)  # (T, N)
    cos = torch.bmm(x, m.unsqueeze(-1)).squeeze(-1) / norms.clamp_min(_EPS)  # (T, N)
    lo = norms.amin(dim=1, keepdim=True)
    hi = norms.amax(dim=1, keepdim=True)
    spread = (norms - lo) / (hi - lo).clamp_min(_EPS)
    return (1.0 - cos) + spread


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _use_triton(x: torch.Tensor) -> bool:
    """The fused kernels serve CUDA tensors where Triton is installed; plain torch serves the rest."""
    return x.is_cuda and _triton_available()


def _to_host_async(x: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying a small device tensor to pinned host memory; the event marks its arrival.

    Unlike `.cpu()`, this returns at once, so the caller can queue more device work first.
    """
    if not x.is_cuda:
        return x, None
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def top_budget_mask(scores: torch.Tensor, budgets: torch.Tensor) -> torch.Tensor:
    """(T, N) scores, (T,) int64 budgets on the same device -> (T, N) bool: the top budgets[t]
    tokens of each group (highest score first), ties to the lower index."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # (T, N)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # (T, N) rank of each token
    return rank < budgets.unsqueeze(1)


def _keep(scores: torch.Tensor, budgets_host: torch.Tensor, total: int) -> tuple[torch.Tensor, ...]:
    """Budgets on the device, the (T, N) keep mask and the (K,) ascending flat keep indices."""
    device = scores.device
    if _use_triton(scores) and scores.shape[1] <= _MAX_KERNEL_TOKENS:
        from ._kernels import keep_triton

        # Budgets and each group's first slot in `keep` travel to the device in one copy. Rows of an even
        # length keep the second row 16-byte aligned: Triton compiles a kernel anew for a misaligned pointer.
        groups = budgets_host.shape[0]
        packed = torch.zeros(2, groups + groups % 2, dtype=budgets_host.dtype)
        packed[0, :groups] = budgets_host
        packed[1, :groups] = torch.cumsum(budgets_host, 0) - budgets_host
        packed = packed.to(device, non_blocking=True)
        keep_mask, keep = keep_triton(scores, packed[0, :groups], packed[1, :groups], total)
        return packed[0, :groups], keep_mask, keep
    budgets = budgets_host.to(device, non_blocking=True)
    keep_mask = top_budget_mask(scores, budgets)  # (T, N)
    # The count is known on the host, so nonzero needs no sync.
    keep = torch.nonzero_static(keep_mask.flatten(), size=total).squeeze(1)  # (K,)
    return budgets, keep_mask, keep


def total_budget(num_frames: int, tokens_per_frame: int, config: VCastConfig) -> int:
    """The number of tokens kept: clamp(round(T*N*R), 1, T*N), at least T*min_tokens_per_frame.

    Python's round, half to even (24.5 -> 24, 25.5 -> 26), as the reference implementation rounds;
    T*N*R is the float product, so a ratio that is not a binary fraction rounds as its float does.
    """
    all_tokens = num_frames * tokens_per_frame
    total = min(max(round(all_tokens * config.retain_ratio), 1), all_tokens)
    return max(total, num_frames * min(config.min_tokens_per_frame, tokens_per_frame))


def select_tokens(features: torch.Tensor, config: VCastConfig | None = None, **overrides) -> Selection:
    """V-CAST: choose which of a video's merged visual tokens to keep.

    features: (T, N, D) float tensor, T temporal groups of N tokens (any device and dtype).
    config: a VCastConfig; keyword overrides replace its fields (select_tokens(x, retain_ratio=0.1)).
    Returns a Selection; kept tokens keep their original (t, n) place, given by `keep`.
    """
    config = dataclasses.replace(config or _DEFAULT_CONFIG, **overrides) if overrides else config or _DEFAULT_CONFIG
    check_features(features)
    features = _compute_input(features)
    num_frames, tokens_per_frame, _ = features.shape

    # 1-2. Frame trajectory (group means, normalised where used), curvature, allocation weights:
    #      T numbers, on the device.
    means = _group_means(features)  # (T, D)
    curvature = frame_curvature(means)  # (T,)
    weights = allocation_weights(curvature, means, allocation=config.allocation, temperature=config.temperature)

    # The weights go to the host, where the exact integer budgets are cheap; this copy is the
    # only synchronisation of the whole selection, and the scoring below is queued before it.
    weights_host, arrived = _to_host_async(weights)

    # 4 (queued early). Dual-anchor scores of every token: the one heavy pass over the features.
    scores = token_scores(features, means)  # (T, N)

    # 3. Exact per-group budgets, on the host.
    if arrived is not None:
        arrived.synchronize()
    total = total_budget(num_frames, tokens_per_frame, config)
    min_per_frame = min(config.min_tokens_per_frame, tokens_per_frame)
    budgets = allocate_budgets(weights_host, total, min_per_frame=min_per_frame, cap=tokens_per_frame)

    # 4-5. The top budgets[t] tokens of each group survive, as a mask and as ascending flat indices.
    budgets, keep_mask, keep = _keep(scores, budgets, total)
    return Selection(
        keep=keep, keep_mask=keep_mask, budgets=budgets, curvature=curvature, weights=weights, scores=scores
    )
