"""vcast.request's server-side checks: which payloads are uploads, folders named as files, the sentence each failure
shows a user, and the Stop buttons' registry (plain Python: no server, no model)."""

from __future__ import annotations

import json

import pytest
import torch

from vcast.pipeline import ModelError
from vcast.request import (
    NOT_A_FILE,
    OUT_OF_MEMORY,
    StopRequests,
    is_refusal,
    is_upload,
    names_a_folder,
    upload_path,
    user_message,
)
from vcast.video import VideoError

META = {"_type": "gradio.FileData"}


def test_only_a_gradio_file_payload_is_an_upload():
    assert is_upload({"path": "/tmp/clip.mp4", "meta": META})
    assert not is_upload({"path": "/tmp/clip.mp4"})  # no marker: Gradio never checked it
    assert not is_upload({"path": "/tmp/clip.mp4", "meta": {"_type": "gradio.Other"}})
    assert not is_upload({"path": "/tmp/clip.mp4", "meta": "gradio.FileData"})  # a malformed marker, not a crash
    assert not is_upload({"path": 3, "meta": META})
    assert not is_upload("/tmp/clip.mp4") and not is_upload(None) and not is_upload([{"path": "x", "meta": META}])


def test_upload_path_reads_only_uploads_and_says_how_to_send_a_file():
    assert upload_path({"path": "/tmp/clip.mp4", "meta": META}) == "/tmp/clip.mp4"
    assert upload_path(None) is None  # check_request then asks for a video
    for not_uploaded in ("/etc/passwd", "https://example.com/clip.mp4", 7, {"path": "/etc/passwd"}, {}):
        with pytest.raises(ValueError) as caught:
            upload_path(not_uploaded)
        assert str(caught.value) == NOT_A_FILE
    assert NOT_A_FILE.startswith("Send the video as a file: upload it (with gradio_client, pass handle_file(")


def test_a_body_naming_a_folder_anywhere_is_caught_and_files_or_missing_paths_are_not(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0")

    def body(path) -> bytes:  # a queue/join request: the payload nested in its data list
        return json.dumps({"data": [{"path": str(path), "meta": META}, "a question"], "fn_index": 3}).encode()

    assert names_a_folder(body(tmp_path)) and names_a_folder(body(tmp_path).decode())
    assert not names_a_folder(body(clip)) and not names_a_folder(body(tmp_path / "gone.mp4"))
    assert not names_a_folder(json.dumps({"path": str(tmp_path)}))  # no file marker: not a file payload
    assert not names_a_folder(b"not json") and not names_a_folder(b"\xff\xfe")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (VideoError("This file is not a video."), "This file is not a video."),
        (ValueError("Choose at most 4 methods at once (methods), got 5."), "Choose at most 4 methods at once"),
        (ModelError("The model 'x' cannot be loaded."), "The model 'x' cannot be loaded."),
    ],
)
def test_a_refusal_shows_its_own_sentence(error, message):
    assert is_refusal(error) and user_message(error).startswith(message) and user_message(error) == str(error)


def test_faults_of_the_server_say_what_failed_and_what_to_try():
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert not is_refusal(oom) and user_message(oom) == OUT_OF_MEMORY
    assert OUT_OF_MEMORY == "The GPU ran out of memory on this video: sample fewer frames, or pick a smaller model."
    crash = RuntimeError("CUDA error: device-side assert triggered")
    assert not is_refusal(crash)
    assert user_message(crash) == (
        "The model failed on this video (RuntimeError: CUDA error: device-side assert triggered). Try again, or "
        "another clip."
    )


def test_stop_sets_only_the_running_page_event_and_the_event_goes_when_the_run_ends():
    stops = StopRequests()
    stops.stop("page-1")  # nothing running: nothing to do
    with stops.watching("page-1") as first, stops.watching("page-2") as second:
        assert "page-1" in stops and "page-2" in stops
        stops.stop("page-1")
        assert first.is_set() and not second.is_set()
    assert "page-1" not in stops and "page-2" not in stops


def test_a_newer_run_of_the_same_page_keeps_its_event_when_the_older_one_ends():
    stops = StopRequests()
    older = stops.watching("page")
    old = older.__enter__()
    with stops.watching("page") as new:
        older.__exit__(None, None, None)  # the older run ends while the newer one goes on
        assert "page" in stops
        stops.stop("page")
        assert new.is_set() and not old.is_set()
    assert "page" not in stops
