"""Figures and overlays of a V-CAST selection: numpy arrays and plain records in, figures and arrays out.

No torch, no gradio: `SelectionRecord.from_selection` turns a `vcast.Selection` into numpy by duck
typing, and everything else works on that record or on plain arrays.
"""

from .export import (
    SelectionRecord,
    as_numpy,
    group_times,
    load_selection_json,
    save_selection_json,
    selection_from_dict,
    selection_from_json,
    selection_to_dict,
    selection_to_json,
)
from .overlays import (
    SheetLayout,
    VideoExport,
    cell_boxes,
    cell_index_maps,
    contact_sheet,
    contact_sheet_layout,
    frame_groups,
    overlay_frames,
    overlay_heatmap,
    overlay_kept,
    overlay_video,
    write_mp4,
)
from .plots import (
    BUDGET_TRACE,
    COST_METRICS,
    CURVATURE_TRACE,
    AllocationRecord,
    CostMetric,
    allocation_figure,
    comparison_trace_name,
    cost_figure,
    cost_ratio,
    save_png,
)

__all__ = [
    "BUDGET_TRACE",
    "COST_METRICS",
    "CURVATURE_TRACE",
    "AllocationRecord",
    "CostMetric",
    "SelectionRecord",
    "SheetLayout",
    "VideoExport",
    "allocation_figure",
    "as_numpy",
    "cell_boxes",
    "cell_index_maps",
    "comparison_trace_name",
    "contact_sheet",
    "contact_sheet_layout",
    "cost_figure",
    "cost_ratio",
    "frame_groups",
    "group_times",
    "load_selection_json",
    "overlay_frames",
    "overlay_heatmap",
    "overlay_kept",
    "overlay_video",
    "save_png",
    "save_selection_json",
    "selection_from_dict",
    "selection_from_json",
    "selection_to_dict",
    "selection_to_json",
    "write_mp4",
]
