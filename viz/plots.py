"""Plotly figures of V-CAST: where the token budget goes over time, and what pruning saves.

Numpy arrays and plain records in, `plotly.graph_objects.Figure` out; no torch, no gradio.
Both figures have transparent backgrounds, a neutral grey text and grid, and colours picked to
stay legible on light and dark pages, so the same figure works in any Gradio theme or README.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .export import SelectionRecord, as_numpy

# Trace names are part of the API: the app and the tests find traces by them.
BUDGET_TRACE = "V-CAST budget"
CURVATURE_TRACE = "curvature"

# Mid-tone colours: each keeps >= 3:1 contrast on white and on near-black (#0b0f19) pages.
TEXT_COLOR = "#8a8f98"
GRID_COLOR = "rgba(138, 143, 152, 0.28)"
BUDGET_COLOR = "#3b82f6"
CURVATURE_COLOR = "#f59e0b"
UNPRUNED_COLOR = "#9ca3af"
COMPARISON_STYLES = {  # name -> (colour, dash)
    "uniform": ("#a78bfa", "dash"),
    "uniqueness": ("#10b981", "dot"),
}
_FALLBACK_STYLES = (("#ef4444", "dashdot"), ("#ec4899", "longdash"), ("#14b8a6", "longdashdot"))


@dataclass(frozen=True)
class AllocationRecord:
    """What the allocation figure shows, one entry per temporal group.

    times_s: (T,) float64, seconds, the time of each group (its frames' mean time).
    curvature: (T,) float32, in [0, 2].
    budgets: (T,) int64, V-CAST tokens kept per group, in [0, tokens_per_group].
    tokens_per_group: N, merged tokens per group before pruning.
    comparisons: other allocations of the same total, name -> (T,) int budgets,
        e.g. {"uniform": ..., "uniqueness": ...}; drawn as lines.
    thumbnails: optional (T, H, W, 3) uint8 RGB (or a sequence of T such images), one frame per
        group, drawn along the time axis.
    weights: optional (T,) float32 allocation weights, shown on hover.
    label: the display name of the method whose budgets are the bars ("V-CAST"); the bars' trace is
        named `budget_trace_name(label)`.
    """

    times_s: np.ndarray
    curvature: np.ndarray
    budgets: np.ndarray
    tokens_per_group: int
    comparisons: Mapping[str, np.ndarray] = field(default_factory=dict)
    thumbnails: Sequence[np.ndarray] | np.ndarray | None = None
    weights: np.ndarray | None = None
    label: str = "V-CAST"

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ once, so the figure code can trust dtypes.
        set_ = object.__setattr__
        set_(self, "times_s", np.asarray(self.times_s, dtype=np.float64).reshape(-1))
        num_groups = self.times_s.shape[0]
        set_(self, "curvature", _vector(self.curvature, np.float32, num_groups, "curvature"))
        set_(self, "budgets", _vector(self.budgets, np.int64, num_groups, "budgets"))
        set_(self, "comparisons", {k: _vector(v, np.int64, num_groups, k) for k, v in self.comparisons.items()})
        if self.weights is not None:
            set_(self, "weights", _vector(self.weights, np.float32, num_groups, "weights"))
        if num_groups == 0:
            raise ValueError("an allocation needs at least one temporal group")
        if self.tokens_per_group < 1 or self.budgets.min() < 0 or self.budgets.max() > self.tokens_per_group:
            raise ValueError(f"budgets must lie in [0, tokens_per_group={self.tokens_per_group}]")
        if self.thumbnails is not None and len(self.thumbnails) != num_groups:
            raise ValueError(f"need one thumbnail per group ({num_groups}), got {len(self.thumbnails)}")

    @classmethod
    def from_record(
        cls,
        record: SelectionRecord,
        *,
        comparisons: Mapping[str, Any] | None = None,
        thumbnails: Sequence[np.ndarray] | np.ndarray | None = None,
        label: str = "V-CAST",
    ) -> AllocationRecord:
        """From a SelectionRecord; comparison values are budgets (T,) or anything with `.budgets`
        (a `vcast.Selection` on any device, another SelectionRecord, e.g. other methods' selections)."""
        return cls(
            times_s=record.times_s,
            curvature=record.curvature,
            budgets=record.budgets,
            tokens_per_group=record.tokens_per_group,
            comparisons={k: as_numpy(getattr(v, "budgets", v)) for k, v in (comparisons or {}).items()},
            thumbnails=thumbnails,
            weights=record.weights,
            label=label,
        )


def comparison_trace_name(name: str) -> str:
    """The allocation figure's trace name for a comparison allocation: 'uniform' -> 'uniform budget'."""
    return f"{name} budget"


def budget_trace_name(label: str) -> str:
    """The allocation figure's bar trace name for the method `label`: 'V-CAST' -> BUDGET_TRACE."""
    return f"{label} budget"


def _vector(x: Any, dtype: type, length: int, name: str) -> np.ndarray:
    """Any array-like -> (length,) array of dtype, or a ValueError naming the field."""
    v = as_numpy(x).astype(dtype).reshape(-1)
    if v.shape != (length,):
        raise ValueError(f"{name} must have one value per group ({length}), got shape {v.shape}")
    return v


def _base_layout(fig: go.Figure, *, title: str | None, height: int) -> None:
    """Transparent backgrounds and neutral text so the figure reads on light and dark themes."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}} if title else None,
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font={"color": TEXT_COLOR, "size": 12},
        height=height,
        hoverlabel={"font": {"size": 12}},
    )
    fig.update_xaxes(gridcolor=GRID_COLOR, zerolinecolor=GRID_COLOR, linecolor=GRID_COLOR)
    fig.update_yaxes(gridcolor=GRID_COLOR, zerolinecolor=GRID_COLOR, linecolor=GRID_COLOR)


def _png_data_uri(image: np.ndarray, max_side_px: int) -> str:
    """(H, W, 3) uint8 RGB -> a PNG data URI no larger than max_side_px on its longer side."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side_px / max(h, w))
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a thumbnail of shape {image.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def _group_width_s(times_s: np.ndarray) -> float:
    """The typical spacing of the groups in seconds (1 s for a single group)."""
    steps = np.diff(times_s)
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def allocation_figure(
    record: AllocationRecord,
    *,
    title: str | None = "Where the token budget goes",
    max_thumbnails: int = 16,
    thumbnail_px: int = 96,
    height: int = 460,
) -> go.Figure:
    """Per temporal group: the method's budget (bars), curvature (line), comparison budgets (lines).

    Budgets and comparison allocations share the left axis (tokens kept per group); curvature has
    the right axis, drawn above the bars. Hovering a group shows its time, curvature, budget and
    kept share. Thumbnails (at most `max_thumbnails`, evenly spread, each at most `thumbnail_px`
    pixels) sit in a strip above the plot at their group's time.
    Returns a Figure whose trace named budget_trace_name(record.label) (BUDGET_TRACE for V-CAST) has
    y == record.budgets, whose trace named
    CURVATURE_TRACE has y == record.curvature, and one trace comparison_trace_name(k) per comparison.
    """
    width_s = _group_width_s(record.times_s)
    fig = go.Figure()
    _add_budget_bars(fig, record, width_s=width_s)
    for i, (name, budgets) in enumerate(record.comparisons.items()):
        _add_comparison_line(fig, record.times_s, name, budgets, style_index=i)
    _add_curvature_line(fig, record)  # last, so the line stays above the bars

    _base_layout(fig, title=title, height=height)
    plot_top = 0.74 if record.thumbnails is not None else 1.0  # the rest is the thumbnail strip
    _layout_allocation_axes(fig, record, width_s=width_s, plot_top=plot_top, has_title=title is not None)
    if record.thumbnails is not None:
        _add_thumbnails(fig, record, width_s=width_s, bottom=plot_top + 0.02, max_count=max_thumbnails, px=thumbnail_px)
    return fig


def _add_budget_bars(fig: go.Figure, r: AllocationRecord, *, width_s: float) -> None:
    """The method's budgets as bars on the left axis, with everything a reader asks about a group on hover."""
    num_groups, n = r.times_s.shape[0], r.tokens_per_group
    share_of_group = r.budgets / n
    share_of_video = r.budgets / max(int(r.budgets.sum()), 1)
    weights = r.weights if r.weights is not None else np.full(num_groups, np.nan, dtype=np.float32)
    custom = np.stack([r.curvature, share_of_group, share_of_video, weights, np.arange(num_groups)], axis=1)
    weight_text = " · weight %{customdata[3]:.3f}" if r.weights is not None else ""
    fig.add_bar(
        x=r.times_s,
        y=r.budgets,
        width=0.8 * width_s,
        name=budget_trace_name(r.label),
        marker={"color": BUDGET_COLOR, "opacity": 0.75},
        customdata=custom,
        hovertemplate=(
            "group %{customdata[4]:.0f}<br>"
            f"{r.label} keeps %{{y}} of {n} tokens (%{{customdata[1]:.0%}})<br>"
            "%{customdata[2]:.1%} of the video's kept tokens<br>"
            f"curvature %{{customdata[0]:.3f}}{weight_text}<extra></extra>"
        ),
    )


def _add_comparison_line(
    fig: go.Figure, times_s: np.ndarray, name: str, budgets: np.ndarray, *, style_index: int
) -> None:
    """Another allocation of the same total, on the budgets' axis, as a dashed line."""
    color, dash = COMPARISON_STYLES.get(name, _FALLBACK_STYLES[style_index % len(_FALLBACK_STYLES)])
    fig.add_scatter(
        x=times_s,
        y=budgets,
        name=comparison_trace_name(name),
        mode="lines+markers",
        line={"color": color, "dash": dash, "width": 2},
        marker={"size": 5},
        hovertemplate=f"{name}: %{{y}} tokens<extra></extra>",
    )


def _add_curvature_line(fig: go.Figure, r: AllocationRecord) -> None:
    """Curvature on the right axis. The endpoints have no turn to measure and are set to 1:
    hollow markers (and the hover) say they are not measurements."""
    is_end = np.zeros(r.times_s.shape[0], dtype=bool)
    is_end[[0, -1]] = True
    fig.add_scatter(
        x=r.times_s,
        y=r.curvature,
        name=CURVATURE_TRACE,
        yaxis="y2",
        mode="lines+markers",
        line={"color": CURVATURE_COLOR, "width": 2.5},
        marker={
            "size": 7,
            "symbol": np.where(is_end, "circle-open", "circle").tolist(),
            "line": {"width": 2, "color": CURVATURE_COLOR},
        },
        customdata=np.where(is_end, " (endpoint: set to 1)", "").tolist(),
        hovertemplate="curvature %{y:.3f}%{customdata}<extra></extra>",
    )


def _layout_allocation_axes(
    fig: go.Figure, r: AllocationRecord, *, width_s: float, plot_top: float, has_title: bool
) -> None:
    """Time axis in seconds, budgets left, curvature right (axis titles coloured like their traces)."""
    fig.update_layout(
        barmode="overlay",
        hovermode="x unified",
        legend={"orientation": "h", "x": 0.0, "y": -0.2, "xanchor": "left", "yanchor": "top"},
        margin={"l": 60, "r": 60, "t": 48 if has_title else 16, "b": 20},
        xaxis={
            "title": {"text": "time in the video (s)"},
            "range": [r.times_s[0] - 0.6 * width_s, r.times_s[-1] + 0.6 * width_s],
            "hoverformat": ".2f",
            "zeroline": False,
        },
        yaxis={
            "title": {"text": f"tokens kept per group (of {r.tokens_per_group})", "font": {"color": BUDGET_COLOR}},
            "domain": [0.0, plot_top],
            "rangemode": "tozero",
        },
        yaxis2={
            "title": {"text": "trajectory curvature, 1 − cos (0–2)", "font": {"color": CURVATURE_COLOR}},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "showgrid": False,
            "tickmode": "auto",  # plotly 6+ syncs overlaying ticks to y's grid, giving values like 0.542
            "nticks": 6,
        },
    )


def _add_thumbnails(
    fig: go.Figure, record: AllocationRecord, *, width_s: float, bottom: float, max_count: int, px: int
) -> None:
    """Frame thumbnails in a strip above the plot, centred on their group's time."""
    num_groups = record.times_s.shape[0]
    # With many groups, show an even subset: thumbnails narrower than ~30 px show nothing.
    shown = np.unique(np.linspace(0, num_groups - 1, min(num_groups, max_count)).round().astype(int))
    step_s = width_s * max(1, num_groups / len(shown))
    for t in shown:
        fig.add_layout_image(
            source=_png_data_uri(np.asarray(record.thumbnails[t]), px),
            xref="x",
            yref="paper",
            x=float(record.times_s[t]),
            y=bottom,
            sizex=0.95 * step_s,
            sizey=0.98 - bottom,
            xanchor="center",
            yanchor="bottom",
            sizing="contain",
            layer="above",
        )


@dataclass(frozen=True)
class CostMetric:
    """One panel of the cost figure: the metrics key, its label and its unit ('' for a count)."""

    key: str
    label: str
    unit: str = ""


COST_METRICS = (
    CostMetric("visual_tokens_kept", "visual tokens to the LLM"),
    CostMetric("prefill_ms", "prefill", "ms"),
    CostMetric("ttft_ms", "time to first token", "ms"),
    CostMetric("peak_memory_mb", "peak memory", "MB"),
)
# What still means something where timings do not (a tiny model on a CPU): counts and memory.
COUNT_METRICS = (
    CostMetric("visual_tokens_kept", "visual tokens to the LLM"),
    CostMetric("sequence_length", "sequence length"),
    CostMetric("peak_memory_mb", "peak memory", "MB"),
)


# vcast.pipeline.PassMetrics.memory_kind -> what the memory panel measured.
_MEMORY_KINDS = {"cuda_max_allocated": "peak GPU memory", "process_rss": "peak process memory, RSS"}
_NO_BASELINE = "no unpruned run to compare with: ratios need it"
_RUN_COLORS = (BUDGET_COLOR, "#f97316", "#10b981", "#a855f7", "#ec4899")  # methods in order; unpruned is grey


def _as_metrics(metrics: Any) -> Mapping[str, Any] | None:
    """A metrics dataclass (vcast.pipeline.PassMetrics), a mapping or None -> a mapping or None."""
    if metrics is None or isinstance(metrics, Mapping):
        return metrics
    if hasattr(metrics, "__dataclass_fields__"):
        return {name: getattr(metrics, name) for name in metrics.__dataclass_fields__}
    raise TypeError(f"metrics must be a mapping or a dataclass, got {type(metrics).__name__}")


def _metric_value(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    """A finite float, or None when the run, the key or the value is missing."""
    if metrics is None or metrics.get(key) is None:
        return None
    value = float(metrics[key])
    return value if math.isfinite(value) else None


def _format_value(value: float, unit: str) -> str:
    """1234.5, 'ms' -> '1,235 ms'; small values keep a decimal."""
    text = f"{value:,.0f}" if abs(value) >= 100 or unit == "" else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def cost_ratio(pruned: float | None, unpruned: float | None) -> float | None:
    """pruned / unpruned, or None when either is missing or unpruned is 0."""
    if pruned is None or unpruned is None or unpruned == 0:
        return None
    return pruned / unpruned


def _bar_text(value: float | None, base: float | None, unit: str) -> str:
    """'440 · 0.25×' (the ratio to the baseline where there is one), or 'n/a' for a missing value."""
    if value is None:
        return "n/a"
    ratio = cost_ratio(value, base)
    return _format_value(value, unit) + (f" · <b>{ratio:.2f}×</b>" if ratio is not None else "")


def cost_figure(
    runs: Mapping[str, Mapping[str, Any] | Any],
    *,
    baseline: str | None = "unpruned",
    metrics: Sequence[CostMetric] = COST_METRICS,
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """Every run's cost, one panel per metric stacked vertically, a horizontal bar per run.

    runs: display label -> metrics, in the order to draw them top to bottom, e.g.
        {"V-CAST": {...}, "EVS (vLLM)": {...}, "unpruned": {...}}; each a plain dict such as
        {"visual_tokens_kept": 1024, "prefill_ms": 180.0, ...} (keys from `metrics`) or a metrics
        dataclass such as vcast.pipeline.PassMetrics. A missing key or None shows "n/a", not a bar.
        An optional "memory_kind" ("cuda_max_allocated" or "process_rss") names the memory panel.
    baseline: the label of the run every other is divided by (written "0.25×" after its value);
        a label not in `runs` (no unpruned run) gives values without ratios and says so.
    One panel per row keeps every panel readable at any width (a phone's included).
    Returns a Figure with one bar trace per (metric, run), named by the run's label, whose x is the value.
    """
    runs = {label: _as_metrics(m) for label, m in runs.items()}
    first = next(iter(runs.values()), None) or {}
    memory_label = _MEMORY_KINDS.get(str(first.get("memory_kind")))
    if memory_label:
        metrics = [CostMetric(m.key, memory_label, m.unit) if m.key == "peak_memory_mb" else m for m in metrics]
    base = runs.get(baseline) if baseline is not None else None
    labels = list(runs)
    colors = {label: UNPRUNED_COLOR if label == baseline else _RUN_COLORS[i % len(_RUN_COLORS)]
              for i, label in enumerate(labels)}  # fmt: skip
    fig = make_subplots(
        rows=len(metrics), cols=1, vertical_spacing=0.1 if len(metrics) > 1 else 0.0,
        subplot_titles=[f"{m.label} ({m.unit})" if m.unit else m.label for m in metrics],
    )  # fmt: skip
    for row, metric in enumerate(metrics, start=1):
        base_value = _metric_value(base, metric.key)
        values = [_metric_value(runs[label], metric.key) for label in labels]
        for label, value in zip(labels, values, strict=True):
            fig.add_bar(
                x=[value if value is not None else 0.0], y=[label], orientation="h", name=label, legendgroup=label,
                showlegend=False, marker={"color": colors[label]},
                text=[_bar_text(value, None if label == baseline else base_value, metric.unit)],
                textposition="outside", cliponaxis=False,
                hovertemplate=f"{label}<br>{metric.label}: %{{text}}<extra></extra>",
                row=row, col=1,
            )  # fmt: skip
        # Room right of the longest bar for its value and ratio.
        longest = max((v for v in values if v is not None), default=0.0)
        fig.update_xaxes(range=[0, 2.0 * longest if longest > 0 else 1.0], row=row, col=1)
    row_px = 22 * len(labels) + 46
    _base_layout(fig, title=title, height=height or 30 + len(metrics) * row_px + (40 if title else 0))
    if base is None and baseline is not None:
        fig.add_annotation(text=_NO_BASELINE, xref="paper", yref="paper",
                           x=0, y=-0.02, xanchor="left", yanchor="top", showarrow=False, font={"size": 11})  # fmt: skip
    fig.update_layout(margin={"l": 8, "r": 8, "t": 56 if title else 24, "b": 24}, bargap=0.25)
    # Values are written on the bars; grids and x ticks would only add noise.
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=True)
    fig.update_yaxes(autorange="reversed", showgrid=False, ticksuffix=" ", automargin=True)
    # Panel titles at the left edge: centred ones get cut on a phone.
    fig.for_each_annotation(lambda a: a.update(x=0, xanchor="left", font_size=12) if a.text != _NO_BASELINE else None)
    return fig


def save_png(
    fig: go.Figure, path: str | Path, *, width: int = 1000, height: int | None = None, scale: float = 1.0
) -> Path:
    """Render a figure to PNG with kaleido, which needs a Chrome or Chromium (Debian: apt-get install chromium)."""
    try:
        import kaleido  # noqa: F401  (optional: only PNG export needs it)
    except ImportError as e:
        raise RuntimeError(
            "PNG export needs kaleido: pip install kaleido, plus a Chromium (apt-get install chromium)"
        ) from e
    path = Path(path)
    fig.write_image(path, format="png", width=width, height=height or fig.layout.height, scale=scale)
    return path
