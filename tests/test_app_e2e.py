"""The app served for real: /analyze through gradio_client, and `python app.py` from the command line.

Both run the tiny offline model on the CPU and talk only to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _app_server import free_port
from _app_server import served as serve
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "assets" / "examples.json").read_text())[1]
CLIP, QUESTION = str(ROOT / "assets" / EXAMPLE["file"]), EXAMPLE["question"]
STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def served(app):
    """(local URL, client) of the app launched in this process on a free port."""
    with serve(app) as url:
        yield url, Client(url, verbose=False)


def test_the_server_listens_on_localhost_only(served):
    url, _ = served
    assert url.startswith("http://127.0.0.1:")


def test_analyze_is_the_one_named_endpoint_and_takes_the_video_and_question_first(served):
    _, client = served
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert list(endpoints) == ["/analyze"]
    params = endpoints["/analyze"]["parameters"]
    assert [p["parameter_name"] for p in params[:2]] == ["video", "question"]
    assert not any(p["parameter_has_default"] for p in params[:2])
    assert all(p["parameter_has_default"] for p in params[2:])
    assert {p["parameter_name"]: p["parameter_default"] for p in params[2:]}["retain_percent"] == 25


def test_analyze_answers_with_fewer_visual_tokens_for_vcast_and_one_budget_per_group(served):
    _, client = served
    result = client.predict(handle_file(CLIP), QUESTION, num_frames=8, max_new_tokens=8, api_name="/analyze")
    vcast, full = result["vcast"], result["full"]
    assert isinstance(vcast["answer"], str) and vcast["answer"]
    assert isinstance(full["answer"], str) and full["answer"]
    assert vcast["metrics"]["visual_tokens_kept"] < full["metrics"]["visual_tokens_kept"]
    assert vcast["metrics"]["visual_tokens_in"] == full["metrics"]["visual_tokens_kept"]
    num_groups, rows, cols = result["grid_thw"]
    assert num_groups == 4 and len(result["budgets"]) == num_groups
    groups = result["selection"]["groups"]
    assert [g["budget"] for g in groups] == result["budgets"]
    assert all(len(g["kept_cells"]) == g["budget"] <= rows * cols for g in groups)
    assert sum(result["budgets"]) == vcast["metrics"]["visual_tokens_kept"]


def test_a_bad_upload_gets_a_readable_error_and_the_server_keeps_serving(served, tmp_path):
    _, client = served
    not_a_video = tmp_path / "holiday.mp4"
    not_a_video.write_text("this is a text file\n")
    with pytest.raises(AppError, match="text file, not a video"):
        client.predict(handle_file(str(not_a_video)), QUESTION, api_name="/analyze")
    result = client.predict(handle_file(CLIP), QUESTION, num_frames=4, max_new_tokens=8, compare=False,
                            api_name="/analyze")  # fmt: skip
    assert result["full"] is None and len(result["budgets"]) == 2


def test_python_app_py_starts_offline_on_the_tiny_model_with_the_banner(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VCAST_MODEL", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)  # fmt: skip
    try:
        config = None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while config is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert config is not None, f"python app.py did not serve:\n{(tmp_path / 'app.log').read_text()}"
        texts = " ".join(str(c["props"].get("value")) for c in config["components"] if c["type"] == "markdown")
        assert "cannot be reached" in texts and "random weights" in texts
        dropdown = next(c for c in config["components"] if c["props"].get("label") == "Model")
        assert dropdown["props"]["value"] == "tiny"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
