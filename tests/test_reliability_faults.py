"""Faults and limits through the launched app: out of memory, a cancelled request, the time and token limits.

The app runs in this process (tiny offline model, 127.0.0.1), so that a test can make the model fail once or
slow down: out-of-memory is simulated by making the vision tower or generate() raise torch.OutOfMemoryError
once (a real one on a GPU is in docs/RELIABILITY.md); generation is slowed by a sleep per token so that a
cancelled request visibly stops early. The page's Run and Stop are sent as the browser sends them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests._app_server import GOOD_CLIP, GOOD_QUESTION, GOOD_SETTINGS, PageEvent, fn_index, run_data, upload
from vcast import pipeline
from vcast.models.qwen3_vl import Qwen3VLAdapter

WAIT_S = 20  # the longest any wait here may take
SLOW_TOKEN_S = 0.01  # the slowed generation: 512 tokens take more than 5 s


@pytest.fixture(scope="module")
def qa(app):
    return app.MODELS.get("tiny")


def analyze(client: Client, **settings) -> dict:
    return client.predict(
        handle_file(str(GOOD_CLIP)), GOOD_QUESTION, api_name="/analyze", **{**GOOD_SETTINGS, **settings}
    )


@pytest.fixture(scope="module")
def reference(client) -> dict:
    return analyze(client)


def assert_still_serving(client: Client, reference: dict) -> None:
    again = analyze(client)
    assert again["vcast"]["answer"] == reference["vcast"]["answer"] and again["budgets"] == reference["budgets"]


def raise_once(error: BaseException, real):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    return wrapper


class Watch:
    """Counts the tokens a run's passes generate (slowed to SLOW_TOKEN_S each) and records how the run ended:
    "finished", else the name of the exception that ended it (Cancelled)."""

    def __init__(self, qa, monkeypatch):
        self.tokens, self.outcome, self.ended = 0, None, threading.Event()
        real = qa.answer

        def answer(*args, on_token=None, **kwargs):
            def counted(name, piece):
                self.tokens += 1
                time.sleep(SLOW_TOKEN_S)
                if on_token is not None:
                    on_token(name, piece)

            try:
                result = real(*args, on_token=counted, **kwargs)
                self.outcome = "finished"
                return result
            except BaseException as err:
                self.outcome = type(err).__name__
                raise
            finally:
                self.ended.set()

        monkeypatch.setattr(qa, "answer", answer)


# -- out of memory ------------------------------------------------------------------------------------------------

OOM_ADVICE = (
    "The GPU ran out of memory on this video ({stage}). Sample fewer frames (e.g. 16), use a lower resolution or a "
    "shorter clip, or pick a smaller model; the next request starts with the memory freed."
)


def test_out_of_memory_in_the_vision_tower_says_what_to_try_and_the_next_request_works(client, reference, monkeypatch):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(Qwen3VLAdapter, "encode", raise_once(oom, Qwen3VLAdapter.encode))
    with pytest.raises(AppError) as caught:
        analyze(client)
    assert str(caught.value) == OOM_ADVICE.format(stage="encoding the frames")
    assert_still_serving(client, reference)


def test_out_of_memory_while_generating_says_what_to_try_and_the_next_request_works(client, reference, qa, monkeypatch):
    monkeypatch.setattr(
        qa.model, "generate", raise_once(torch.OutOfMemoryError("CUDA out of memory."), qa.model.generate)
    )
    with pytest.raises(AppError) as caught:
        analyze(client)
    assert str(caught.value) == OOM_ADVICE.format(stage="generating the V-CAST answer")
    assert_still_serving(client, reference)


def test_out_of_memory_on_the_page_shows_the_advice_and_the_next_run_works(app, url, client, reference, monkeypatch):
    monkeypatch.setattr(Qwen3VLAdapter, "encode", raise_once(torch.OutOfMemoryError("CUDA"), Qwen3VLAdapter.encode))
    video = upload(url, GOOD_CLIP)
    data = run_data(video)
    *_, last = PageEvent(url, fn_index(app, app.run), data).messages()
    assert last["success"] is False and last["output"]["error"] == OOM_ADVICE.format(stage="encoding the frames")
    *_, last = PageEvent(url, fn_index(app, app.run), data).messages()
    assert last["success"] is True
    assert_still_serving(client, reference)


def test_out_of_memory_outside_the_model_run_is_caught_by_the_app_too(app):
    with pytest.raises(gr.Error) as caught, app.user_errors():
        raise torch.OutOfMemoryError("CUDA out of memory.")
    assert (
        caught.value.message == "The GPU ran out of memory on this video: sample fewer frames, or pick a smaller model."
    )


def test_a_crash_in_the_model_is_reported_and_the_next_request_works(client, reference, qa, monkeypatch):
    crash = RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(qa.model, "generate", raise_once(crash, qa.model.generate))
    with pytest.raises(AppError) as caught:
        analyze(client)
    assert str(caught.value) == (
        "The model failed on this video (RuntimeError: CUDA error: an illegal memory access was encountered). "
        "Try again, or another clip."
    )
    assert_still_serving(client, reference)


# -- cancellation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["Stop button", "page closed", "cancelled by a client"])
def test_a_cancelled_run_stops_generating_within_a_few_tokens(app, url, client, reference, qa, monkeypatch, how):
    watch = Watch(qa, monkeypatch)
    data = run_data(upload(url, GOOD_CLIP), compare=True, max_new_tokens=512)
    run = PageEvent(url, fn_index(app, app.run), data)
    for message in run.messages():  # wait until the V-CAST answer streams
        if message["msg"] == "process_generating" and "Generating the V-CAST answer" in str(message["output"]):
            break
    started_at = watch.tokens
    if how == "Stop button":
        run.press(fn_index(app, app.stop_run))
    elif how == "page closed":
        run.disconnect()
    else:
        run.cancel()
    assert watch.ended.wait(WAIT_S), "the generation went on after the request was cancelled"
    assert watch.outcome == "Cancelled"
    # 2 x 512 tokens were asked for; it stopped within a few of where it was (each token takes 10 ms here).
    assert watch.tokens - started_at < 50, (started_at, watch.tokens)
    if how == "Stop button":  # the run ends normally, saying it stopped, with the answer so far
        *_, last = run.messages()
        assert last["success"] is True and app.STOPPED in str(last["output"]["data"])
    if how != "page closed":
        run.disconnect()
    monkeypatch.undo()
    assert_still_serving(client, reference)


def test_the_stop_button_works_outside_the_queue(app):
    assert app.demo.fns[fn_index(app, app.stop_run)].queue is False  # it acts at once, even while the queue is full


# -- limits ---------------------------------------------------------------------------------------------------


def test_an_answer_cut_at_the_time_limit_says_so(client, reference, qa, monkeypatch):
    Watch(qa, monkeypatch)  # 10 ms a token: 0.3 s holds about 30 of the 512 asked for
    monkeypatch.setattr(qa, "max_generation_s", 0.3)
    record = analyze(client, max_new_tokens=512)
    tokens = record["vcast"]["metrics"]["new_tokens"]
    assert 1 <= tokens < 100
    assert record["notes"] == [
        f"The V-CAST answer stopped after {tokens} tokens: the answer reached the time limit; ask for a shorter answer "
        "or use fewer frames."
    ]
    assert record["vcast"]["stop_reason"] == "time_limit"
    monkeypatch.undo()
    assert_still_serving(client, reference)
    assert analyze(client)["notes"] == []


def test_the_served_model_has_the_apps_time_limit_and_the_token_cap_is_within_the_pipelines(app, qa):
    assert qa.max_generation_s == app.MAX_GENERATION_S
    assert app.MAX_NEW_TOKENS <= pipeline.MAX_NEW_TOKENS_LIMIT
    props = {c["props"].get("label"): c["props"] for c in app.demo.config["components"]}
    assert props["Max new tokens"]["maximum"] == app.MAX_NEW_TOKENS
    assert props["Question"]["max_length"] == app.MAX_QUESTION_CHARS


# -- the Stop button in a real browser ----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def page(url):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        ARTIFACTS.mkdir(exist_ok=True)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(url)
        page.wait_for_selector("#banner")
        yield page
        browser.close()


def test_stop_in_the_browser_stops_keeps_what_was_computed_and_leaves_no_empty_placeholder(page, qa, monkeypatch):
    watch = Watch(qa, monkeypatch)
    page.locator("tr.tr-body").nth(1).click()  # an example clip and its question
    page.wait_for_function("() => document.querySelector('video')?.src?.includes('brief_event')")
    page.get_by_role("button", name="Run", exact=True).click()
    stop = page.get_by_role("button", name="Stop", exact=True)
    stop.wait_for(state="visible", timeout=WAIT_S * 1000)
    page.wait_for_function("() => document.querySelector('#answer-0 textarea').value.length > 0")
    stop.click()
    assert watch.ended.wait(WAIT_S) and watch.outcome == "Cancelled"
    page.get_by_text("Stopped.").wait_for(timeout=WAIT_S * 1000)
    stop.wait_for(state="hidden", timeout=WAIT_S * 1000)
    assert watch.tokens < 2 * 128  # both answers were asked for 128 tokens each (at 10 ms a token)
    assert page.locator("#answer-0 textarea").input_value()  # the answer so far stays on the page
    # What was computed shows (the selection: its figure and overlays); what was not is hidden, not left empty.
    page.wait_for_function("() => document.querySelectorAll('#budget-plot .bars path').length > 0")
    assert page.locator("#gallery img").count() > 0
    assert page.locator("#cost-plot").is_hidden() and page.locator("#metrics").is_hidden()
    assert page.get_by_text("Everything as JSON").is_hidden()
    assert page.locator("#full-answer textarea").input_value() == "(stopped before this answer began)"
    page.screenshot(path=str(ARTIFACTS / "app_stopped.png"), full_page=True)

    monkeypatch.undo()
    page.get_by_role("button", name="Run", exact=True).click()
    page.locator("#status", has_text="Done").wait_for(timeout=WAIT_S * 1000 * 3)
