"""V-CAST app: upload a video, ask a question, see each pruning method's answer beside the unpruned model's.

    python app.py [--model ID_OR_FOLDER] [--host 0.0.0.0] [--port 7860] [--max-queue 32] [--compile]

`build_demo(qa)` lays the page out around a loaded VideoQA (importing this module loads no model); scripts and MCP
clients call its `analyze` tool. docs/RELIABILITY.md lists every bad input, fault and limit tried.
"""

# ZeroGPU attaches a GPU per call through `spaces`, which must be imported before torch touches CUDA.
try:
    import spaces
except ImportError:
    spaces = None

import argparse
import atexit
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

import fastapi
import gradio as gr
import torch
from gradio_client.utils import is_file_obj_with_meta

import viz
from vcast import VCastConfig, catalogue, pipeline
from vcast.pipeline import FULL, ModelError, QAResult, VideoQA
from vcast.report import ResultRecord, cut_short, label, metric_markdown, result_record
from vcast.request import NOT_REGULAR, AnswerRequest, Limits, check_request, read_request_video
from vcast.video import VideoClip, VideoError

logger = logging.getLogger("vcast.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES = [[str(ROOT / "assets" / e["file"]), e["question"]]
            for e in json.loads((ROOT / "assets/examples.json").read_text())]
# Limits a shared Space can afford; the page tells each next to the input it limits.
MAX_UPLOAD_MB, MAX_DURATION_S, MAX_FRAMES, MAX_NEW_TOKENS, MAX_QUESTION_CHARS = 200, 300.0, 64, 512, 2000
MAX_METHODS = 4  # V-CAST and up to 3 more, each a pass of its own
MAX_GENERATION_S, MAX_DECODE_S = 50.0, 30.0  # per answer; per video, in CPU-core seconds of decoding
MAX_QUEUE_SIZE = 32  # requests waiting beyond this are refused at once ("busy, try again")
ZERO_GPU_GIB, ZERO_GPU_MAX_S = 70.0, 120  # a ZeroGPU slice of an H200, and its longest reservation
OUTPUT_MAX_AGE_S, CACHE_SWEEP_S = 3600, 600  # uploads, outputs and page state older than this go, checked this often
ON_ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
COMPARE_OFF = "(comparison off: tick “Compare with the unpruned model” to run it too)"
NOT_A_FILE = ("Send the video as a file: upload it (with gradio_client, pass handle_file('clip.mp4')); a path or URL "
              "given as text is not read.")  # fmt: skip
TINY_COSTS = ("**Timings are left out:** those of a tiny random model on a CPU say nothing about what pruning saves. "
              "Token counts and memory are real; a real model on a GPU adds prefill, first-token and speed.\n\n")
STOPPED = "**Stopped.** The answers end where the generation stopped; press Run to start again."


def load(model_id: str, *, compile_model: bool = False) -> VideoQA:
    """`model_id` with the app's time limit per answer, warmed up (not on ZeroGPU: no GPU outside a call there)."""
    options = {"max_generation_s": MAX_GENERATION_S, **({"device_map": "cuda"} if ON_ZERO_GPU else {})}
    if compile_model and not ON_ZERO_GPU and torch.cuda.is_available():
        options.update(compile_vision=True, compile_decode=True)
    qa = VideoQA.from_pretrained(model_id, **options)
    if not (ON_ZERO_GPU or qa.is_tiny):
        logger.info("warmed %s up in %.1f s", model_id, qa.warm_up(EXAMPLES[0][0]))
    return qa


MODELS = catalogue.ModelSlot(load)  # module-level: ZeroGPU's worker process reaches the model through it
OFFERED: list[str] = []  # the models a request may name (build_demo sets them)


def load_startup_model(requested: str | None, *, hub_ok: bool, gpu_gib: float, **options) -> tuple[VideoQA, str | None]:
    """The model to serve and a banner (Markdown) saying how the app is degraded, or None; the log says so too."""
    why = "as asked" if requested else "the Hugging Face hub cannot be reached from here"
    try:
        qa = load(catalogue.startup_model_id(requested, hub_ok=hub_ok, gpu_gib=gpu_gib), **options)
    except ModelError as err:
        qa, why = load(catalogue.TINY_MODELS[0]), str(err)
    if qa.is_tiny:
        logger.warning("serving %s, a tiny random model (%s): its answers are noise", qa.model_id, why)
        return qa, (f"⚠️ **Offline demo: a tiny random model** ({why}). Its answers are noise; selections, figures "
                    "and token counts are real. For real answers, run it where huggingface.co is reachable or give "
                    "`--model` a downloaded checkpoint.")  # fmt: skip
    on_cpu = qa.device.type == "cpu"
    return qa, f"⚠️ **No GPU:** `{qa.model_id}` runs on the CPU; an answer takes minutes." if on_cpu else None


# -- the GPU part: picklable in, picklable out (ZeroGPU runs it in a process of its own) --------------------------


def gpu_seconds(model_id, clip: VideoClip, question, config, methods: list[str], compare: bool, max_new_tokens: int):
    """ZeroGPU's reservation (same arguments as answer_events): the vision tower by frames, each pass by its token cap
    (about 20 tokens/s on a ZeroGPU slice), within the longest reservation there is."""
    return int(min(ZERO_GPU_MAX_S, 15 + 0.3 * clip.num_frames + (len(methods) + compare) * (3 + max_new_tokens / 20)))


def _on_gpu(fn):
    return spaces.GPU(duration=gpu_seconds)(fn) if spaces is not None else fn


@_on_gpu
def answer_events(model_id: str, clip: VideoClip, question: str, config: VCastConfig, methods: list[str],
                  compare: bool, max_new_tokens: int) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """VideoQA.stream's events: ("selected", QAResult without passes) once every method has selected; (pass name,
    text piece) as tokens arrive; ("pass", PassResult) as each pass ends; then ("done", QAResult). Closing it stops
    generating at the next token."""
    yield from MODELS.get(model_id).stream(clip, question, config=config, methods=methods, compare=compare,
                                           max_new_tokens=max_new_tokens)  # fmt: skip


# -- checks: vcast.request names every unusable setting as the page and the API do --------------------------------

LIMITS = Limits(max_frames=MAX_FRAMES, max_new_tokens=MAX_NEW_TOKENS, max_question_chars=MAX_QUESTION_CHARS,
                max_methods=MAX_METHODS, max_upload_mb=MAX_UPLOAD_MB, max_duration_s=MAX_DURATION_S,
                max_decode_s=MAX_DECODE_S)  # fmt: skip


def decode(path: str, num_frames: int) -> VideoClip:
    return read_request_video(path, num_frames, LIMITS)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Every failure becomes a gr.Error whose message says what to do; the server keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except (VideoError, ModelError, ValueError) as err:
        logger.info("refused: %s", err)  # the user's input, not a fault of the server: no traceback
        raise gr.Error(str(err), print_exception=False) from err
    except torch.OutOfMemoryError as err:  # outside the model's own handling, e.g. loading another model
        message = "The GPU ran out of memory on this video: sample fewer frames, or pick a smaller model."
        raise gr.Error(message) from err
    except Exception as err:
        logger.exception("run failed")
        message = f"The model failed on this video ({type(err).__name__}: {err}). Try again, or another clip."
        raise gr.Error(message) from err


async def regular_files_only(request: fastapi.Request) -> None:
    """Refuse a request whose file payload names anything but a regular file (an upload folder) before Gradio
    registers that path for its cache sweep, which would end on os.remove(folder) and never delete again."""
    if request.method == "POST" and "json" in request.headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            if _names_a_folder(json.loads(await request.body())):
                # gr.validate's reply: gradio_client raises it as a ValidationError carrying the message
                raise fastapi.HTTPException(422, [{"__type__": "validate", "is_valid": False, "message": NOT_REGULAR,
                                                   "parameter_name": "video"}])  # fmt: skip


def _names_a_folder(data: Any) -> bool:
    if is_file_obj_with_meta(data):
        return os.path.exists(data["path"]) and not os.path.isfile(data["path"])
    items = data.values() if isinstance(data, dict) else data if isinstance(data, list) else ()
    return any(map(_names_a_folder, items))


# -- what a run shows: figures, overlays and costs, from plain records --------------------------------------------


def drawn(partial: QAResult, passes: dict, heatmap: bool) -> dict[str, Any]:
    """What a run computed, drawn: every method's selection (budgets over the curvature, overlays), and the costs of
    the passes that ended."""
    view = viz.SelectionView.of(partial, {m: label(m) for m in partial.selections})
    update = {"budget_plot": view.allocation(), "overlay_state": view, "drawn": gr.Column(visible=True),
              "overlay_method": gr.Radio([(label(m), m) for m in view.records], value=view.main,
                                         visible=len(view.records) > 1),
              "frame_slider": gr.Slider(0, len(view.frames) - 1, value=0, step=1),
              **overlays(view, view.main, heatmap)}  # fmt: skip
    full = passes.pop(FULL, None)
    if passes:
        result = dataclasses.replace(partial, passes=passes, full=full)
        timings = pipeline.tiny_family(result.model_id) is None
        runs = {label(m): p.metrics for m, p in [*passes.items(), *[(FULL, full)] * (full is not None)]}
        table = TINY_COSTS * (not timings) + metric_markdown(result, timings=timings)
        plot = viz.cost_figure(runs, baseline=label(FULL), metrics=viz.COST_METRICS if timings else viz.COUNT_METRICS)
        update |= {"costs": gr.Row(visible=True), "metrics_table": table, "cost_plot": plot}
    return update


def overlays(view: viz.SelectionView | None, method: str, heatmap: bool, frame: int | None = None) -> dict[str, Any]:
    """The gallery (opened on `frame`, if one) and the contact sheet of `method`; the overlay controls' handler."""
    if view is None:
        return {}
    gallery = gr.Gallery(view.gallery(method, heatmap), selected_index=frame)  # None: no preview, nothing scrolls
    return {"gallery": gallery, "sheet": view.sheet(method, heatmap)}


class AnalyzeResult(ResultRecord):
    """/analyze's result: a ResultRecord, every method's kept grid cells per temporal group under `selections`
    (viz.export.selection_to_dict; `selection` is the main method's), and `notes`: a sentence on how the video was
    read where it was not read as usual, and one per answer the time limit cut."""

    selections: dict[str, dict[str, Any]]
    selection: dict[str, Any]
    notes: list[str]


def api_record(result: QAResult) -> AnalyzeResult:
    selections = {m: viz.selection_to_dict(r) for m, r in viz.selection_records(result).items()}
    return {**result_record(result), "selections": selections, "selection": selections[result.main_method],
            "notes": [*result.clip.notes, *cut_short(result, reasons=("time_limit",))]}  # fmt: skip


OUTPUTS = Path(tempfile.mkdtemp(prefix="vcast-app-"))  # the JSON files the page offers; old ones go with Gradio's sweep
atexit.register(shutil.rmtree, OUTPUTS, ignore_errors=True)
STOP_REQUESTS: dict[str | None, threading.Event] = {}  # the Stop button's, one per page: its run checks between tokens


# -- handlers: plain functions, updates keyed by component name --------------------------------------------------


def run(video: str | None, question: str, methods: list[str], retain_percent: float, num_frames: float, model: str,
        compare: bool, temperature: float, allocation: str, max_new_tokens: float, heatmap: bool,
        request: gr.Request | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The Run button: each stage as it starts, every answer as it streams, then figures, overlays and costs.
    Stop (on the same page) ends the generation at the next token and shows what was computed by then."""
    started = time.perf_counter()
    with user_errors(), watching(getattr(request, "session_hash", None)) as stop:
        r = check_request(video, question, methods, retain_percent, num_frames, model, compare, temperature,
                          allocation, max_new_tokens, offered=OFFERED, limits=LIMITS)  # fmt: skip
        names = [*r.methods, *[FULL] * r.compare]
        steps, texts = len(names) + 3, dict.fromkeys(names, "")
        yield {"results": gr.Column(visible=True), "full_answer": "" if r.compare else COMPARE_OFF,
               "status": step(1, steps, "Decoding and sampling the frames"), "stop_button": gr.Button(visible=True),
               "costs": gr.Row(visible=False), "drawn": gr.Column(visible=False), "result_file": gr.File(visible=False),
               **{f"answer_{i}": gr.Textbox("", label=f"{label(m)} answer", visible=True)
                  for i, m in enumerate(r.methods)},
               **{f"answer_{i}": gr.Textbox(visible=False) for i in range(len(r.methods), MAX_METHODS)}}  # fmt: skip
        clip = decode(r.video, r.num_frames)
        loading = "E" if MODELS.model_id == r.model else f"Loading {r.model}, then e"
        yield {"status": step(2, steps, f"{loading}ncoding {clip.num_frames} frames and selecting tokens")}
        partial, passes, result, shown_at = None, {}, None, 0.0
        events = answer_events(r.model, clip, r.question, r.config, r.methods, r.compare, r.max_new_tokens)
        with contextlib.closing(events):  # leaving closes the stream, which stops the generation
            for kind, payload in events:
                if stop.is_set() or kind == "done":
                    result = payload if kind == "done" else None
                    break
                if kind == "selected":
                    partial = payload
                elif kind == "pass":
                    passes[payload.method] = payload
                else:  # a few refreshes a second read as streaming; one per token would slow the timed generation
                    texts[kind] += payload
                    if texts[kind] == payload or time.perf_counter() - shown_at > 0.1:
                        shown_at = time.perf_counter()
                        stage = step(3 + names.index(kind), steps, f"Generating the {label(kind)} answer")
                        yield {**answers(r, texts), "status": stage}
        if result is None and not stop.is_set():
            raise ModelError("The model stopped before it finished its answers; please run again.")
        final = {**answers(r, texts), "stop_button": gr.Button(visible=False)}
        if result is None:  # stopped: what was computed by then, and nothing empty
            texts = {name: text or "(stopped before this answer began)" for name, text in texts.items()}
            computed = drawn(partial, passes, heatmap) if partial else {}
            yield {**final, **answers(r, texts), **computed, "status": STOPPED}
            return
        yield {"status": step(steps, steps, "Drawing the figures and overlays")}
        for old in OUTPUTS.iterdir():  # Gradio serves its own copy: ours may go once a page could still ask for it
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(old) if old.stat().st_mtime < time.time() - OUTPUT_MAX_AGE_S else None
        folder = Path(tempfile.mkdtemp(dir=OUTPUTS))
        (folder / "vcast_result.json").write_text(json.dumps(api_record(result), indent=1), encoding="utf-8")
        kept, total = result.pruned.metrics.visual_tokens_kept, result.pruned.metrics.visual_tokens_in
        notes = " ".join(f"⚠️ {n}" for n in [*clip.notes, *cut_short(result, reasons=("time_limit",))])
        yield {**final, **drawn(result, {**result.passes, FULL: result.full}, heatmap),
               "result_file": gr.File(str(folder / "vcast_result.json"), visible=True),
               "status": f"**Done** in {time.perf_counter() - started:.1f} s on `{result.model_id}` · "
                         f"{clip.num_frames} frames · {label(result.main_method)} kept **{kept:,} of {total:,}** "
                         f"visual tokens ({kept / max(total, 1):.0%}). {notes}"}  # fmt: skip


@contextlib.contextmanager
def watching(session: str | None) -> Iterator[threading.Event]:
    """The event the Stop button of page `session` sets while its run lasts."""
    event = STOP_REQUESTS[session] = threading.Event()
    try:
        yield event
    finally:
        if STOP_REQUESTS.get(session) is event:
            del STOP_REQUESTS[session]


def answers(r: AnswerRequest, texts: dict[str, str]) -> dict[str, str]:
    return {**{f"answer_{i}": texts[m] for i, m in enumerate(r.methods)}, "full_answer": texts.get(FULL, COMPARE_OFF)}


def step(n: int, steps: int, stage: str) -> str:
    return f"Step {n} of {steps} · **{stage}…**"


def clicked_frame(event: gr.SelectData) -> int:
    """A click on a gallery thumbnail moves the frame slider there."""
    return event.index


def stop_run(request: gr.Request) -> dict[str, Any]:
    """The Stop button: ask this page's run to stop (it says so when it has), and hide the button."""
    if (event := STOP_REQUESTS.get(request.session_hash)) is not None:
        event.set()
    return {"stop_button": gr.Button(visible=False)}


class FileMeta(TypedDict):
    _type: Literal["gradio.FileData"]


class VideoFile(TypedDict):
    """An uploaded file, as gradio_client's handle_file('clip.mp4') sends it (so MCP clients pass a URL)."""

    path: str
    meta: FileMeta


def analyze(video: VideoFile, question: str, methods: list[Literal[tuple(pipeline.METHODS)]] = ["vcast"],  # noqa: B006
            retain_percent: float = 25.0, num_frames: int = 16, model: str | None = None, compare: bool = True,
            temperature: float = 0.7, allocation: Literal["curvature", "uniform", "uniqueness"] = "curvature",
            max_new_tokens: int = pipeline.DEFAULT_MAX_NEW_TOKENS) -> AnalyzeResult:  # fmt: skip
    """Answer a question about a video with V-CAST (and other token-pruning methods) and, if compare, unpruned.

    Args:
        video: the video file (MP4, MOV, WebM or MKV; up to 200 MB and 5 minutes), uploaded.
        question: what to ask about the video, in plain text (at most 2,000 characters).
        methods: 1 to 4 pruning methods: vcast, uniform, uniqueness, first_2x2, random_2x2, avgpool_2x2, evs, vidcom2.
        retain_percent: the percent of the video's visual tokens each method keeps, above 0 and at most 100.
        num_frames: the frames sampled evenly over the video, an even number from 2 to 64.
        model: the model to answer with, one the app offers (default: the one it started with).
        compare: also answer with the unpruned model (every visual token), for the comparison.
        temperature: V-CAST's allocation temperature in softmax(curvature / temperature); lower favours sharp turns.
        allocation: V-CAST's budget allocation: curvature (V-CAST), uniform or uniqueness (baselines).
        max_new_tokens: the longest answer, in tokens, from 1 to 512.
    Returns:
        one JSON object: methods (each one's answer, metrics, tokens kept per group), full (unpruned), selections.
    """
    with user_errors():
        if video is not None and not is_file_obj_with_meta(video):  # a path as text, a number: not an upload
            raise ValueError(NOT_A_FILE)
        r = check_request(video and video["path"], question, methods, retain_percent, num_frames,
                          model or OFFERED[0], compare, temperature, allocation, max_new_tokens, offered=OFFERED,
                          limits=LIMITS)  # fmt: skip
        events = answer_events(r.model, decode(r.video, r.num_frames), r.question, r.config, r.methods, r.compare,
                               r.max_new_tokens)  # fmt: skip
        with contextlib.closing(events):
            return api_record(next(payload for kind, payload in events if kind == "done"))


# -- layout and wiring ----------------------------------------------------------------------------------------------

SCROLL_TO_ANSWERS = """() => { let tries = 0; const go = () => {
  if (document.getElementById("answer-0")?.offsetParent) document.getElementById("status").scrollIntoView();
  else if (tries++ < 100) setTimeout(go, 50); }; go(); }"""



def build_demo(qa: VideoQA, *, banner: str | None = None, models: list[str] | None = None,
               cache_sweep_s: tuple[int, int] = (CACHE_SWEEP_S, OUTPUT_MAX_AGE_S)) -> gr.Blocks:  # fmt: skip
    """The page and the `analyze` tool around the loaded `qa`. models: what the model menu offers (default: the
    catalogue's choice for this machine); cache_sweep_s: (how often, beyond what age) uploads and outputs go."""
    MODELS.held, gpu_gib = qa, ZERO_GPU_GIB if ON_ZERO_GPU else catalogue.gpu_memory_gib()
    models = models or catalogue.model_choices(qa.model_id, hub_ok=not qa.is_tiny, gpu_gib=gpu_gib)
    OFFERED[:] = [qa.model_id, *(m for m in models if m != qa.model_id)]  # the started model is the API's default
    ui: dict[str, Any] = {}
    with gr.Blocks(title="V-CAST: which video tokens does a video LLM need?", delete_cache=cache_sweep_s) as demo:
        gr.Markdown("# V-CAST · which video tokens does a video LLM need?\nAsk about a video: V-CAST keeps a share "
                    "of its visual tokens, spent where the video changes, and answers beside the unpruned model, with "
                    "what each cost. [Paper](https://arxiv.org/abs/2603.27650) · "
                    "[Code](https://github.com/xinyouu/V-CAST)")
        gr.Markdown(banner or "", elem_id="banner", visible=banner is not None)
        with gr.Accordion("How V-CAST works", open=False):
            gr.Markdown((ROOT / "assets" / "how_it_works.md").read_text(encoding="utf-8"))
        question = gr.Textbox(label="Question", placeholder="What happens in this video?", lines=2,
                              max_length=MAX_QUESTION_CHARS, render=False)  # fmt: skip
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=300):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video-in")
                gr.Markdown(f"MP4, MOV, WebM or MKV · up to {MAX_UPLOAD_MB} MB and {MAX_DURATION_S / 60:.0f} minutes.")
                gr.Examples(EXAMPLES, [video, question], label="Examples: click one, then Run")
            with gr.Column(scale=6, min_width=300):
                question.render()
                methods = gr.CheckboxGroup([(label(m), m) for m in pipeline.METHODS], value=["vcast"],
                                           label=f"Methods (up to {MAX_METHODS})", elem_id="methods")
                with gr.Row():
                    retain = gr.Slider(5, 100, value=25, step=1, label="Visual tokens kept (%)", min_width=220)
                    frames = gr.Slider(2, MAX_FRAMES, value=32 if gpu_gib else 16, step=2, label="Frames sampled",
                                       min_width=220)  # fmt: skip
                model = gr.Dropdown(OFFERED, value=qa.model_id, label="Model", interactive=len(OFFERED) > 1)
                compare = gr.Checkbox(value=True, label="Compare with the unpruned model")
                with gr.Accordion("Advanced", open=False), gr.Row():
                    temperature = gr.Slider(0.05, 5.0, value=0.7, step=0.05, label="V-CAST's allocation temperature",
                                            info="softmax(curvature / T): a lower T favours the sharpest turns")
                    allocation = gr.Dropdown(["curvature", "uniform", "uniqueness"], value="curvature",
                                             label="V-CAST's allocation", info="curvature is V-CAST; others: baselines")
                    max_tokens = gr.Slider(8, MAX_NEW_TOKENS, value=pipeline.DEFAULT_MAX_NEW_TOKENS, step=8,
                                           label="Max new tokens")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", scale=3)
                    ui["stop_button"] = gr.Button("Stop", variant="stop", visible=False, scale=1, min_width=80)
                ui["status"] = gr.Markdown(elem_id="status")
        with gr.Column(visible=False) as ui["results"]:
            with gr.Row(equal_height=True):
                for i in range(MAX_METHODS):
                    ui[f"answer_{i}"] = gr.Textbox(label="Answer", elem_id=f"answer-{i}", lines=4, max_lines=12,
                                                   buttons=["copy"], min_width=240, visible=i == 0)  # fmt: skip
                ui["full_answer"] = gr.Textbox(label="Unpruned answer", elem_id="full-answer", lines=4, max_lines=12,
                                               buttons=["copy"], min_width=240)  # fmt: skip
            with gr.Row(visible=False, equal_height=False) as ui["costs"]:
                with gr.Column(min_width=320):
                    ui["metrics_table"] = gr.Markdown(elem_id="metrics")
                with gr.Column(min_width=320):
                    ui["cost_plot"] = gr.Plot(show_label=False, elem_id="cost-plot")
            with gr.Column(visible=False) as ui["drawn"]:
                gr.Markdown("### Where the token budget goes\nTokens kept per temporal group against the curvature of "
                            "the video's trajectory.")  # fmt: skip
                ui["budget_plot"] = gr.Plot(show_label=False, elem_id="budget-plot")
                gr.Markdown("### Which patches were kept\nBright, outlined patches reached the language model; greyed "
                            "ones did not. The heatmap colours each token by the method's score.")  # fmt: skip
                with gr.Row():
                    ui["overlay_method"] = gr.Radio(label="Method", elem_id="overlay-method", scale=2, min_width=220)
                    heatmap = gr.Checkbox(value=False, label="Token-score heatmap", scale=1, min_width=180)
                    ui["frame_slider"] = gr.Slider(0, 1, value=0, step=1, label="Frame", scale=2, min_width=220)
                ui["gallery"] = gr.Gallery(label="Kept patches per frame", elem_id="gallery", columns=3, height=420,
                                           object_fit="contain", format="jpeg", buttons=["fullscreen"])
                with gr.Accordion("Contact sheet: all sampled frames", open=False):
                    ui["sheet"] = gr.Image(show_label=False, format="jpeg", buttons=["download", "fullscreen"])
                ui["result_file"] = gr.File(label="Everything as JSON (what /analyze returns)", interactive=False)
        ui["overlay_state"] = gr.State(None, time_to_live=OUTPUT_MAX_AGE_S)
        keyed = functools.partial(by_name, ui=ui)
        run_inputs = [video, question, methods, retain, frames, model, compare, temperature, allocation, max_tokens]
        # Run brings the status line up top once the answers show below it; nothing scrolls the page after that.
        gr.on([run_button.click, question.submit], None, js=SCROLL_TO_ANSWERS)
        event = gr.on([run_button.click, question.submit], keyed(run), [*run_inputs, heatmap], list(ui.values()),
                      show_progress="minimal", show_progress_on=[ui["status"]], concurrency_id="gpu",
                      concurrency_limit=1, api_visibility="private")  # one model on one GPU: runs would skew timings
        hidden = {"status": "", "results": gr.Column(visible=False), "stop_button": gr.Button(visible=False)}
        event.failure(keyed(lambda: hidden), None, [ui[n] for n in hidden], api_visibility="private")
        # Outside the queue: Stop acts at once even while it is full, and browsing results needs no GPU.
        ui["stop_button"].click(keyed(stop_run), None, ui["stop_button"], queue=False, api_visibility="private")
        redraw = keyed(lambda view, method, heat, frame: overlays(view, method, heat, int(frame)))
        gr.on([ui["overlay_method"].input, heatmap.input], redraw, [ui["overlay_state"], ui["overlay_method"], heatmap,
              ui["frame_slider"]], [ui["gallery"], ui["sheet"]], api_visibility="private")  # fmt: skip
        ui["frame_slider"].release(lambda f: gr.Gallery(selected_index=int(f)), ui["frame_slider"], ui["gallery"],
                                   queue=False, api_visibility="private")  # fmt: skip
        ui["gallery"].select(clicked_frame, None, ui["frame_slider"], queue=False, api_visibility="private")
        gr.api(analyze, api_name="analyze", concurrency_id="gpu", concurrency_limit=1)

    # Beyond max_size waiting requests Gradio refuses new ones at once ("Queue is full! Please try again.").
    return demo.queue(max_size=int(os.environ.get("VCAST_MAX_QUEUE") or MAX_QUEUE_SIZE), default_concurrency_limit=4)


def by_name(handler, ui: dict[str, Any]):
    """handler, whose updates are keyed by component name (plain, testable), with them keyed by component."""
    if not inspect.isgeneratorfunction(handler):
        return functools.wraps(handler)(lambda *a, **k: {ui[n]: v for n, v in handler(*a, **k).items()})

    @functools.wraps(handler)
    def keyed(*args, **kwargs):
        yield from ({ui[n]: v for n, v in update.items()} for update in handler(*args, **kwargs))

    return keyed


def launch_options() -> dict[str, Any]:
    """launch()'s settings besides the address. show_error: what Gradio refuses before a handler runs (a path that was
    not uploaded) then says why; app_kwargs: the guard against file payloads naming folders."""
    return {"theme": gr.themes.Soft(primary_hue="blue", neutral_hue="slate"),
            "css_paths": [ROOT / "assets" / "app.css"], "mcp_server": True,
            "max_file_size": f"{MAX_UPLOAD_MB}mb", "footer_links": ["api", "gradio"], "show_error": True,
            "app_kwargs": {"dependencies": [fastapi.Depends(regular_files_only)]}}  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="V-CAST Gradio app")
    parser.add_argument("--model", default=os.environ.get("VCAST_MODEL"),
                        help="hub id or folder of a supported checkpoint, or tiny / tiny-<family> (offline random "
                             "models); default: VCAST_MODEL, else Qwen3-VL-8B on a 24 GiB GPU, 2B otherwise, "
                             "offline tiny")
    parser.add_argument("--host", help="address to bind (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--max-queue", type=int, help=f"requests that may wait (VCAST_MAX_QUEUE, {MAX_QUEUE_SIZE})")
    parser.add_argument("--compile", action="store_true", default=os.environ.get("VCAST_COMPILE") in ("1", "true"),
                        help="GPU: compile the vision tower and the decode step (each new video shape compiles once)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ["VCAST_MAX_QUEUE"] = str(args.max_queue or os.environ.get("VCAST_MAX_QUEUE") or MAX_QUEUE_SIZE)
    if not os.environ.get("GRADIO_TEMP_DIR"):  # uploads in a folder of our own, gone at exit with open tabs too
        os.environ["GRADIO_TEMP_DIR"] = folder = tempfile.mkdtemp(prefix="vcast-gradio-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MODELS.load = functools.partial(load, compile_model=args.compile)
    gpu_gib = ZERO_GPU_GIB if ON_ZERO_GPU else catalogue.gpu_memory_gib()
    hub_ok = pipeline.hub_reachable()
    qa, banner = load_startup_model(args.model, hub_ok=hub_ok, gpu_gib=gpu_gib, compile_model=args.compile)
    demo = build_demo(qa, banner=banner, models=[qa.model_id] if ON_ZERO_GPU else None)  # a call's process loads none
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # containers stop with SIGTERM: shut down as on Ctrl+C
    demo.launch(server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main(sys.argv[1:])
