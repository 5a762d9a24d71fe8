"""Accuracy, retention and paired bootstrap intervals (numpy only).

The bootstrap resamples videos, not questions: Video-MME asks three questions per video and their
answers are correlated, so resampling questions would give intervals that are too narrow. Every pass is
scored on the same resampled videos (paired), so the interval of a difference between two passes holds
only the variation that actually separates them. Intervals are plain percentile intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
_CHUNK_CELLS = 4_000_000  # resamples x videos drawn at once: bounded memory for any benchmark size


def bootstrap_accuracies(
    correct: np.ndarray, clusters: Sequence[str], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Accuracy of each pass on `resamples` cluster-bootstrap draws, the same draws for every pass.

    correct: (I, P) bool or 0/1, item i answered right by pass p. clusters: (I,) the video of each item.
    Returns (resamples, P) float64 accuracies in [0, 1]. Each draw takes as many videos as there are, with
    replacement (multinomial counts), and pools their questions.
    """
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim != 2 or correct.shape[0] == 0 or len(clusters) != correct.shape[0]:
        raise ValueError(
            f"need (items, passes) scores with one cluster per item, got {correct.shape} and {len(clusters)}"
        )
    _, inverse = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    n_clusters = int(inverse.max()) + 1
    sums = np.zeros((n_clusters, correct.shape[1]))
    np.add.at(sums, inverse, correct)  # (C, P) right answers per video
    sizes = np.bincount(inverse, minlength=n_clusters).astype(np.float64)  # (C,) questions per video
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, correct.shape[1]))
    step = max(1, _CHUNK_CELLS // n_clusters)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        draws = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=rows)  # (rows, C)
        out[start : start + rows] = (draws @ sums) / (draws @ sizes)[:, None]
    return out


def percentile_interval(values: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (NaNs ignored)."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():  # e.g. retention when the unpruned pass got nothing right
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def pass_statistics(
    correct: np.ndarray,
    clusters: Sequence[str],
    names: Sequence[str],
    *,
    reference: str = "full",
    anchor: str | None = "vcast",
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, dict]:
    """Per pass: accuracy and its interval; against `reference` (the unpruned pass): the difference in
    accuracy, its interval, retention (accuracy / reference accuracy) and its interval; against `anchor`
    (V-CAST, when scored): the difference and its interval. Accuracies and differences are fractions."""
    names = list(names)
    correct = np.asarray(correct, dtype=np.float64)
    draws = bootstrap_accuracies(correct, clusters, resamples=resamples, seed=seed)  # (B, P)
    accuracy = correct.mean(axis=0)
    ref = names.index(reference)
    stats: dict[str, dict] = {}
    for p, name in enumerate(names):
        entry = {"accuracy": float(accuracy[p]), "accuracy_ci": percentile_interval(draws[:, p], level)}
        if p != ref:
            entry["delta_full"] = float(accuracy[p] - accuracy[ref])
            entry["ci"] = percentile_interval(draws[:, p] - draws[:, ref], level)
            entry["retention"] = float(_ratio(accuracy[p], accuracy[ref]))
            entry["retention_ci"] = percentile_interval(_ratio(draws[:, p], draws[:, ref]), level)
        if anchor in names and name not in (anchor, reference):
            a = names.index(anchor)
            entry["delta_vcast"] = float(accuracy[p] - accuracy[a])
            entry["ci_vcast"] = percentile_interval(draws[:, p] - draws[:, a], level)
        stats[name] = entry
    return stats
