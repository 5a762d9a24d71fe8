"""Every method's selection of one answer, ready to draw: per-frame overlays, a contact sheet, the budget figure.

Plain records in (a `vcast.QAResult` is read by duck typing), arrays and figures out; no torch, no gradio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .export import SelectionRecord, selection_records
from .overlays import captioned_overlays, contact_sheet, resize_frames
from .plots import AllocationRecord, allocation_figure


@dataclass(frozen=True)
class SelectionView:
    """frames: (F, h, w, 3) uint8 RGB at display size; times_s: (F,) float64 s; records: method name ->
    SelectionRecord, in the answer's order; labels: method name -> display name; allocations: other allocations of
    V-CAST's total (name -> (T,) budgets), shown when V-CAST is the only method."""

    frames: np.ndarray
    times_s: np.ndarray
    records: dict[str, SelectionRecord]
    labels: dict[str, str]
    allocations: dict[str, np.ndarray]

    @classmethod
    def of(cls, result: Any, labels: Mapping[str, str], *, max_side_px: int = 640) -> SelectionView:
        """From a `vcast.QAResult` (its `clip`, `selections`, `allocations`, `config`, grid and group times)."""
        others = {a: np.asarray(b) for a, b in result.allocations.items() if a != result.config.allocation}
        return cls(resize_frames(result.clip.frames, max_side_px), np.asarray(result.clip.timestamps, np.float64),
                   selection_records(result), {m: labels.get(m, m) for m in result.selections}, others)  # fmt: skip

    @property
    def main(self) -> str:
        """The method drawn as bars: V-CAST where it ran, else the first."""
        return "vcast" if "vcast" in self.records else next(iter(self.records))

    def _common(self, method: str, heatmap: bool) -> dict[str, Any]:
        r = self.records[method]
        return {"times_s": self.times_s, "mode": "heatmap" if heatmap else "kept", "scores": r.scores,
                "frames_per_group": r.frames_per_group}  # fmt: skip

    def gallery(self, method: str, heatmap: bool = False) -> list[tuple[np.ndarray, str]]:
        """(overlay, caption) per sampled frame for `method`."""
        return captioned_overlays(self.frames, self.records[method].keep_mask, **self._common(method, heatmap))

    def sheet(self, method: str, heatmap: bool = False) -> np.ndarray:
        """(H, W, 3) uint8 RGB contact sheet of `method`: two tiles a row with large captions, legible even where a
        phone shows it 360 px wide."""
        return contact_sheet(self.frames, self.records[method].keep_mask, tile_width=320, columns=2,
                             caption_scale=2.0, **self._common(method, heatmap))  # fmt: skip

    def allocation(self) -> go.Figure:
        """The main method's budgets (bars) over the curvature, with every other method's budgets as lines, or
        with V-CAST alone, the other allocations of its total."""
        main = self.main
        others = {self.labels[m]: r.budgets for m, r in self.records.items() if m != main}
        if not others and main == "vcast":
            others = self.allocations
        fpg = self.records[main].frames_per_group
        record = AllocationRecord.from_record(self.records[main], comparisons=others, label=self.labels[main],
                                              thumbnails=self.frames[::fpg])  # fmt: skip
        return allocation_figure(record, title=None)
