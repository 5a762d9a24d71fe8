"""What one answer shows a user, in plain records: the JSON record and the cost table the CLI and the app share."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypedDict

from .config import VCastConfig
from .methods import METHOD_LABELS as _LABELS
from .pipeline import FULL, STOP_REASONS, ModelError, PassMetrics, PassResult, QAResult, tiny_family

METHOD_LABELS = {**_LABELS, FULL: "unpruned"}  # the methods' display names and the unpruned pass's

# (label, PassMetrics field, format, whether a ratio to the unpruned pass means something)
METRIC_ROWS = (
    ("visual tokens", "visual_tokens_kept", "{:.0f}", True),
    ("sequence length", "sequence_length", "{:.0f}", True),
    ("vision ms (shared)", "vision_ms", "{:.1f}", False),
    ("selection ms", "selection_ms", "{:.2f}", False),
    ("prefill ms", "prefill_ms", "{:.1f}", True),
    ("time to first token ms", "ttft_ms", "{:.1f}", True),
    ("decode tokens/s", "decode_tokens_per_s", "{:.1f}", True),
    ("total ms", "total_ms", "{:.1f}", True),
    ("peak memory MB", "peak_memory_mb", "{:.0f}", True),
    ("new tokens", "new_tokens", "{:.0f}", False),
)
# Rows that only count (tokens, memory): the ones still meaningful where timings are not (a tiny model on a CPU).
COUNT_FIELDS = ("visual_tokens_kept", "sequence_length", "peak_memory_mb", "new_tokens")
TINY_COSTS = (
    "**Timings are left out:** those of a tiny random model on a CPU say nothing about what pruning saves. "
    "Token counts and memory are real; a real model on a GPU adds prefill, first-token and speed.\n\n"
)


# The record's types: its JSON schema for scripts (the app's /analyze documents its result with them).


class PassRecord(TypedDict):
    """One pass: its answer, what it cost (`PassMetrics`' fields) and why it stopped (a key of STOP_REASONS:
    end_of_text, token_limit, time_limit, cancelled)."""

    answer: str
    metrics: PassMetrics
    stop_reason: str


class MethodRecord(PassRecord):
    """A method's pass, with the tokens it kept per temporal group and whether it merged tokens (avgpool_2x2)."""

    budgets: list[int]
    merging: bool


class ResultRecord(TypedDict):
    """One answer: every method's pass under `methods` (by name, in the order asked), `vcast` (V-CAST's entry,
    else the first method's, for single-method clients), `full` (the unpruned pass, None without the comparison),
    the settings, the (T, h, w) token grid, frames per temporal group, each group's time (s), the main method's
    budgets and the video's curvature per group."""

    model: str
    family: str
    question: str
    config: VCastConfig
    methods: dict[str, MethodRecord]
    vcast: MethodRecord
    full: PassRecord | None
    grid_thw: list[int]
    frames_per_group: int
    group_times_s: list[float]
    budgets: list[int]
    curvature: list[float]


class AnalyzeResult(ResultRecord):
    """/analyze's result: a ResultRecord, every method's kept grid cells per temporal group under `selections`
    (viz.export.selection_to_dict; `selection` is the main method's), and `notes`: a sentence on how the video was
    read where it was not read as usual, and one per answer the time limit cut."""

    selections: dict[str, dict[str, Any]]
    selection: dict[str, Any]
    notes: list[str]


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def result_record(result: QAResult) -> ResultRecord:
    """A JSON-ready summary: every method's answer, metrics and budgets, the unpruned pass, the grid.

    `vcast` (V-CAST's entry, or the first method's) and `budgets` are kept for clients written for a
    single method.
    """
    selection = result.selection
    methods = {
        name: {
            "answer": run.text,
            "metrics": asdict(run.metrics),
            "stop_reason": run.stop_reason,
            "budgets": result.selections[name].budgets.tolist(),
            "merging": result.selections[name].assign is not None,
        }
        for name, run in result.passes.items()
    }
    full = None
    if result.full is not None:
        run = result.full
        full = {"answer": run.text, "metrics": asdict(run.metrics), "stop_reason": run.stop_reason}
    return {
        "model": result.model_id,
        "family": result.family,
        "question": result.question,
        "config": asdict(result.config),
        "methods": methods,
        "vcast": methods[result.main_method],
        "full": full,
        "grid_thw": list(result.grid),
        "frames_per_group": result.frames_per_group,
        "group_times_s": [round(t, 3) for t in result.group_times],
        "budgets": selection.budgets.tolist(),
        "curvature": [round(c, 5) for c in selection.curvature.tolist()],
    }


def metric_table(result: QAResult, *, timings: bool = True) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the cost table: one column per pass (methods, then unpruned), then each method's
    ratio to the unpruned pass where one means something. `timings=False` keeps only the counting rows
    (timings of a tiny model on a CPU say nothing about pruning)."""
    runs = [(label(name), run) for name, run in result.passes.items()]
    if result.full is not None:
        runs.append((label(FULL), result.full))
    ratio_runs = [(name, run) for name, run in runs[: len(result.passes)]] if result.full is not None else []
    header = ["", *(name for name, _ in runs), *(f"{name} / unpruned" for name, _ in ratio_runs)]
    rows = []
    for text, field, fmt, has_ratio in METRIC_ROWS:
        if not timings and field not in COUNT_FIELDS:
            continue
        values = [getattr(run.metrics, field) for _, run in runs]
        row = [text, *(fmt.format(v) for v in values)]
        base = getattr(result.full.metrics, field) if result.full is not None else None
        for _, run in ratio_runs:
            mine = getattr(run.metrics, field)
            row.append(f"{mine / base:.2f}" if has_ratio and base else "")
        rows.append(row)
    return header, rows


def metric_text(result: QAResult, *, timings: bool = True) -> str:
    """The cost table as aligned plain text (the CLI's)."""
    header, rows = metric_table(result, timings=timings)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def metric_markdown(result: QAResult, *, timings: bool = True) -> str:
    """The cost table as a Markdown table (the app's); numbers right-aligned."""
    header, rows = metric_table(result, timings=timings)
    lines = [f"| {' | '.join(header)} |", "|:--" + "|--:" * (len(header) - 1) + "|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


def cut_short(result: QAResult, reasons: tuple[str, ...] = ("time_limit", "token_limit")) -> list[str]:
    """One sentence per pass that stopped for one of `reasons` (keys of STOP_REASONS), saying what to do."""
    runs = [*result.passes.items(), *([(FULL, result.full)] if result.full is not None else [])]
    return [f"The {label(name)} answer stopped after {run.metrics.new_tokens} tokens: {STOP_REASONS[run.stop_reason]}; "
            "ask for a shorter answer or use fewer frames."
            for name, run in runs if run.stop_reason in reasons]  # fmt: skip


def notes(result: QAResult) -> list[str]:
    """What a user should know about the answer: how the video was read where it was not read as usual, and one
    sentence per answer the time limit cut."""
    return [*result.clip.notes, *cut_short(result, reasons=("time_limit",))]


def analyze_record(result: QAResult, selections: dict[str, dict[str, Any]]) -> AnalyzeResult:
    """result_record with every method's `selections` (viz.selection_to_dict of each) and the `notes`."""
    return {**result_record(result), "selections": selections, "selection": selections[result.main_method],
            "notes": notes(result)}  # fmt: skip


def has_timings(result: QAResult) -> bool:
    """Whether the passes' timings mean something: not those of a tiny random model (which runs on a CPU)."""
    return tiny_family(result.model_id) is None


def pass_metrics(result: QAResult) -> dict[str, PassMetrics]:
    """Each pass's metrics by display name: the methods in order, then the unpruned pass if it ran."""
    runs = [*result.passes.items(), *([(FULL, result.full)] if result.full is not None else [])]
    return {label(name): run.metrics for name, run in runs}


def cost_markdown(result: QAResult) -> str:
    """The app's cost table: `metric_markdown`, with only the counting rows, and TINY_COSTS saying why, where the
    timings mean nothing (`has_timings`)."""
    timings = has_timings(result)
    return TINY_COSTS * (not timings) + metric_markdown(result, timings=timings)


def write_json(record: Mapping[str, Any], root: Path, *, max_age_s: float, name: str = "vcast_result.json") -> Path:
    """`record` as indented JSON in a new folder under `root`, whose folders older than `max_age_s` go first (a
    server offering each answer as a file keeps only the recent ones)."""
    for old in root.iterdir():
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(old) if old.stat().st_mtime < time.time() - max_age_s else None
    path = Path(tempfile.mkdtemp(dir=root)) / name
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return path


def done_markdown(result: QAResult, seconds: float) -> str:
    """The one-line summary of a finished answer (Markdown): how long it took, the model, the frames, the share of
    visual tokens the main method kept, and the `notes`, each after a ⚠️."""
    kept, total = result.pruned.metrics.visual_tokens_kept, result.pruned.metrics.visual_tokens_in
    return (f"**Done** in {seconds:.1f} s on `{result.model_id}` · {result.clip.num_frames} frames · "
            f"{label(result.main_method)} kept **{kept:,} of {total:,}** visual tokens ({kept / max(total, 1):.0%}). "
            + " ".join(f"⚠️ {n}" for n in notes(result)))  # fmt: skip


@dataclass
class StreamedAnswer:
    """What `VideoQA.stream`'s events have brought so far: each pass's text by name (the methods, then "full"), the
    selections (`partial`: a QAResult without passes), the passes that ended, and the QAResult once "done"."""

    texts: dict[str, str]
    partial: QAResult | None = None
    passes: dict[str, PassResult] = dataclasses.field(default_factory=dict)
    result: QAResult | None = None

    def follow(self, events: Iterable[tuple[str, Any]], stop: threading.Event, refresh_s: float = 0.1) -> Iterator[str]:
        """Reads `events` into this record up to "done", or up to the first event after `stop` is set; yields a
        pass's name when its text is worth showing again: its first piece, then at most every `refresh_s` (a few
        refreshes a second read as streaming; one per token would slow the timed generation). ModelError if the
        events end without "done" and no stop was asked for."""
        shown_at = 0.0
        for kind, payload in events:
            if stop.is_set() or kind == "done":
                self.result = payload if kind == "done" else None
                return
            if kind == "selected":
                self.partial = payload
            elif kind == "pass":
                self.passes[payload.method] = payload
            else:
                self.texts[kind] += payload
                if self.texts[kind] == payload or time.perf_counter() - shown_at > refresh_s:
                    shown_at = time.perf_counter()
                    yield kind
        if not stop.is_set():
            raise ModelError("The model stopped before it finished its answers; please run again.")

    def so_far(self) -> QAResult | None:
        """The selections with the passes that ended (the unpruned one as `full`); None before every method selected."""
        if self.partial is None:
            return None
        methods = {name: run for name, run in self.passes.items() if name != FULL}
        return replace(self.partial, passes=methods, full=self.passes.get(FULL))
