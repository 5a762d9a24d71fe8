"""The app served for the reliability tests: in this process (to reach into it) or as `python app.py`.

Helpers, not tests: the app module on the tiny offline model, a launched server on a free loopback port, the
real command line in a child process, and the raw HTTP calls a browser makes (for what gradio_client cannot
reach: the page's private Run event, its Stop, and inputs that gradio_client would upload from this machine).
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOOD_CLIP = ROOT / "assets" / "brief_event.mp4"  # 67 KB: quick to upload
STARTUP_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60
# The good request each suite repeats: small and quick on the CPU, and deterministic (greedy decoding).
GOOD_QUESTION = "What word appears on the yellow sign?"
GOOD_SETTINGS = {"num_frames": 4, "compare": False, "max_new_tokens": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_app():
    """The app module with its page built (`app.demo`) as `python app.py` builds it offline: tiny model, banner."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("VCAST_MAX_QUEUE", raising=False)
        app = importlib.import_module("app")
        qa, app.BANNER = app.load_startup_model(None, hub_ok=False, gpu_gib=0.0)
        app.demo = app.build_demo(qa, banner=app.BANNER)
        return app


@contextlib.contextmanager
def served(app, **launch_overrides) -> Iterator[str]:
    """The app launched in this process on a free loopback port; yields its URL (ending in '/')."""
    options = {**app.launch_options(), **launch_overrides}
    app.demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True, **options)
    try:
        yield app.demo.local_url
    finally:
        app.demo.close(verbose=False)


def fn_index(app, fn) -> int:
    """The index under which the page calls the event whose handler is `fn` (as written, or wrapped by the app)."""
    return next(i for i, block_fn in app.demo.fns.items() if getattr(block_fn.fn, "__wrapped__", block_fn.fn) is fn)


def run_data(video: Any, question: str = "What word appears on the yellow sign?", **settings: Any) -> list[Any]:
    """The page's Run inputs in order, as the browser sends them (small settings by default)."""
    s = {"methods": ["vcast"], "retain_percent": 25, "num_frames": 4, "model": "tiny", "compare": False,
         "temperature": 0.7, "allocation": "curvature", "max_new_tokens": 8, "heatmap": False, **settings}  # fmt: skip
    return [video, question, *s.values()]


def api_data(video: Any, question: str = "What word appears on the yellow sign?", **settings: Any) -> list[Any]:
    """/analyze's inputs in order, as raw HTTP sends them."""
    return run_data(video, question, **settings)[:-1]


class AppProcess:
    """`python app.py ARGS` in a child process on a free port, with its own temp folder; stopped with SIGTERM."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.tmp = tmp
        self.log_path = tmp.parent / f"{tmp.name}.log"
        tmp.mkdir(parents=True, exist_ok=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "VCAST_"))}
        # TMPDIR holds everything the server writes to the temp folder (Gradio's uploads included).
        clean.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(tmp), **(env or {}))
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py", "--model", "tiny", "--port", str(self.port), *args],
                cwd=ROOT, env=clean, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_until_serving()

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    json.loads(response.read())
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"python app.py did not serve within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, as a container stops it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        return self.process.returncode


# -- the raw HTTP a browser (or any HTTP client) sends ------------------------------------------------------


def file_data(path: str, **extra: Any) -> dict[str, Any]:
    """A FileData payload naming `path` on the server."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}, **extra}


def upload(url: str, path: Path) -> dict[str, Any]:
    """Upload a file as the page does; its FileData on the server."""
    with path.open("rb") as f:
        response = httpx.post(url + "gradio_api/upload", files=[("files", (path.name, f))], timeout=REQUEST_TIMEOUT_S)
    response.raise_for_status()
    [server_path] = response.json()
    return file_data(server_path, orig_name=path.name)


def call_api(url: str, api_name: str, data: list[Any], timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[str, Any]:
    """POST /gradio_api/call/<api_name>, then read the result stream: ("complete", outputs) or ("error", message)."""
    body = json.dumps({"data": data})  # ASCII-escaped: also carries text httpx would not encode (a lone surrogate)
    response = httpx.post(url + f"gradio_api/call/{api_name}", content=body, timeout=timeout_s,
                          headers={"content-type": "application/json"})  # fmt: skip
    response.raise_for_status()
    event_id = response.json()["event_id"]
    event = None
    with httpx.stream("GET", url + f"gradio_api/call/{api_name}/{event_id}", timeout=timeout_s) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("complete", "error"):
                payload = json.loads(line.removeprefix("data: "))
                return event, payload["error"] if event == "error" else payload
    raise AssertionError(f"the result stream of {api_name} ended without a result")


class PageEvent:
    """One event run as the page runs it: join the queue, then read its messages from the session's stream."""

    def __init__(self, url: str, index: int, data: list[Any]):
        self.url, self.index = url, index
        self.session = uuid.uuid4().hex
        body = {"data": data, "fn_index": index, "session_hash": self.session, "event_data": None, "trigger_id": None}
        response = httpx.post(url + "gradio_api/queue/join", json=body, timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        self.event_id = response.json()["event_id"]
        self._stream = httpx.stream(
            "GET", url + "gradio_api/queue/data", params={"session_hash": self.session}, timeout=REQUEST_TIMEOUT_S
        )
        self._lines = self._stream.__enter__().iter_lines()

    def messages(self) -> Iterator[dict[str, Any]]:
        """The event's messages ("estimation", "process_starts", "process_generating", "process_completed")."""
        for line in self._lines:
            if line.startswith("data: "):
                message = json.loads(line.removeprefix("data: "))
                if message.get("event_id") == self.event_id:
                    yield message
                    if message["msg"] == "process_completed":
                        return

    def press(self, index: int, data: list[Any] | None = None) -> dict[str, Any]:
        """Another event of the same page that runs outside the queue (such as Stop), as the browser sends it."""
        body = {"data": data or [], "fn_index": index, "session_hash": self.session, "event_data": None,
                "trigger_id": None}  # fmt: skip
        response = httpx.post(self.url + "gradio_api/run/predict", json=body, timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def cancel(self) -> None:
        """Gradio's cancellation of a running event (what gradio_client's Job.cancel() sends)."""
        body = {"session_hash": self.session, "fn_index": self.index, "event_id": self.event_id}
        httpx.post(self.url + "gradio_api/cancel", json=body, timeout=REQUEST_TIMEOUT_S).raise_for_status()

    def disconnect(self) -> None:
        """Close the stream, as a closed browser tab does."""
        self._stream.__exit__(None, None, None)
