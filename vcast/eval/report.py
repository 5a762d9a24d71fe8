"""summary.json, summary.md and the plot (summary.html, summary.png) from the results of a run.

Accuracies, differences and retention are in percent (differences in percentage points). Only items on
which every pass has a reply are scored, so that all passes are compared on the same questions; items
with an error are counted and listed, not scored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .manifest import Item
from .results import FULL_PASS, latest
from .stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, pass_statistics

logger = logging.getLogger(__name__)

COST_FIELDS = ("prefill_ms", "ttft_ms", "total_ms", "peak_memory_mb", "visual_tokens_kept", "sequence_length")
_MAX_LISTED_ERRORS = 20


def _percent(value: float | tuple | None):
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return [_percent(v) for v in value]
    return None if math.isnan(value) else round(100.0 * value, 4)


def _pass_entry(stats: dict) -> dict:
    """pass_statistics' fractions and intervals in percent, NaN -> None (JSON has no NaN)."""
    return {key: _percent(value) for key, value in stats.items()}


def _grouped_accuracy(items: list[Item], correct: np.ndarray, passes: list[str], key) -> dict[str, dict]:
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return {
        name: {"items": len(rows), **{p: _percent(float(correct[rows, j].mean())) for j, p in enumerate(passes)}}
        for name, rows in sorted(groups.items())
    }


def _costs(records: list[dict]) -> dict[str, float | str | None]:
    costs: dict[str, float | str | None] = {}
    for name in COST_FIELDS:
        values = [r["metrics"][name] for r in records if isinstance(r.get("metrics", {}).get(name), (int, float))]
        costs[f"median_{name}"] = round(statistics.median(values), 3) if values else None
    kinds = {r.get("metrics", {}).get("memory_kind") for r in records} - {None}
    costs["memory_kind"] = kinds.pop() if len(kinds) == 1 else None
    return costs


def _time_per_item(records: list[dict], items: int) -> dict[str, float | None]:
    """Mean wall time of an item (decoding, the vision pass and every pass, one process) from the item's
    longest `item_elapsed_ms`; None for results without it."""
    per_item: dict[str, float] = {}
    for r in records:
        elapsed = r.get("metrics", {}).get("item_elapsed_ms")
        if isinstance(elapsed, (int, float)):
            per_item[r["id"]] = max(per_item.get(r["id"], 0.0), elapsed)
    if not per_item or len(per_item) < items:
        return {"mean_seconds_per_item": None, "hours_per_100_items": None}
    mean_s = statistics.fmean(per_item.values()) / 1000.0
    return {"mean_seconds_per_item": round(mean_s, 3), "hours_per_100_items": round(mean_s * 100 / 3600, 4)}


def build_summary(
    items: list[Item],
    records: list[dict],
    passes: Sequence[str],
    settings: dict,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict:
    """The summary of `passes` ("full" first, then the methods) over `items`."""
    passes = list(passes)
    by_key = latest(records)
    scored, errors = [], {}
    for item in items:
        mine = [by_key.get((item.id, p)) for p in passes]
        failed = {p: r["error"] for p, r in zip(passes, mine, strict=True) if r is not None and r.get("error")}
        if failed:
            shared = set(failed.values())  # a video that could not be read fails every pass alike
            errors[item.id] = shared.pop() if len(shared) == 1 else "; ".join(f"{p}: {e}" for p, e in failed.items())
        elif all(r is not None for r in mine):
            scored.append(item)
    summary: dict = {
        "model": settings.get("model"),
        "settings": settings,
        "items": len(scored),
        "items_total": len(items),
        "items_with_errors": len(errors),
        "items_missing": len(items) - len(scored) - len(errors),
        "errors": dict(list(errors.items())[:_MAX_LISTED_ERRORS]),
        "error_kinds": dict(Counter(message.split(":", 1)[0] for message in errors.values())),
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "level": level,
            "unit": "video (cluster)",
            "interval": "percentile",
            "paired": True,
        },
        "full": None,
        "methods": {},
    }
    if not scored:
        logger.warning("no item has a reply from every pass; the summary holds no accuracy")
        return summary
    correct = np.array([[bool(by_key[(item.id, p)]["correct"]) for p in passes] for item in scored])  # (I, P)
    stats = pass_statistics(
        correct,
        [item.video for item in scored],
        passes,
        reference=FULL_PASS,
        anchor="vcast",
        resamples=resamples,
        seed=seed,
        level=level,
    )
    per_task = _grouped_accuracy(scored, correct, passes, lambda it: it.task or "(none)")
    for name in passes:
        entry = _pass_entry(stats[name])
        entry["costs"] = _costs([by_key[(item.id, name)] for item in scored])
        entry["unanswered"] = sum(by_key[(item.id, name)]["pred"] is None for item in scored)
        entry["per_task"] = {task: row[name] for task, row in per_task.items()}
        if name == FULL_PASS:
            summary["full"] = entry
        else:
            summary["methods"][name] = entry
    summary["time"] = _time_per_item([by_key[(item.id, p)] for item in scored for p in passes], len(scored))
    summary["per_task"] = per_task
    if any(item.duration_class for item in scored):
        summary["per_duration"] = _grouped_accuracy(scored, correct, passes, lambda it: it.duration_class or "(none)")
    return summary


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: list | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text if not ci or ci[0] is None else f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def summary_markdown(summary: dict) -> str:
    """The summary as markdown: the main table, then accuracy per task (and per duration class)."""
    settings = summary["settings"]
    lines = [
        f"# Accuracy of {summary['model']} with pruned video tokens",
        "",
        f"{summary['items']} items scored of {summary['items_total']} ({summary['items_with_errors']} with errors, "
        f"{summary['items_missing']} not run); {settings.get('frames')} frames, retain ratio "
        f"{settings.get('retain')}, greedy, at most {settings.get('max_new_tokens')} new tokens. Intervals: 95% "
        f"paired bootstrap over videos ({summary['bootstrap']['resamples']} resamples, seed "
        f"{summary['bootstrap']['seed']}).",
        "",
    ]
    if summary["full"] is None:
        return "\n".join([*lines, "No item was scored by every pass.", ""])
    lines += [
        "| pass | accuracy % | retention % | Δ vs unpruned (points) | Δ vs V-CAST (points) | "
        "prefill ms | TTFT ms | total ms | peak MB | visual tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("unpruned", summary["full"]), *summary["methods"].items()]
    for name, entry in rows:
        costs = entry["costs"]
        lines.append(
            f"| {name} | {_with_ci(entry['accuracy'], entry['accuracy_ci'])} "
            f"| {_with_ci(entry.get('retention'), entry.get('retention_ci'))} "
            f"| {_with_ci(entry.get('delta_full'), entry.get('ci'), signed=True)} "
            f"| {_with_ci(entry.get('delta_vcast'), entry.get('ci_vcast'), signed=True)} "
            f"| {_fmt(costs['median_prefill_ms'])} | {_fmt(costs['median_ttft_ms'])} "
            f"| {_fmt(costs['median_total_ms'])} | {_fmt(costs['median_peak_memory_mb'], 0)} "
            f"| {_fmt(costs['median_visual_tokens_kept'], 0)} |"
        )
    for title, key in (("task", "per_task"), ("duration", "per_duration")):
        groups = summary.get(key)
        if not groups:
            continue
        names = ["full", *summary["methods"]]
        lines += [
            "",
            f"| {title} | items | " + " | ".join(n if n != "full" else "unpruned" for n in names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for group, row in groups.items():
            lines.append(f"| {group} | {row['items']} | " + " | ".join(_fmt(row[n]) for n in names) + " |")
    time = summary.get("time", {})
    per_item = ""
    if time.get("mean_seconds_per_item") is not None:
        per_item = (
            f" One item (decoding, the vision pass and every pass) took {time['mean_seconds_per_item']:.1f} s on "
            f"average in one process: {time['hours_per_100_items']:.2f} h per 100 items."
        )
    lines += [
        "",
        "Costs are medians per item; the vision pass is shared by all passes of an item and counted in "
        f"each pass's TTFT and total.{per_item}",
        "",
    ]
    return "\n".join(lines)


# Unpruned grey and V-CAST blue as in viz's figures; the other methods from plotly's qualitative palette.
_PASS_COLOURS = {"unpruned": "#9ca3af", "vcast": "#3b82f6"}
_OTHER_COLOURS = ("#f59e0b", "#10b981", "#ef4444", "#a78bfa", "#ec4899", "#14b8a6", "#84cc16", "#64748b")


def build_figure(summary: dict):
    """Accuracy per pass with its 95% interval (left) and accuracy per task (right): a plotly Figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = [("unpruned", "full", summary["full"])] + [(n, n, e) for n, e in summary["methods"].items()]
    others = iter(_OTHER_COLOURS * 4)
    colours = {label: _PASS_COLOURS.get(label) or next(others) for label, _, _ in rows}
    tasks = list(summary.get("per_task", {}))
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.35, 0.65],
        subplot_titles=("Accuracy, 95% bootstrap interval", "Accuracy per task"),
    )
    for label, key, entry in rows:
        low, high = entry["accuracy_ci"]
        acc = entry["accuracy"]
        fig.add_trace(
            go.Bar(
                x=[label],
                y=[acc],
                name=label,
                legendgroup=label,
                marker_color=colours[label],
                error_y={"type": "data", "array": [high - acc], "arrayminus": [acc - low]},
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=tasks,
                y=[summary["per_task"][t][key] for t in tasks],
                name=label,
                legendgroup=label,
                marker_color=colours[label],
                showlegend=False,
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(title_text="accuracy %", range=[0, 100])
    fig.update_xaxes(tickangle=-30, row=1, col=2)
    fig.update_layout(
        barmode="group",
        height=480,
        width=1200,
        margin={"t": 70, "b": 120},
        title=f"{summary['model']}: {summary['items']} items",
    )
    return fig


def write_plot(summary: dict, out: Path, *, png: bool = True) -> dict:
    """summary.html (plotly.js inside: opens offline) and, when kaleido finds a Chrome, summary.png.
    Returns {"html": name, "png": name or None, "png_skipped": why or None}."""
    if summary["full"] is None:
        return {"html": None, "png": None, "png_skipped": "nothing was scored"}
    try:
        fig = build_figure(summary)
    except ImportError as err:  # plotly missing (a stripped-down GPU image): the numbers stand without figures
        logger.warning("no plot: %s", err)
        return {"html": None, "png": None, "png_skipped": f"no plot: {err}"}
    fig.write_html(out / "summary.html", include_plotlyjs=True)
    result = {"html": "summary.html", "png": None, "png_skipped": None}
    if not png:
        result["png_skipped"] = "--no-png"
        return result
    try:
        fig.write_image(out / "summary.png", format="png")
        result["png"] = "summary.png"
    except Exception as err:  # kaleido's failures vary by version (no Chrome, no kaleido); the HTML stands
        result["png_skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        logger.warning("summary.png skipped: %s", result["png_skipped"])
    return result


def write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
