"""V-CAST app: upload a video, ask a question, see each pruning method's answer beside the unpruned model's.
    python app.py [--model ID_OR_FOLDER] [--host 0.0.0.0] [--port 7860] [--max-queue 32] [--[no-]compile]
`build_demo(qa)` lays the page out around a loaded VideoQA (importing this module loads no model); scripts and MCP
clients call its `analyze` tool. docs/RELIABILITY.md lists every bad input, fault and limit tried."""

# ZeroGPU attaches a GPU per call through `spaces`, which must be imported before torch touches CUDA.
try:
    import spaces
except ImportError:
    spaces = None

import argparse
import atexit
import contextlib
import functools
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import fastapi
import gradio as gr
import torch

import vcast.request
import viz
from vcast import VCastConfig, catalogue, pipeline, report
from vcast.catalogue import ZERO_GPU_MAX_S, gpu_seconds  # noqa: F401 (app.ZERO_GPU_MAX_S: ZeroGPU's longest reservation)
from vcast.pipeline import FULL, QAResult, VideoQA
from vcast.report import TINY_COSTS, AnalyzeResult, label  # noqa: F401 (app.TINY_COSTS: what the costs say on tiny)
from vcast.request import NOT_REGULAR, AnswerRequest, Limits, StopRequests, VideoFile, check_request, upload_path
from vcast.video import VideoClip, VideoError  # noqa: F401 (app.VideoError: what decode raises)

logger = logging.getLogger("vcast.app")
ROOT = Path(__file__).resolve().parent
EXAMPLES = [[str(ROOT / "assets" / e["file"]), e["question"]]
            for e in json.loads((ROOT / "assets/examples.json").read_text())]  # fmt: skip
# Limits a shared Space can afford; the page tells each next to the input it limits.
MAX_UPLOAD_MB, MAX_DURATION_S, MAX_FRAMES, MAX_NEW_TOKENS, MAX_QUESTION_CHARS = 200, 300.0, 64, 512, 2000
MAX_METHODS = 4  # V-CAST and up to 3 more, each a pass of its own
MAX_GENERATION_S, MAX_DECODE_S = 50.0, 30.0  # per answer; per video, in CPU-core seconds of decoding
SWITCH = {"1": True, "true": True, "0": False, "false": False}  # an on/off environment variable; else the default
MAX_QUEUE_SIZE = 32  # requests waiting beyond this are refused at once ("busy, try again")
OUTPUT_MAX_AGE_S, CACHE_SWEEP_S = 3600, 600  # uploads, outputs and page state older than this go, checked this often
LIMITS = Limits(max_frames=MAX_FRAMES, max_new_tokens=MAX_NEW_TOKENS, max_question_chars=MAX_QUESTION_CHARS,
                max_methods=MAX_METHODS, max_upload_mb=MAX_UPLOAD_MB, max_duration_s=MAX_DURATION_S,
                max_decode_s=MAX_DECODE_S)  # fmt: skip
ON_ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
COMPARE_OFF = "(comparison off: tick “Compare with the unpruned model” to run it too)"
step = "Step {} of {} · **{}…**".format  # step(n, steps, stage): the status line while a run goes on
STOPPED = "**Stopped.** The answers end where the generation stopped; press Run to start again."
TEXTS = json.loads((ROOT / "assets/page_texts.json").read_text(encoding="utf-8"))  # the page's header and headings


# load(model_id, *, compile_model=None): a model with the app's time limit per answer, warmed up on an example.
load = functools.partial(catalogue.load, max_generation_s=MAX_GENERATION_S, zero_gpu=ON_ZERO_GPU,
                         warm_up_video=EXAMPLES[0][0])  # fmt: skip
load_startup_model = functools.partial(catalogue.load_startup_model, load=load)  # (qa, banner or None)
MODELS = catalogue.ModelSlot(load)  # module-level: ZeroGPU's worker process reaches the model through it
OFFERED: list[str] = []  # the models a request may name (build_demo sets them)
OUTPUTS = Path(tempfile.mkdtemp(prefix="vcast-app-"))  # the JSON files the page offers; old ones go with Gradio's sweep
atexit.register(shutil.rmtree, OUTPUTS, ignore_errors=True)
STOP_REQUESTS = StopRequests()  # the Stop button's, one per page: its run checks between tokens


# The GPU part, picklable in and out: ZeroGPU runs it in a process of its own, for gpu_seconds(same arguments).
@(spaces.GPU(duration=gpu_seconds) if spaces is not None else lambda fn: fn)
def answer_events(model_id: str, clip: VideoClip, question: str, config: VCastConfig, methods: list[str],
                  compare: bool, max_new_tokens: int) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """VideoQA.stream's events (report.StreamedAnswer reads them); closing it stops generating at the next token."""
    yield from MODELS.get(model_id).stream(clip, question, config=config, methods=methods, compare=compare,
                                           max_new_tokens=max_new_tokens)  # fmt: skip


def decode(path: str, num_frames: int) -> VideoClip:
    return vcast.request.read_request_video(path, num_frames, LIMITS)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Every failure becomes a gr.Error saying what to do (vcast.request.user_message); the server keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as err:
        if refused := vcast.request.is_refusal(err):  # the user's input, not a fault of the server: no traceback
            logger.info("refused: %s", err)
        elif not isinstance(err, torch.OutOfMemoryError):
            logger.exception("run failed")
        raise gr.Error(vcast.request.user_message(err), print_exception=not refused) from err


async def regular_files_only(request: fastapi.Request) -> None:
    """Refuse file payloads naming a folder before Gradio's cache sweep registers them (and then dies on it)."""
    json_post = request.method == "POST" and "json" in request.headers.get("content-type", "")
    if json_post and vcast.request.names_a_folder(await request.body()):
        # gr.validate's reply: gradio_client raises it as a ValidationError carrying the message
        raise fastapi.HTTPException(422, [{"__type__": "validate", "is_valid": False, "message": NOT_REGULAR,
                                           "parameter_name": "video"}])  # fmt: skip


def drawn(result: QAResult, heatmap: bool) -> dict[str, Any]:
    """Every method's selection drawn (budgets, overlays) and the ended passes' costs, keyed by component name."""
    view = viz.SelectionView.of(result, {m: label(m) for m in result.selections})
    update = {"budget_plot": view.allocation(), "overlay_state": view, "drawn": gr.Column(visible=True),
              "overlay_method": gr.Radio([(label(m), m) for m in view.records], value=view.main,
                                         visible=len(view.records) > 1),
              "frame_slider": gr.Slider(0, len(view.frames) - 1, value=0, step=1),
              **overlays(view, view.main, heatmap)}  # fmt: skip
    if result.passes:
        metrics = viz.COST_METRICS if report.has_timings(result) else viz.COUNT_METRICS
        plot = viz.cost_figure(report.pass_metrics(result), baseline=label(FULL), metrics=metrics)
        update |= {"costs": gr.Row(visible=True), "metrics_table": report.cost_markdown(result), "cost_plot": plot}
    return update


def overlays(view: viz.SelectionView | None, method: str, heatmap: bool, frame: int | None = None) -> dict[str, Any]:
    """The gallery (opened on `frame`, if one: None scrolls nothing) and the contact sheet of `method`."""
    return {} if view is None else {"gallery": gr.Gallery(view.gallery(method, heatmap), selected_index=frame),
                                    "sheet": view.sheet(method, heatmap)}  # fmt: skip


def api_record(result: QAResult) -> AnalyzeResult:  # the record with every method's selection as JSON
    selections = {m: viz.selection_to_dict(r) for m, r in viz.selection_records(result).items()}
    return report.analyze_record(result, selections)


def run(video: str | None, question: str, methods: list[str], retain_percent: float, num_frames: float, model: str,
        compare: bool, temperature: float, allocation: str, max_new_tokens: float, heatmap: bool,
        request: gr.Request | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Run: each stage, every answer as it streams, then figures and costs; Stop shows what was computed by then."""
    started = time.perf_counter()
    with user_errors(), STOP_REQUESTS.watching(getattr(request, "session_hash", None)) as stop:
        r = check_request(video, question, methods, retain_percent, num_frames, model, compare, temperature,
                          allocation, max_new_tokens, offered=OFFERED, limits=LIMITS)  # fmt: skip
        names = [*r.methods, *[FULL] * r.compare]
        steps, seen = len(names) + 3, report.StreamedAnswer(dict.fromkeys(names, ""))
        yield {"results": gr.Column(visible=True), "full_answer": "" if r.compare else COMPARE_OFF,
               "status": step(1, steps, "Decoding and sampling the frames"), "stop_button": gr.Button(visible=True),
               "costs": gr.Row(visible=False), "drawn": gr.Column(visible=False), "result_file": gr.File(visible=False),
               **{f"answer_{i}": gr.Textbox("", label=f"{label(m)} answer", visible=True)
                  for i, m in enumerate(r.methods)},
               **{f"answer_{i}": gr.Textbox(visible=False) for i in range(len(r.methods), MAX_METHODS)}}  # fmt: skip
        clip = decode(r.video, r.num_frames)
        loading = "E" if MODELS.model_id == r.model else f"Loading {r.model}, then e"
        yield {"status": step(2, steps, f"{loading}ncoding {clip.num_frames} frames and selecting tokens")}
        events = answer_events(r.model, clip, r.question, r.config, r.methods, r.compare, r.max_new_tokens)
        with contextlib.closing(events):  # leaving closes the stream, which stops the generation
            for kind in seen.follow(events, stop):
                stage = step(3 + names.index(kind), steps, f"Generating the {label(kind)} answer")
                yield {**answers(r, seen.texts), "status": stage}
        hide_stop = {"stop_button": gr.Button(visible=False)}
        if (result := seen.result) is None:  # stopped: what was computed by then, and nothing empty
            texts = {name: text or "(stopped before this answer began)" for name, text in seen.texts.items()}
            computed = drawn(seen.so_far(), heatmap) if seen.partial else {}
            yield {**answers(r, texts), **hide_stop, **computed, "status": STOPPED}
            return
        yield {"status": step(steps, steps, "Drawing the figures and overlays")}
        # Gradio serves its own copy of the file: ours may go once no page could still ask for it.
        path = report.write_json(api_record(result), OUTPUTS, max_age_s=OUTPUT_MAX_AGE_S)
        yield {**answers(r, seen.texts), **hide_stop, **drawn(result, heatmap),
               "result_file": gr.File(str(path), visible=True),
               "status": report.done_markdown(result, time.perf_counter() - started)}  # fmt: skip


def answers(r: AnswerRequest, texts: dict[str, str]) -> dict[str, str]:
    return {**{f"answer_{i}": texts[m] for i, m in enumerate(r.methods)}, "full_answer": texts.get(FULL, COMPARE_OFF)}


def clicked_frame(event: gr.SelectData) -> int:  # a click on a gallery thumbnail moves the frame slider there
    return event.index


def stop_run(request: gr.Request) -> dict[str, Any]:
    STOP_REQUESTS.stop(request.session_hash)
    return {"stop_button": gr.Button(visible=False)}


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
        r = check_request(upload_path(video), question, methods, retain_percent, num_frames, model or OFFERED[0],
                          compare, temperature, allocation, max_new_tokens, offered=OFFERED, limits=LIMITS)  # fmt: skip
        events = answer_events(r.model, decode(r.video, r.num_frames), r.question, r.config, r.methods, r.compare,
                               r.max_new_tokens)  # fmt: skip
        with contextlib.closing(events):
            return api_record(next(payload for kind, payload in events if kind == "done"))


def build_demo(qa: VideoQA, *, banner: str | None = None, models: list[str] | None = None,
               cache_sweep_s: tuple[int, int] = (CACHE_SWEEP_S, OUTPUT_MAX_AGE_S)) -> gr.Blocks:  # fmt: skip
    """The page and the `analyze` tool around `qa`; models: the menu (default: the catalogue's choice for this
    machine); cache_sweep_s: how often, beyond what age, uploads and outputs are deleted."""
    MODELS.held, gpu_gib = qa, catalogue.gpu_memory_gib(zero_gpu=ON_ZERO_GPU)
    OFFERED[:] = catalogue.offered_models(qa.model_id, models, hub_ok=not qa.is_tiny, gpu_gib=gpu_gib)
    ui: dict[str, Any] = {}
    with gr.Blocks(title="V-CAST: which video tokens does a video LLM need?", delete_cache=cache_sweep_s) as demo:
        gr.Markdown(TEXTS["header"])
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
                                           label=f"Methods (up to {MAX_METHODS})", elem_id="methods")  # fmt: skip
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
                box = {"lines": 4, "max_lines": 12, "buttons": ["copy"], "min_width": 240}
                for i in range(MAX_METHODS):
                    ui[f"answer_{i}"] = gr.Textbox(label="Answer", elem_id=f"answer-{i}", visible=i == 0, **box)
                ui["full_answer"] = gr.Textbox(label="Unpruned answer", elem_id="full-answer", **box)
            with gr.Row(visible=False, equal_height=False) as ui["costs"]:
                with gr.Column(min_width=320):
                    ui["metrics_table"] = gr.Markdown(elem_id="metrics")
                with gr.Column(min_width=320):
                    ui["cost_plot"] = gr.Plot(show_label=False, elem_id="cost-plot")
            with gr.Column(visible=False) as ui["drawn"]:
                gr.Markdown(TEXTS["budgets"])
                ui["budget_plot"] = gr.Plot(show_label=False, elem_id="budget-plot")
                gr.Markdown(TEXTS["patches"])
                with gr.Row():
                    ui["overlay_method"] = gr.Radio(label="Method", elem_id="overlay-method", scale=2, min_width=220)
                    heatmap = gr.Checkbox(value=False, label="Token-score heatmap", scale=1, min_width=180)
                    ui["frame_slider"] = gr.Slider(0, 1, value=0, step=1, label="Frame", scale=2, min_width=220)
                ui["gallery"] = gr.Gallery(label="Kept patches per frame", elem_id="gallery", columns=3, height=420,
                                           object_fit="contain", format="jpeg", buttons=["fullscreen"])  # fmt: skip
                with gr.Accordion("Contact sheet: all sampled frames", open=False):
                    ui["sheet"] = gr.Image(show_label=False, format="jpeg", buttons=["download", "fullscreen"])
                ui["result_file"] = gr.File(label="Everything as JSON (what /analyze returns)", interactive=False)
        ui["overlay_state"] = gr.State(None, time_to_live=OUTPUT_MAX_AGE_S)
        keyed = functools.partial(by_name, ui=ui)
        run_inputs = [video, question, methods, retain, frames, model, compare, temperature, allocation, max_tokens]
        # Run brings the status line up top once the answers show below it; nothing scrolls the page after that.
        gr.on([run_button.click, question.submit], None, js=(ROOT / "assets" / "scroll_to_answers.js").read_text())
        # One run at a time: one model on one GPU, and runs side by side would skew each other's timings.
        event = gr.on([run_button.click, question.submit], keyed(run), [*run_inputs, heatmap], list(ui.values()),
                      show_progress="minimal", show_progress_on=[ui["status"]], concurrency_id="gpu",
                      concurrency_limit=1, api_visibility="private")  # fmt: skip
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
    """launch()'s settings besides the address (show_error: Gradio's own refusals say why)."""
    return {"theme": gr.themes.Soft(primary_hue="blue", neutral_hue="slate"),
            "css_paths": [ROOT / "assets" / "app.css"], "mcp_server": True,
            "max_file_size": f"{MAX_UPLOAD_MB}mb", "footer_links": ["api", "gradio"], "show_error": True,
            "app_kwargs": {"dependencies": [fastapi.Depends(regular_files_only)]}}  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="V-CAST Gradio app")
    parser.add_argument("--model", default=os.environ.get("VCAST_MODEL"), help="hub id or folder of a checkpoint, "
                        "or tiny[-<family>]; default: VCAST_MODEL, else by GPU memory (README)")  # fmt: skip
    parser.add_argument("--host", help="address to bind (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--max-queue", type=int, help=f"requests that may wait (VCAST_MAX_QUEUE, {MAX_QUEUE_SIZE})")
    compiles = SWITCH.get(os.environ.get("VCAST_COMPILE", "").lower())
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=compiles,
                        help="compile the vision tower and (dense Qwen3-VL) the LLM's layers for prefill and decode "
                        "steps at start-up (warmed up on 32 frames: 1-3 min on an H200, less once Inductor's "
                        "on-disk cache holds the graphs); "
                        "default: VCAST_COMPILE, else Qwen3-VL on a dedicated CUDA GPU")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ["VCAST_MAX_QUEUE"] = str(args.max_queue or os.environ.get("VCAST_MAX_QUEUE") or MAX_QUEUE_SIZE)
    if not os.environ.get("GRADIO_TEMP_DIR"):  # uploads in a folder of our own, gone at exit with open tabs too
        os.environ["GRADIO_TEMP_DIR"] = folder = tempfile.mkdtemp(prefix="vcast-gradio-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MODELS.load = functools.partial(load, compile_model=args.compile)
    qa, banner = load_startup_model(args.model, hub_ok=pipeline.hub_reachable(), compile_model=args.compile,
                                    gpu_gib=catalogue.gpu_memory_gib(zero_gpu=ON_ZERO_GPU))  # fmt: skip
    demo = build_demo(qa, banner=banner, models=[qa.model_id] if ON_ZERO_GPU else None)  # a call's process loads none
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # containers stop with SIGTERM: shut down as on Ctrl+C
    demo.launch(server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main(sys.argv[1:])
