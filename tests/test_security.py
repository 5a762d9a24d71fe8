"""Security: what the API can read, how large an upload may be, where the server listens, what it leaves behind.

Through the app launched in this process (tiny offline model, 127.0.0.1): no file outside the upload folder can
be read through Gradio's file routes or opened by handing its path to /analyze (as text, as a file payload, as
a URL), and the model setting cannot make the server load a folder. Through `python app.py` in a child process:
it listens on 127.0.0.1 only, and on SIGTERM it exits and leaves no file behind in the temp folder.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file

from tests import _media as media
from tests._app_server import (
    GOOD_CLIP,
    GOOD_QUESTION,
    ROOT,
    AppProcess,
    PageEvent,
    api_data,
    call_api,
    file_data,
    fn_index,
    run_data,
    served,
    upload,
)

SECRET = "the contents of a private file"
NO_FILE = "Send the video as a file: upload it (with gradio_client, pass handle_file('clip.mp4')); a path or URL given as text is not read."  # noqa: E501


@pytest.fixture(scope="module")
def secret_file():
    """A private file in the system temp folder, beside (not in) Gradio's upload folder."""
    fd, name = tempfile.mkstemp(prefix="vcast-secret-", suffix=".mp4")
    os.write(fd, SECRET.encode())
    os.close(fd)
    yield Path(name)
    Path(name).unlink()


@pytest.fixture
def opened(app, monkeypatch) -> list[str]:
    """Every path the app's handlers hand to the video decoder."""
    import vcast.request

    paths: list[str] = []
    read_video = vcast.request.read_video
    monkeypatch.setattr(vcast.request, "read_video",
                        lambda path, **kwargs: paths.append(str(path)) or read_video(path, **kwargs))  # fmt: skip
    return paths


def test_no_file_outside_the_upload_folder_is_served_by_the_file_routes(url, secret_file):
    uploaded = Path(upload(url, GOOD_CLIP)["path"])
    private = [
        "/etc/passwd",
        "/proc/self/environ",  # the server's environment: tokens live there
        str(ROOT / "app.py"),
        str(ROOT / "assets" / "brief_event.mp4"),  # the repository itself is not served, only Gradio's copies
        str(secret_file),
        f"{uploaded.parent}/../../{secret_file.name}",
        f"{uploaded.parent}/..%2f..%2f{secret_file.name}",
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fetc/passwd",
    ]
    for path in private:
        for route in ("gradio_api/file=", "gradio_api/file/", "file=", "gradio_api/proxy=http://127.0.0.1:1/"):
            response = httpx.get(url + route + path, timeout=30)
            assert response.status_code in (400, 403, 404), (route, path, response.status_code)
            assert SECRET not in response.text and "root:" not in response.text
    # The same routes do serve an upload: the refusals above are not a route that serves nothing.
    response = httpx.get(url + f"gradio_api/file={uploaded}", timeout=30)
    assert response.status_code == 200 and response.content == GOOD_CLIP.read_bytes()


def test_a_server_path_given_as_the_video_is_refused_before_anything_opens_it(url, secret_file, opened):
    for path in ("/etc/passwd", str(secret_file), str(ROOT / "assets" / "brief_event.mp4")):
        # As text (what gradio_client sends for a plain string), and as a file payload (what it sends after an
        # upload, here naming a file that was never uploaded).
        assert call_api(url, "analyze", api_data(path)) == ("error", NO_FILE)
        message = f"Cannot move {path} to the gradio cache dir because it was not uploaded by a user."
        assert call_api(url, "analyze", api_data(file_data(path))) == ("error", message)
    assert opened == []


@pytest.mark.parametrize(
    "address",
    [
        "http://127.0.0.1:{port}/gradio_api/file=/etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:1/",
    ],
)
def test_a_url_to_a_private_address_is_not_fetched(url, opened, address):
    address = address.format(port=httpx.URL(url).port)
    outcome, message = call_api(url, "analyze", api_data(file_data(address, url=address)))
    assert outcome == "error" and message.startswith("Hostname ") and message.endswith(" failed validation")
    assert opened == []


def test_the_model_setting_cannot_make_the_server_load_a_folder(app, url, monkeypatch):
    loaded: list[str] = []
    monkeypatch.setattr(app.MODELS, "load", lambda model_id: loaded.append(model_id))
    for model in (str(ROOT), "/tmp", "Qwen/Qwen3-VL-32B-Instruct"):
        upload_ = upload(url, GOOD_CLIP)
        message = f"The model {model!r} is not offered here; choose one of: {', '.join(app.OFFERED)}."
        assert call_api(url, "analyze", api_data(upload_, model=model)) == ("error", message)
    assert loaded == []


def test_uploads_are_limited_to_the_apps_size(app, monkeypatch, tmp_path):
    assert app.launch_options()["max_file_size"] == f"{app.MAX_UPLOAD_MB}mb" == "200mb"
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 * 2**20 // 2))  # 1.5 MB
    monkeypatch.setattr(app, "MAX_UPLOAD_MB", 1)
    monkeypatch.setattr(app, "LIMITS", dataclasses.replace(app.LIMITS, max_upload_mb=1))
    with served(app) as small_url:  # the same app, launched with a 1 MB limit
        response = httpx.post(small_url + "gradio_api/upload", files=[("files", ("big.mp4", big.read_bytes()))])
        assert response.status_code == 413
        assert response.text == "File size exceeded maximum allowed size of 1048576 bytes."
        with pytest.raises(ValueError, match=r"exceeds the maximum file size of 1048576 bytes"):
            Client(small_url, verbose=False).predict(handle_file(str(big)), GOOD_QUESTION, api_name="/analyze")
    # A file that reaches the decoder some other way is held to the same limit.
    with pytest.raises(app.VideoError, match=r"^The file is 1\.5 MB, more than the 1\.0 MB limit; trim or compress"):
        app.decode(str(big), 4)


# -- the real command line -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def process(tmp_path_factory):
    """`python app.py` with a temp folder of its own, so that what it leaves behind can be seen."""
    server = AppProcess(tmp_path_factory.mktemp("security") / "tmp")
    yield server
    server.stop()


def test_python_app_py_listens_on_localhost_only(process):
    listening = {c.laddr.ip for c in psutil.Process(process.pid).net_connections(kind="inet") if c.status == "LISTEN"}
    assert listening == {"127.0.0.1"}


def test_on_sigterm_the_server_exits_and_leaves_no_file_in_the_temp_folder(app, process, tmp_path):
    # An upload through /analyze, and a run on the page (gallery images, the result JSON), with a browser-like
    # connection still open when the server is told to stop.
    clip = media.clip(tmp_path / "holiday.mp4", 20)
    client = Client(process.url, verbose=False)
    record = client.predict(handle_file(str(clip)), GOOD_QUESTION, api_name="/analyze", num_frames=4, max_new_tokens=4)
    assert record["vcast"]["answer"]
    uploaded = upload(process.url, clip)
    run = PageEvent(process.url, fn_index(app, app.run), run_data(uploaded))
    *_, last = run.messages()
    assert last["success"] is True, last
    written = [p for p in process.tmp.rglob("*") if p.is_file()]
    assert any(p.name == "holiday.mp4" for p in written) and any(p.name == "vcast_result.json" for p in written)
    assert Path(uploaded["path"]).is_relative_to(process.tmp)  # uploads land in the process's own temp folder

    assert process.stop() == 0
    run.disconnect()
    assert [p for p in process.tmp.rglob("*") if p.is_file()] == []
