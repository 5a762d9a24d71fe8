"""A V-CAST selection as plain numpy (`SelectionRecord`) and as JSON, so the numbers can go elsewhere.

No torch import: a torch tensor (any device) is turned into numpy by duck typing (`as_numpy`).
The JSON holds, per temporal group: its time, curvature, allocation weight, budget and the
(row, col) cells of the token grid that were kept. `load_selection_json(save_selection_json(r))`
gives back `r` exactly (floats are written with repr precision).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

JSON_FORMAT = "vcast-selection"
JSON_VERSION = 1


def as_numpy(x: Any) -> np.ndarray:
    """A torch tensor on any device (detached, moved to the CPU) or any array-like -> np.ndarray."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def group_times(timestamps_s: Sequence[float] | np.ndarray, frames_per_group: int = 2) -> np.ndarray:
    """(F,) sampled-frame times in seconds -> (ceil(F / frames_per_group),) float64 group times.

    A group's time is the mean of its frames' times, as Qwen3-VL writes in its `<t seconds>`
    prompt tokens; a last, incomplete group (odd F) takes the mean of the frames it has, which is
    what the model sees too, since its processor pads by repeating the last frame.
    """
    t = np.asarray(timestamps_s, dtype=np.float64).reshape(-1)
    if t.size == 0 or frames_per_group < 1:
        raise ValueError(f"need at least one timestamp and frames_per_group >= 1, got {t.size}, {frames_per_group}")
    pad = (-t.size) % frames_per_group
    t = np.concatenate([t, np.repeat(t[-1:], pad)])  # repeat the last frame, as the processor does
    return t.reshape(-1, frames_per_group).mean(axis=1)


@dataclass(frozen=True)
class SelectionRecord:
    """One video's token selection in numpy, on the token grid of its temporal groups.

    times_s: (T,) float64, seconds, the time of each temporal group (see `group_times`).
    curvature: (T,) float32, in [0, 2].
    weights: (T,) float32, allocation weights, sum to 1.
    budgets: (T,) int64, tokens kept per group, 0 <= budgets[t] <= rows * cols.
    keep_mask: (T, rows, cols) bool, True where a merged token is kept; row-major over the grid,
        so keep_mask[t].reshape(-1) is the group's (N,) mask in the model's token order.
    scores: optional (T, rows, cols) float32, the dual-anchor scores (not written to JSON).
    config: the settings that produced it (e.g. dataclasses.asdict(VCastConfig)), JSON-able values.
    frames_per_group: sampled frames per temporal group (2 for Qwen3-VL / Qwen2.5-VL).
    """

    times_s: np.ndarray
    curvature: np.ndarray
    weights: np.ndarray
    budgets: np.ndarray
    keep_mask: np.ndarray
    scores: np.ndarray | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    frames_per_group: int = 2

    def __post_init__(self) -> None:
        # Normalise dtypes once here so every consumer can rely on them; frozen, hence __setattr__.
        cast = {"times_s": np.float64, "curvature": np.float32, "weights": np.float32, "budgets": np.int64}
        for name, dtype in cast.items():
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype).reshape(-1))
        object.__setattr__(self, "keep_mask", np.asarray(self.keep_mask, dtype=bool))
        if self.keep_mask.ndim != 3:
            raise ValueError(f"keep_mask must be (T, rows, cols), got shape {self.keep_mask.shape}")
        num_groups = self.keep_mask.shape[0]
        for name in cast:
            if getattr(self, name).shape != (num_groups,):
                raise ValueError(
                    f"{name} must have shape ({num_groups},) like keep_mask, got {getattr(self, name).shape}"
                )
        if not np.array_equal(self.keep_mask.sum(axis=(1, 2)), self.budgets):
            raise ValueError("budgets must equal the number of kept cells of each group in keep_mask")
        if self.scores is not None:
            object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32))
            if self.scores.shape != self.keep_mask.shape:
                raise ValueError(f"scores must have keep_mask's shape {self.keep_mask.shape}, got {self.scores.shape}")
        object.__setattr__(self, "config", dict(self.config))

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(rows, cols) of the merged-token grid of one group."""
        return int(self.keep_mask.shape[1]), int(self.keep_mask.shape[2])

    @property
    def tokens_per_group(self) -> int:
        """N = rows * cols."""
        rows, cols = self.grid_hw
        return rows * cols

    @classmethod
    def from_selection(
        cls,
        selection: Any,
        *,
        times_s: Sequence[float] | np.ndarray,
        grid_hw: tuple[int, int],
        config: Any = None,
        frames_per_group: int = 2,
    ) -> SelectionRecord:
        """Build from a `vcast.Selection` (torch tensors on any device) or any object with its fields.

        times_s: (T,) group times in seconds (`group_times(clip.timestamps)`).
        grid_hw: (rows, cols) of the merged-token grid, rows * cols == N (for Qwen3-VL,
            (grid_h // 2, grid_w // 2) of the processor's video_grid_thw).
        config: a VCastConfig (dataclass) or a mapping, stored for the JSON; None stores nothing.
        """
        keep_mask = as_numpy(selection.keep_mask)  # (T, N)
        rows, cols = grid_hw
        if keep_mask.ndim != 2 or keep_mask.shape[1] != rows * cols:
            raise ValueError(
                f"grid_hw {grid_hw} does not match keep_mask of shape {keep_mask.shape}: need rows*cols == N"
            )
        num_groups = keep_mask.shape[0]
        scores = as_numpy(selection.scores).reshape(num_groups, rows, cols)
        return cls(
            times_s=np.asarray(times_s),
            curvature=as_numpy(selection.curvature),
            weights=as_numpy(selection.weights),
            budgets=as_numpy(selection.budgets),
            keep_mask=keep_mask.reshape(num_groups, rows, cols),
            scores=scores,
            config=_config_dict(config),
            frames_per_group=frames_per_group,
        )


def selection_records(result: Any) -> dict[str, SelectionRecord]:
    """Every method's selection in a `vcast.QAResult` (read by duck typing: `selections`, `group_times`, `grid`,
    `config`, `frames_per_group`) as a SelectionRecord, by method name, in the result's order."""
    return {
        method: SelectionRecord.from_selection(
            selection, times_s=result.group_times, grid_hw=tuple(result.grid[1:]), config=result.config,
            frames_per_group=result.frames_per_group,
        )
        for method, selection in result.selections.items()
    }


def _config_dict(config: Any) -> dict[str, Any]:
    """A dataclass (e.g. VCastConfig), a mapping or None -> a plain dict."""
    if config is None:
        return {}
    if hasattr(config, "__dataclass_fields__"):
        return {name: getattr(config, name) for name in config.__dataclass_fields__}
    return dict(config)


def _short_float(x: np.float32) -> float:
    """The shortest decimal that reads back as the same float32 (0.10829646, not 0.1082964614033699)."""
    return float(str(np.float32(x)))


def selection_to_dict(record: SelectionRecord) -> dict[str, Any]:
    """The JSON-able form: header (grid, config, totals) and one entry per temporal group."""
    rows, cols = record.grid_hw
    groups = []
    for t in range(record.keep_mask.shape[0]):
        cells = np.argwhere(record.keep_mask[t])  # (budget, 2) row-major order
        groups.append(
            {
                "index": t,
                "time_s": float(record.times_s[t]),
                "curvature": _short_float(record.curvature[t]),
                "weight": _short_float(record.weights[t]),
                "budget": int(record.budgets[t]),
                "kept_cells": cells.tolist(),
            }
        )
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "grid": {"rows": rows, "cols": cols},
        "tokens_per_group": rows * cols,
        "frames_per_group": record.frames_per_group,
        "num_groups": len(groups),
        "total_kept": int(record.budgets.sum()),
        "total_tokens": len(groups) * rows * cols,
        "config": record.config,
        "groups": groups,
    }


def selection_from_dict(data: Mapping[str, Any]) -> SelectionRecord:
    """Inverse of `selection_to_dict` (scores are not stored and come back as None)."""
    if data.get("format") != JSON_FORMAT or data.get("version") != JSON_VERSION:
        raise ValueError(
            f"not a V-CAST selection file: expected format {JSON_FORMAT!r} version {JSON_VERSION}, "
            f"got {data.get('format')!r} version {data.get('version')!r}"
        )
    rows, cols = int(data["grid"]["rows"]), int(data["grid"]["cols"])
    groups = data["groups"]
    keep_mask = np.zeros((len(groups), rows, cols), dtype=bool)
    for t, group in enumerate(groups):
        cells = np.asarray(group["kept_cells"], dtype=np.int64).reshape(-1, 2)
        keep_mask[t, cells[:, 0], cells[:, 1]] = True
    return SelectionRecord(
        times_s=np.array([g["time_s"] for g in groups]),
        curvature=np.array([g["curvature"] for g in groups]),
        weights=np.array([g["weight"] for g in groups]),
        budgets=np.array([g["budget"] for g in groups]),
        keep_mask=keep_mask,
        config=data.get("config", {}),
        frames_per_group=int(data.get("frames_per_group", 2)),
    )


def selection_to_json(record: SelectionRecord) -> str:
    """The selection as a JSON string (layout: `selection_to_dict`), one line per group so it diffs and reads well."""
    data = selection_to_dict(record)
    groups = data.pop("groups")
    head = json.dumps(data, indent=1)[: -len("\n}")]
    body = ",\n".join("  " + json.dumps(group) for group in groups)
    return f'{head},\n "groups": [\n{body}\n ]\n}}\n'


def selection_from_json(text: str) -> SelectionRecord:
    """Parse a string written by `selection_to_json`."""
    return selection_from_dict(json.loads(text))


def save_selection_json(record: SelectionRecord, path: str | Path) -> Path:
    """Write the selection to `path` (UTF-8 JSON) and return the path."""
    path = Path(path)
    path.write_text(selection_to_json(record), encoding="utf-8")
    return path


def load_selection_json(path: str | Path) -> SelectionRecord:
    """Read a file written by `save_selection_json`."""
    return selection_from_json(Path(path).read_text(encoding="utf-8"))
