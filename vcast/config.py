"""The method's settings: one frozen, validated dataclass passed explicitly everywhere."""

from __future__ import annotations

from dataclasses import dataclass

ALLOCATIONS = ("curvature", "uniform", "uniqueness")


@dataclass(frozen=True, kw_only=True)
class VCastConfig:
    """Settings of V-CAST token selection.

    retain_ratio: share of visual tokens kept, in (0, 1]; the total budget is round(T * N * R).
    temperature: softmax temperature of the curvature (or uniqueness) weights, > 0.
    min_tokens_per_frame: tokens every temporal group keeps before the weighted split, >= 0.
    allocation: how the budget is split over temporal groups: "curvature" (V-CAST),
        "uniform" (equal shares) or "uniqueness" (global-uniqueness, as in VidCom2).
    """

    retain_ratio: float = 0.25
    temperature: float = 0.7
    min_tokens_per_frame: int = 1
    allocation: str = "curvature"

    def __post_init__(self) -> None:
        # bool is an int subclass; True as a ratio or a count is always a caller's mistake.
        if isinstance(self.retain_ratio, bool) or not isinstance(self.retain_ratio, (int, float)):
            raise ValueError(f"retain_ratio must be a number in (0, 1], got {self.retain_ratio!r}")
        if not 0.0 < self.retain_ratio <= 1.0:
            raise ValueError(f"retain_ratio must be in (0, 1] (e.g. 0.25 keeps 25%), got {self.retain_ratio!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"temperature must be a number > 0, got {self.temperature!r}")
        if not self.temperature > 0.0 or self.temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if isinstance(self.min_tokens_per_frame, bool) or not isinstance(self.min_tokens_per_frame, int):
            raise ValueError(f"min_tokens_per_frame must be an integer >= 0, got {self.min_tokens_per_frame!r}")
        if self.min_tokens_per_frame < 0:
            raise ValueError(f"min_tokens_per_frame must be >= 0, got {self.min_tokens_per_frame!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(map(repr, ALLOCATIONS))}, got {self.allocation!r}")
