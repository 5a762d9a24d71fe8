"""The method's settings: one frozen, validated dataclass passed explicitly everywhere."""

from __future__ import annotations

import math
from dataclasses import dataclass

ALLOCATIONS = ("curvature", "uniform", "uniqueness")
# Allocation weights are softmax(c / temperature) in float32 with c in [0, 2] (curvature or
# uniqueness). c / t overflows float32 (max 3.4e38) below t = 2 / 3.4e38 ~ 5.9e-39, and the
# softmax of an inf is NaN; the floor sits eight decades above that edge, so rounding in c (a hair
# above 2) or a reciprocal computed on the way cannot reach it. Any t this small is already an argmax.
MIN_TEMPERATURE = 1e-30


def check_retain_ratio(retain_ratio: object) -> float:
    """`retain_ratio` as a float if it is a finite number in (0, 1]; ValueError saying the range if not."""
    # bool is an int subclass; True as a ratio is always a caller's mistake.
    if isinstance(retain_ratio, bool) or not isinstance(retain_ratio, (int, float)):
        raise ValueError(f"retain_ratio must be a number in (0, 1], got {retain_ratio!r}")
    if not (0.0 < retain_ratio <= 1.0 and _finite(retain_ratio)):
        raise ValueError(f"retain_ratio must be in (0, 1] (e.g. 0.25 keeps 25%), got {retain_ratio!r}")
    return float(retain_ratio)


def _finite(number: float) -> bool:
    """math.isfinite, with an int too large for a float counting as infinite."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


@dataclass(frozen=True, kw_only=True)
class VCastConfig:
    """Settings of V-CAST token selection.

    retain_ratio: share of visual tokens kept, a finite number in (0, 1]; the total budget is
        round(T * N * R) with Python's round (half to even).
    temperature: softmax temperature of the curvature (or uniqueness) weights, finite and
        >= MIN_TEMPERATURE (1e-30; below it the weights overflow float32).
    min_tokens_per_frame: tokens every temporal group keeps before the weighted split, >= 0.
    allocation: how the budget is split over temporal groups: "curvature" (V-CAST),
        "uniform" (equal shares) or "uniqueness" (global-uniqueness, as in VidCom2).
    """

    retain_ratio: float = 0.25
    temperature: float = 0.7
    min_tokens_per_frame: int = 1
    allocation: str = "curvature"

    def __post_init__(self) -> None:
        check_retain_ratio(self.retain_ratio)
        # bool is an int subclass; True as a temperature or a count is always a caller's mistake.
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"temperature must be a finite number >= {MIN_TEMPERATURE:g}, got {self.temperature!r}")
        if not (_finite(self.temperature) and self.temperature >= MIN_TEMPERATURE):
            raise ValueError(
                f"temperature must be a finite number >= {MIN_TEMPERATURE:g} (below it"
                f" softmax(curvature / temperature) overflows float32), got {self.temperature!r}"
            )
        if isinstance(self.min_tokens_per_frame, bool) or not isinstance(self.min_tokens_per_frame, int):
            raise ValueError(f"min_tokens_per_frame must be an integer >= 0, got {self.min_tokens_per_frame!r}")
        if self.min_tokens_per_frame < 0:
            raise ValueError(f"min_tokens_per_frame must be >= 0, got {self.min_tokens_per_frame!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(map(repr, ALLOCATIONS))}, got {self.allocation!r}")
