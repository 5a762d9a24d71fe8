"""A request to answer a question about a video as a page or a client sends it: every setting checked.

Values come from web forms and JSON (`/analyze`, MCP), so a number may arrive as text, a bool, NaN or a
400-digit integer; each unusable setting gets one sentence naming it as the page labels it and as the
API calls it ("Frames sampled (num_frames) must be an even number from 2 to 64, got '4.0'."). The
model-level checks (the question's control tokens, the methods, VCastConfig's ranges) are VideoQA's and
VCastConfig's own; this module adds what a shared server limits, which payloads are uploaded files, and the
sentence a user is shown for every failure (`user_message`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch

from .config import VCastConfig
from .pipeline import ModelError, check_methods
from .video import VideoClip, VideoError, read_video

NOT_REGULAR = "The file you sent names a folder on the server, not an uploaded video; upload the video file itself."
NOT_A_FILE = ("Send the video as a file: upload it (with gradio_client, pass handle_file('clip.mp4')); a path or URL "
              "given as text is not read.")  # fmt: skip
OUT_OF_MEMORY = "The GPU ran out of memory on this video: sample fewer frames, or pick a smaller model."


class FileMeta(TypedDict):
    _type: Literal["gradio.FileData"]


class VideoFile(TypedDict):
    """An uploaded file, as gradio_client's handle_file('clip.mp4') sends it (so MCP clients pass a URL)."""

    path: str
    meta: FileMeta


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a shared server (the app's defaults)."""

    max_frames: int = 64
    max_new_tokens: int = 512
    max_question_chars: int = 2000
    max_methods: int = 4
    max_upload_mb: float = 200.0
    max_duration_s: float = 300.0
    max_decode_s: float = 30.0


@dataclass(frozen=True)
class AnswerRequest:
    """One run's settings, checked: what `VideoQA.answer` / `stream` takes."""

    video: str
    question: str
    methods: list[str]
    config: VCastConfig
    num_frames: int
    model: str
    compare: bool
    max_new_tokens: int


def strict_number(value: Any, setting: str, low: float = -math.inf, high: float = math.inf,
                  kind: str = "a number") -> float:  # fmt: skip
    """value if it is a JSON number (not text, not a bool, not NaN) in [low, high], whole or even as `kind`
    says ("a whole number", "an even number"); else ValueError naming the setting."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if number and low <= value <= high and not (kind != "a number" and value % (2 if "even" in kind else 1)):
        return value
    shown = repr(value) if len(repr(value)) <= 24 else f"{repr(value)[:16]}… ({len(repr(value))} characters)"
    range_ = f" from {low:g} to {high:g}" if math.isfinite(high) else ""
    raise ValueError(f"{setting} must be {kind}{range_}, got {shown}.")


def check_request(video: Any, question: Any, methods: Any, retain_percent: Any, num_frames: Any, model: Any,
                  compare: Any, temperature: Any, allocation: Any, max_new_tokens: Any, *, offered: list[str],
                  limits: Limits = Limits()) -> AnswerRequest:  # fmt: skip
    """The settings as an AnswerRequest; ValueError with a sentence for the user for anything unusable.
    `offered`: the models this server may load (any other id or folder is refused)."""
    if not video:
        raise ValueError("Upload a video (or click one of the examples) first.")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("Type a question about the video first.")
    if len(question) > limits.max_question_chars:
        raise ValueError(f"The question is {len(question):,} characters long; shorten it to at most "
                         f"{limits.max_question_chars:,}.")  # fmt: skip
    methods = check_methods(methods if isinstance(methods, list | str) else [])
    if len(methods) > limits.max_methods:
        raise ValueError(f"Choose at most {limits.max_methods} methods at once (methods), got {len(methods)}.")
    if model not in offered:  # a client could otherwise make the server load any folder or hub id
        raise ValueError(f"The model {model!r} is not offered here; choose one of: {', '.join(offered)}.")
    if not isinstance(compare, bool):
        raise ValueError(f"Compare with the unpruned model (compare) must be true or false, got {compare!r}.")
    retain = strict_number(retain_percent, "Visual tokens kept (retain_percent)")
    if not 0 < retain <= 100:
        raise ValueError(
            f"Visual tokens kept (retain_percent) must be above 0 and at most 100 percent, got {retain:g}."
        )
    frames = strict_number(num_frames, "Frames sampled (num_frames)", 2, limits.max_frames, "an even number")
    tokens = strict_number(max_new_tokens, "Max new tokens (max_new_tokens)", 1, limits.max_new_tokens,
                           "a whole number")  # fmt: skip
    temperature = strict_number(temperature, "Allocation temperature (temperature)")
    config = VCastConfig(retain_ratio=retain / 100, temperature=temperature, allocation=allocation)
    return AnswerRequest(video, question, methods, config, int(frames), model, compare, int(tokens))


def read_request_video(path: str, num_frames: int, limits: Limits = Limits()) -> VideoClip:
    """The sampled frames within the limits; VideoError with a sentence for the user."""
    if not Path(path).is_file():  # a folder named as the file: nothing a decoder should open
        raise VideoError(NOT_REGULAR)
    clip = read_video(path, num_frames=num_frames, max_frames=limits.max_frames, max_duration_s=limits.max_duration_s,
                      max_file_mb=limits.max_upload_mb, max_decode_s=limits.max_decode_s)  # fmt: skip
    if clip.total_frames < 2:  # its "motion" would be one frame repeated: nothing to allocate over
        raise VideoError("This video holds a single frame (a still picture); upload a clip with at least 2 frames.")
    return clip


def is_upload(value: Any) -> bool:
    """Whether `value` is a file payload as Gradio sends one: {"path": str, "meta": {"_type": "gradio.FileData"}}."""
    if not isinstance(value, dict) or not isinstance(meta := value.get("meta"), dict):
        return False
    return isinstance(value.get("path"), str) and meta.get("_type") == "gradio.FileData"


def upload_path(video: Any) -> str | None:
    """The path of an uploaded `video` (None for none); ValueError for anything else (a path or URL as text, a
    number): only what Gradio received and checked is read."""
    if video is not None and not is_upload(video):
        raise ValueError(NOT_A_FILE)
    return video and video["path"]


def names_a_folder(body: bytes | str) -> bool:
    """Whether a JSON request body holds a file payload naming anything on the server but a regular file (an
    upload folder); False for a body that is not JSON."""
    try:
        return _names_a_folder(json.loads(body))
    except ValueError:  # not JSON (or not UTF-8): no file payload in it
        return False


def _names_a_folder(data: Any) -> bool:
    if is_upload(data):
        return os.path.exists(data["path"]) and not os.path.isfile(data["path"])
    items = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    return any(map(_names_a_folder, items))


def is_refusal(err: BaseException) -> bool:
    """Whether `err` refuses what the user asked (an unusable input or model), rather than a fault of the server."""
    return isinstance(err, VideoError | ModelError | ValueError)


def user_message(err: BaseException) -> str:
    """The sentence a user is shown for `err`, saying what to do: a refusal's own message; advice where the GPU ran
    out of memory (outside the model's own handling, e.g. loading another model); else what failed."""
    if is_refusal(err):
        return str(err)
    if isinstance(err, torch.OutOfMemoryError):
        return OUT_OF_MEMORY
    return f"The model failed on this video ({type(err).__name__}: {err}). Try again, or another clip."


class StopRequests:
    """The Stop buttons of a server's pages: one event per page (`session`) while its run lasts, set by `stop`; the
    run checks it between tokens."""

    def __init__(self) -> None:
        self._events: dict[str | None, threading.Event] = {}

    def __contains__(self, session: str | None) -> bool:
        return session in self._events

    @contextlib.contextmanager
    def watching(self, session: str | None) -> Iterator[threading.Event]:
        """The event `stop(session)` sets while this block (the run of page `session`) lasts."""
        event = self._events[session] = threading.Event()
        try:
            yield event
        finally:
            if self._events.get(session) is event:  # a newer run of the same page keeps its own
                del self._events[session]

    def stop(self, session: str | None) -> None:
        """Ask the run of page `session`, if one is running, to stop."""
        if (event := self._events.get(session)) is not None:
            event.set()
