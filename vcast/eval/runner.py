"""The evaluation run: every item decoded and encoded once, then the unpruned pass and each method's pass.

Steps of `run`: read the items (a subset if asked), check the output folder belongs to the same settings,
find the passes not yet done in any results file, share them out over the ranks, run them (each pass's
line appended and synced as it finishes; a failure is that pass's or item's recorded error, and the run
goes on), then merge the results files and write the summary, table and plot.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import VCastConfig
from ..methods import prune
from ..pipeline import DEFAULT_MODEL_ID, VideoQA, check_methods
from . import dist
from .clips import load_clip
from .letters import INSTRUCTION, build_prompt, extract_letter
from .manifest import Item, ManifestError, write_manifest
from .readers import load_items
from .report import build_summary, summary_markdown, write_json, write_plot
from .results import (
    FULL_PASS,
    RESULTS_FILE,
    PassRecord,
    ResultsWriter,
    latest,
    merge,
    rank_file,
    read_records,
    result_files,
)
from .stats import DEFAULT_RESAMPLES
from .subset import stratified_subset

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
ITEMS_FILE = "items.jsonl"
RANDOM_WEIGHTS_PREFIX = "random-weights:"
# What the results in a folder depend on: a rerun with other values would mix incomparable answers.
_FINGERPRINT_VERSION = 1


class EvalError(ValueError):
    """A run that cannot start as asked; the message says what to change."""


@dataclass(frozen=True)
class EvalSettings:
    """One evaluation: which items, which model and passes, where the results go.

    data: a manifest (.jsonl) or a benchmark folder (Video-MME, MVBench); out: the results folder.
    methods: names of `vcast.METHODS`, each scored against the unpruned pass ("full", always run).
    retain: the share of visual tokens every method keeps; frames: frames sampled per video (even).
    subset / seed: a stratified sample of that many items; retry_errors: redo passes that failed.
    resamples: bootstrap resamples; png: also render summary.png. dtype, gpus_per_rank: model loading
    (gpus_per_rank > 1 spreads each rank's copy over that many GPUs). stop_after: testing only, stop after
    this many items as if the run were killed (single process).
    """

    data: str
    out: str
    model: str = DEFAULT_MODEL_ID
    methods: tuple[str, ...] = ("vcast",)
    retain: float = 0.25
    frames: int = 64
    max_new_tokens: int = 16
    subset: int | None = None
    seed: int = 0
    retry_errors: bool = False
    resamples: int = DEFAULT_RESAMPLES
    png: bool = True
    dtype: str = "auto"
    gpus_per_rank: int | None = None
    dist_timeout_h: float = 48.0
    stop_after: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "methods", tuple(check_methods(list(self.methods))))
        except ValueError as err:
            raise EvalError(f"--methods: {err}") from err
        if not 0.0 < self.retain <= 1.0:
            raise EvalError(f"--retain must be in (0, 1], got {self.retain}")
        if self.frames < 2 or self.frames % 2:
            raise EvalError(
                f"--frames must be an even number >= 2 (frames pair into temporal groups), got {self.frames}"
            )
        if not 1 <= self.max_new_tokens <= 2048:
            raise EvalError(f"--max-new-tokens must be in [1, 2048], got {self.max_new_tokens}")
        if self.subset is not None and self.subset < 1:
            raise EvalError(f"--subset must be at least 1, got {self.subset}")
        if self.resamples < 100:
            raise EvalError(f"--resamples must be at least 100 for a usable interval, got {self.resamples}")
        if self.gpus_per_rank is not None and self.gpus_per_rank < 1:
            raise EvalError(f"--gpus-per-rank must be at least 1, got {self.gpus_per_rank}")

    @property
    def passes(self) -> list[str]:
        """The passes of every item: "full" first, then the methods in the order given."""
        return [FULL_PASS, *self.methods]

    def fingerprint(self) -> dict:
        return {
            "version": _FINGERPRINT_VERSION,
            "model": self.model,
            "frames": self.frames,
            "retain": self.retain,
            "max_new_tokens": self.max_new_tokens,
            "instruction": INSTRUCTION,
        }


def check_methods_run(methods: tuple[str, ...], retain: float) -> None:
    """Fail before any model loads when a method cannot run at `retain` (the 2x2 ones need 0.25):
    one selection on a tiny stand-in video per method."""
    stand_in = torch.randn(2, 4, 8)  # (T, N, D) with a 2 x 2 grid per group
    for method in methods:
        try:
            prune(stand_in, method=method, retain_ratio=retain, grid_hw=(2, 2))
        except ValueError as err:
            raise EvalError(f"--methods {method} at --retain {retain}: {err}") from err


def select_items(settings: EvalSettings) -> list[Item]:
    items = load_items(settings.data)
    if settings.subset is not None:
        items = stratified_subset(items, settings.subset, settings.seed)
    return items


def check_run_folder(out: Path, fingerprint: dict) -> None:
    """Refuse a results folder written with other settings (answers that cannot be compared)."""
    path = out / RUN_FILE
    if not path.exists():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8")).get("fingerprint", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise EvalError(f"{path} is damaged; remove it only if the results in {out} match this run") from err
    changed = {k: (before.get(k), v) for k, v in fingerprint.items() if before.get(k) != v}
    if changed:
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise EvalError(f"{out} holds results of other settings ({what}); use a new --out or the same settings")


def pending(
    items: list[Item], records: list[dict], passes: list[str], retry_errors: bool
) -> list[tuple[Item, list[str]]]:
    """Items with passes still to run, and those passes (a recorded error counts as done unless retried)."""
    done = latest(records)
    todo = []
    for item in items:
        missing = [p for p in passes if (item.id, p) not in done or (retry_errors and done[(item.id, p)].get("error"))]
        if missing:
            todo.append((item, missing))
    return todo


def _record(item: Item, name: str, rank: int, **fields) -> PassRecord:
    return PassRecord(
        id=item.id,
        pass_name=name,
        task=item.task,
        duration=item.duration_class,
        video=item.video,
        answer=item.answer,
        rank=rank,
        **fields,
    )


def _failure(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def _timed_select(qa: VideoQA, prepared, method: str, retain: float):
    """The selection and its milliseconds (the device synchronised, so GPU work is counted)."""
    cuda = qa.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(qa.device)
    start = time.perf_counter()
    selection = qa.select(prepared, method, config=VCastConfig(retain_ratio=retain))
    if cuda:
        torch.cuda.synchronize(qa.device)
    return selection, (time.perf_counter() - start) * 1000.0


def run_item(qa: VideoQA, item: Item, passes: list[str], settings: EvalSettings, rank: int) -> Iterator[PassRecord]:
    """One record per pass: the methods' passes, then the unpruned one, from one decode and vision pass.

    A failure is recorded, never raised: an unreadable video or a failed preparation fails every pass
    of the item; a failed pass fails only itself. (Exceptions other than Exception, such as
    KeyboardInterrupt, still stop the run.)
    """
    started = time.perf_counter()
    try:
        clip = load_clip(item, settings.frames)
        decode_ms = (time.perf_counter() - started) * 1000.0
        prepared = qa.prepare(clip, build_prompt(item.question, item.options))
    except Exception as err:  # one bad video or model failure must not end a run of thousands of items
        logger.warning("item %s: %s", item.id, _failure(err))
        for name in passes:
            yield _record(item, name, rank, error=_failure(err))
        return
    # The methods first, then the unpruned pass: the order of VideoQA.answer, so costs compare with the app's.
    for name in [p for p in passes if p != FULL_PASS] + [p for p in passes if p == FULL_PASS]:
        try:
            selection, selection_ms = (
                (None, 0.0) if name == FULL_PASS else _timed_select(qa, prepared, name, settings.retain)
            )
            result = qa.generate(prepared, selection, max_new_tokens=settings.max_new_tokens, selection_ms=selection_ms)
        except Exception as err:  # recorded for this pass; the other passes of the item still run
            logger.warning("item %s, pass %s: %s", item.id, name, _failure(err))
            yield _record(item, name, rank, error=_failure(err))
            continue
        pred = extract_letter(result.text, item.options)
        # decode_ms: reading the frames; item_elapsed_ms: wall time of the item so far (its last pass: the item's).
        metrics = {
            **asdict(result.metrics),
            "decode_ms": decode_ms,
            "item_elapsed_ms": (time.perf_counter() - started) * 1000.0,
        }
        yield _record(item, name, rank, reply=result.text, pred=pred, correct=pred == item.answer, metrics=metrics)


def load_model(settings: EvalSettings, rank: dist.Rank) -> VideoQA:
    """The model for this rank: "tiny" offline, "random-weights:<size>" (real shapes, random weights: costs
    without downloads) on this rank's GPU, or a checkpoint placed by `dist.device_map_for`."""
    if settings.model.startswith(RANDOM_WEIGHTS_PREFIX):
        device = f"cuda:{rank.local_rank}" if torch.cuda.is_available() else "cpu"
        return VideoQA.random_weights(settings.model.removeprefix(RANDOM_WEIGHTS_PREFIX), device=device)
    options = {"device_map": dist.device_map_for(rank, settings.gpus_per_rank), "dtype": settings.dtype}
    max_memory = dist.max_memory_for(rank, settings.gpus_per_rank)
    if max_memory is not None:
        options["max_memory"] = max_memory
    return VideoQA.from_pretrained(settings.model, **options)


def _progress(total: int, rank: dist.Rank):
    """A progress bar with ETA (tqdm, a transformers dependency), one line per rank."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="item",
        desc=f"rank {rank.rank}" if rank.distributed else "eval",
        position=rank.rank,
        mininterval=2.0,
        dynamic_ncols=True,
    )


def _run_shard(
    settings: EvalSettings,
    work: list[tuple[Item, list[str]]],
    rank: dist.Rank,
    model_loader: Callable[[EvalSettings, dist.Rank], VideoQA],
) -> bool:
    """Run this rank's share; False when stopped early by `stop_after` (testing)."""
    if not work:
        return True
    qa = model_loader(settings, rank)
    out = Path(settings.out)
    path = out / (rank_file(rank.rank) if rank.distributed else RESULTS_FILE)
    with ResultsWriter(path) as writer, _progress(len(work), rank) as bar:
        for count, (item, passes) in enumerate(work, start=1):
            for record in run_item(qa, item, passes, settings, rank.rank):
                writer.append(record)
            bar.update(1)
            if settings.stop_after is not None and count >= settings.stop_after:
                logger.info("stopping after %d items (--stop-after)", count)
                return False
    return True


def _finish(settings: EvalSettings, items: list[Item]) -> dict:
    """Merge the results files and write summary.json, summary.md and the plot (main rank only)."""
    out = Path(settings.out)
    records = merge(out, [item.id for item in items], settings.passes)
    info = {
        **settings.fingerprint(),
        "data": str(settings.data),
        "methods": list(settings.methods),
        "subset": settings.subset,
        "seed": settings.seed,
    }
    summary = build_summary(items, records, settings.passes, info, resamples=settings.resamples, seed=settings.seed)
    # The figures last: the numbers are on disk even where plotting fails.
    write_json(summary, out / "summary.json")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    summary["plot"] = write_plot(summary, out, png=settings.png)
    write_json(summary, out / "summary.json")
    return summary


def run(
    settings: EvalSettings, *, model_loader: Callable[[EvalSettings, dist.Rank], VideoQA] = load_model
) -> dict | None:
    """Run (or resume) an evaluation; returns the summary on the main rank (None on the others, or when
    stopped early). `model_loader(settings, rank)` is called only when this rank has passes to run."""
    rank = dist.rank_from_env()
    if rank.distributed and settings.stop_after is not None:
        raise EvalError("--stop-after (a testing aid) stops one process only; run it without torchrun")
    out = Path(settings.out)
    check_methods_run(settings.methods, settings.retain)
    try:
        items = select_items(settings)
    except ManifestError as err:
        raise EvalError(str(err)) from err
    if not items:
        raise EvalError(f"{settings.data} holds no items")
    dist.init(rank, settings.dist_timeout_h)
    try:
        # Every rank checks the folder (so that all fail alike); the main rank claims it while the others wait.
        check_run_folder(out, settings.fingerprint())
        if rank.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json({"fingerprint": settings.fingerprint(), "settings": asdict(settings)}, out / RUN_FILE)
            write_manifest(items, out / ITEMS_FILE)
        dist.barrier(rank)
        work = pending(items, read_records(result_files(out)), settings.passes, settings.retry_errors)
        dist.barrier(rank)  # every rank has read the results before any appends
        mine = dist.shard(work, rank)
        logger.info("%d items, %d with passes to run, %d on this rank", len(items), len(work), len(mine))
        finished = _run_shard(settings, mine, rank, model_loader)
        if not finished:
            return None
        dist.barrier(rank)
        return _finish(settings, items) if rank.is_main else None
    finally:
        dist.shutdown(rank)
