"""The results files: one JSON line per item and pass, appended and synced as each pass finishes.

A single process appends to results.jsonl; with several ranks each appends to results.rank<R>.jsonl, and
the main rank merges them when all are done. A line cut off by a crash is dropped when the file is next
opened, so the next line starts clean; a rerun reads every results file of the folder to know what is done.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
FULL_PASS = "full"  # the unpruned pass


def rank_file(rank: int) -> str:
    return f"results.rank{rank}.jsonl"


@dataclass(frozen=True)
class PassRecord:
    """One pass over one item. `pass_name` is "full" (unpruned) or a method of vcast.METHODS.

    reply: the model's text; pred: the option letter read from it (None: no answer); correct: pred equals
    answer; error: why the pass has no reply (the video could not be read, the model failed), else None;
    metrics: the pass's PassMetrics as a dict (times in ms, memory in MB); rank: the process that ran it.
    """

    id: str
    pass_name: str
    task: str
    duration: str
    video: str
    answer: str
    reply: str | None = None
    pred: str | None = None
    correct: bool | None = None
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    rank: int = 0

    def to_json(self) -> dict:
        record = asdict(self)
        record["pass"] = record.pop("pass_name")
        return record


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a crash, so that appending starts a fresh line."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        logger.warning(
            "%s: dropping an unfinished last line (%d bytes) left by an interrupted run", path.name, size - keep
        )
        f.truncate(keep)


class ResultsWriter:
    """Appends records to a JSONL file; each line is flushed and fsynced before append() returns."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _drop_torn_tail(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def append(self, record: PassRecord) -> None:
        self._file.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def result_files(out: Path) -> list[Path]:
    """results.jsonl first, then the rank files (newer lines than the merged file's), by rank."""
    ranks = [p for p in out.glob("results.rank*.jsonl") if p.stem.removeprefix("results.rank").isdigit()]
    ranks.sort(key=lambda p: int(p.stem.removeprefix("results.rank")))
    return [p for p in [out / RESULTS_FILE, *ranks] if p.exists()]


def read_records(paths: Iterable[Path]) -> list[dict]:
    """All well-formed lines of the files, in order (a torn or foreign line is skipped with a warning)."""
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is not a complete result; it will be redone", path.name, number)
                continue
            if isinstance(record, dict) and "id" in record and "pass" in record:
                records.append(record)
    return records


def latest(records: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """(id, pass) -> its last record: a pass redone after an error replaces the error."""
    return {(str(r["id"]), str(r["pass"])): r for r in records}


def merge(out: Path, order: list[str], pass_order: list[str]) -> list[dict]:
    """Fold every results file of `out` into results.jsonl: one line per (id, pass), in item order
    (then pass order), items of earlier runs not in `order` last. Written to a temporary file, synced and
    renamed over results.jsonl before the rank files are removed, so a crash loses nothing."""
    files = result_files(out)
    merged = latest(read_records(files))
    position = {item_id: i for i, item_id in enumerate(order)}
    passes = {name: i for i, name in enumerate(pass_order)}
    keys = sorted(
        merged,
        key=lambda k: (
            position.get(k[0], len(position)),
            k[0] if k[0] not in position else "",
            passes.get(k[1], len(passes)),
            k[1],
        ),
    )
    records = [merged[k] for k in keys]
    tmp = out / (RESULTS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / RESULTS_FILE)
    for path in files:
        if path.name != RESULTS_FILE:
            path.unlink()
    return records
