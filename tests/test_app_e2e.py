"""The app served for real: /analyze through gradio_client, its MCP tool, Gradio's upload sweep, and `python app.py`.

All run the tiny offline models on the CPU and talk only to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from _app_server import call_api, file_data, free_port, upload
from _app_server import served as serve
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests import _media as media

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "assets" / "examples.json").read_text())[1]
CLIP, QUESTION = str(ROOT / "assets" / EXAMPLE["file"]), EXAMPLE["question"]
STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def served(app):
    """(local URL, client) of the app launched in this process on a free port, its sweep every second."""
    app.demo.delete_cache = (1, 3)  # Gradio's own sweep of uploads: every second, those older than 3 s
    with serve(app) as url:
        yield url, Client(url, verbose=False)


def test_analyze_is_the_one_named_endpoint_with_every_setting_named_and_typed(served):
    _, client = served
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert list(endpoints) == ["/analyze"]
    params = {p["parameter_name"]: p for p in endpoints["/analyze"]["parameters"]}
    assert list(params) == ["video", "question", "methods", "retain_percent", "num_frames", "model", "compare",
                            "temperature", "allocation", "max_new_tokens"]  # fmt: skip
    assert not any(p["label"].startswith("parameter_") for p in params.values())
    assert params["video"]["python_type"]["type"] == "filepath" and not params["video"]["parameter_has_default"]
    assert params["methods"]["parameter_default"] == ["vcast"] and params["num_frames"]["type"] == {"type": "integer"}
    assert params["allocation"]["type"] == {"enum": ["curvature", "uniform", "uniqueness"]}
    assert "vidcom2" in params["methods"]["type"]["items"]["enum"]
    result = endpoints["/analyze"]["returns"][0]["type"]["properties"]  # the result's documented schema
    assert {"methods", "vcast", "full", "budgets", "selections", "notes"} <= set(result)
    assert "prefill_ms" in result["vcast"]["properties"]["metrics"]["properties"]


def test_the_mcp_schema_lists_the_analyze_tool_with_its_documented_parameters(served):
    url, _ = served
    [tool] = httpx.get(url + "gradio_api/mcp/schema", timeout=30).json()
    assert tool["name"] == "analyze" and tool["description"].startswith("Answer a question about a video")
    schema = tool["inputSchema"]
    assert schema["required"] == ["video", "question"]
    assert schema["properties"]["video"]["format"].startswith("Gradio File Input")  # MCP clients pass a URL
    assert schema["properties"]["num_frames"]["description"].startswith("the frames sampled evenly")


def test_analyze_with_three_methods_returns_three_answers_three_budget_lists_and_the_unpruned_answer(served):
    _, client = served
    result = client.predict(handle_file(CLIP), QUESTION, methods=["vcast", "evs", "vidcom2"], num_frames=8,
                            max_new_tokens=8, api_name="/analyze")  # fmt: skip
    assert list(result["methods"]) == ["vcast", "evs", "vidcom2"] and result["full"]["answer"]
    num_groups, rows, cols = result["grid_thw"]
    for name, entry in result["methods"].items():
        assert entry["answer"] and len(entry["budgets"]) == num_groups == 4
        kept = entry["metrics"]["visual_tokens_kept"]
        assert sum(entry["budgets"]) == kept < result["full"]["metrics"]["visual_tokens_kept"]
        groups = result["selections"][name]["groups"]
        assert [g["budget"] for g in groups] == entry["budgets"]
        assert all(len(g["kept_cells"]) == g["budget"] <= rows * cols for g in groups)
    assert result["vcast"] == result["methods"]["vcast"] and result["budgets"] == result["vcast"]["budgets"]


def test_analyze_on_a_llava_onevision_model_uses_one_frame_per_group(served):
    _, client = served
    result = client.predict(handle_file(CLIP), QUESTION, model="tiny-llava_onevision", num_frames=4, max_new_tokens=4,
                            api_name="/analyze")  # fmt: skip
    assert result["family"] == "llava_onevision" and result["frames_per_group"] == 1
    assert result["grid_thw"][0] == 4 == len(result["budgets"]) == len(result["group_times_s"])
    assert result["methods"]["vcast"]["answer"] and result["full"]["answer"]


def test_an_upload_folder_as_the_file_is_refused_and_gradios_sweep_still_deletes_uploads(served, tmp_path):
    url, _ = served
    # Clips of their own: an upload with an example clip's bytes is that example's cached copy, which Gradio keeps.
    first = Path(upload(url, media.clip(tmp_path / "first.mp4", 8))["path"])
    for folder in (first.parent, first.parent.parent):  # an upload's folder, and the upload folder itself
        data = [file_data(str(folder)), QUESTION]
        response = httpx.post(url + "gradio_api/call/analyze", json={"data": data}, timeout=30)
        assert response.status_code == 422 and "names a folder" in response.json()["detail"][0]["message"]
    assert first.parent.is_dir()
    later = Path(upload(url, media.clip(tmp_path / "later.mp4", 10))["path"])
    data = [file_data(str(later)), QUESTION, ["vcast"], 25, 4, None, False, 0.7, "curvature", 8]
    outcome, record = call_api(url, "analyze", data)
    assert outcome == "complete" and record[0]["vcast"]["answer"]  # the server answers as before
    deadline = time.monotonic() + 20
    while later.exists() and time.monotonic() < deadline:  # Gradio's sweep (every second here) deletes it
        time.sleep(0.5)
    assert not later.exists() and not first.exists()


def test_a_bad_upload_gets_a_readable_error_and_the_server_keeps_serving(served, tmp_path):
    _, client = served
    not_a_video = tmp_path / "holiday.mp4"
    not_a_video.write_text("this is a text file\n")
    with pytest.raises(AppError, match="text file, not a video"):
        client.predict(handle_file(str(not_a_video)), QUESTION, api_name="/analyze")
    result = client.predict(handle_file(CLIP), QUESTION, num_frames=4, max_new_tokens=8, compare=False,
                            api_name="/analyze")  # fmt: skip
    assert result["full"] is None and len(result["budgets"]) == 2


def test_python_app_py_starts_offline_on_the_tiny_model_says_so_and_serves_mcp(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VCAST_MODEL", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log_path = tmp_path / "app.log"
    with log_path.open("w") as log:
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
        assert config is not None, f"python app.py did not serve:\n{log_path.read_text()}"
        texts = " ".join(str(c["props"].get("value")) for c in config["components"] if c["type"] == "markdown")
        assert "cannot be reached" in texts and "random model" in texts
        dropdown = next(c for c in config["components"] if c["props"].get("label") == "Model")
        assert dropdown["props"]["value"] == "tiny"
        # Gradio prints the MCP address after it starts serving: give the line its moment
        while "/gradio_api/mcp/" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "tiny random model" in log_path.read_text() and "/gradio_api/mcp/" in log_path.read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
