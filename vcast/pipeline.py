"""VideoQA: load a Qwen3-VL model once, answer questions about videos with and without V-CAST.

One call of `answer` decodes the video once, preprocesses it once, runs the vision tower once, and
then generates twice from the same features: on the V-CAST selection, and (compare=True) on all
visual tokens. Each pass reports what it cost.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .config import ALLOCATIONS, VCastConfig
from .core import Selection, allocate_budgets, allocation_weights, select_tokens, total_budget
from .models import qwen3_vl
from .models.decode import DecodeCaches
from .models.inputs import clip_to_processor_inputs
from .models.vision_attention import use_batched_vision_attention
from .models.vision_fast import use_fused_vision_attention, use_linear_patch_embed
from .video import VideoClip, read_video

DEFAULT_MODEL_ID = "Qwen/Qwen3-VL-8B-Instruct"
TINY_MODEL_ID = "tiny"
DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_LIMIT = 2048  # a hard cap per pass, whatever the caller asks for
DEFAULT_MAX_GENERATION_S = 300.0  # wall-clock limit of one pass's generation

# Called with (pass name, text piece) as a pass generates: "vcast" first, then "full".
TokenCallback = Callable[[str, str], None]


class ModelError(RuntimeError):
    """A model could not be loaded or run; the message is fit to show a user."""


class Cancelled(RuntimeError):
    """The request was cancelled (its `cancel` event was set) before it finished."""


_OUT_OF_MEMORY = (
    "The GPU ran out of memory on this video ({stage}). Sample fewer frames (e.g. 16), use a lower "
    "resolution or a shorter clip, or pick a smaller model; the next request starts with the memory freed."
)


class _CancelCriteria(StoppingCriteria):
    """Stops generate() between two tokens once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class PassMetrics:
    """The measured cost of one generation pass. Times in milliseconds.

    vision_ms (the shared vision tower plus the unpruned rotary positions) is counted in both
    passes' ttft_ms and total_ms, as if each pass had run alone; selection_ms is 0 for the full pass.
    peak_memory_mb is torch.cuda.max_memory_allocated on a GPU and the process RSS on a CPU
    (`memory_kind` says which).
    """

    visual_tokens_in: int
    visual_tokens_kept: int
    sequence_length: int
    vision_ms: float
    selection_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_tokens_per_s: float
    total_ms: float
    new_tokens: int
    peak_memory_mb: float
    memory_kind: str


@dataclass(frozen=True)
class PassResult:
    text: str
    token_ids: list[int]
    metrics: PassMetrics


@dataclass(frozen=True)
class QAResult:
    """Both answers and everything needed to show why.

    pruned: the V-CAST pass; full: the unpruned pass (None when compare=False).
    selection: the V-CAST Selection (tensors on the CPU); grid: (T, h, w) merged-token grid;
    processed_size: (height, width) in pixels of the frames the vision tower saw;
    group_times: (T,) seconds, the middle of each temporal group's two frames.
    allocations: per-group budgets of the same total under each strategy ("curvature", "uniform",
    "uniqueness"; the configured one equals `selection.budgets`), for comparison plots.
    """

    question: str
    pruned: PassResult
    full: PassResult | None
    selection: Selection
    grid: tuple[int, int, int]
    processed_size: tuple[int, int]
    group_times: list[float]
    clip: VideoClip
    config: VCastConfig
    model_id: str
    allocations: dict[str, list[int]] = dataclasses.field(default_factory=dict)


class _Timer:
    """Wall-clock milliseconds of a region; on CUDA, measured with events around the region."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.ms = self._start.elapsed_time(self._end)
        else:
            self.ms = (time.perf_counter() - self._t0) * 1000.0


class _PassStreamer(BaseStreamer):
    """Collects new token ids, stamps the first one, forwards decoded text pieces to a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None, device: torch.device):
        self.tokenizer, self.on_text, self.device = tokenizer, on_text, device
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None
        self._prompt_seen = False
        self._printed = ""
        self.peak_rss = 0

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()  # a host sync: the token exists now
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.token_ids.extend(ids)
        if self.device.type != "cuda":
            self.peak_rss = max(self.peak_rss, _rss_bytes())
        if self.on_text is not None:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if len(text) > len(self._printed) and not text.endswith("\ufffd"):  # wait out partial characters
                self.on_text(text[len(self._printed) :])
                self._printed = text

    def end(self) -> None:
        if self.on_text is not None:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if len(text) > len(self._printed):
                self.on_text(text[len(self._printed) :])
            self._printed = text


def _comparison_allocations(grouped: torch.Tensor, selection: Selection, config: VCastConfig) -> dict[str, list[int]]:
    """Budgets every allocation strategy would give, with the same total and bounds."""
    T, N, _ = grouped.shape
    total = total_budget(T, N, config)
    means = grouped.mean(dim=1, dtype=torch.float32)
    budgets = {}
    for name in ALLOCATIONS:
        weights = allocation_weights(selection.curvature, means, allocation=name, temperature=config.temperature)
        budgets[name] = allocate_budgets(
            weights, total, min_per_frame=min(config.min_tokens_per_frame, N), cap=N
        ).tolist()
    return budgets


def _on_host(selection: Selection) -> Selection:
    """The same Selection with every tensor on the CPU."""
    moved = {f.name: getattr(selection, f.name) for f in dataclasses.fields(Selection)}
    return Selection(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers on its HTTPS port (False at once where DNS fails)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _rss_bytes() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def _check_static_cache_options(generation_kwargs: dict) -> None:
    """compile_decode hands generate one static cache of batch 1: refuse what needs another cache."""
    for name in ("past_key_values", "cache_implementation"):
        if name in generation_kwargs:
            raise ValueError(f"{name} cannot be passed with compile_decode, which provides the KV cache itself")
    for name in ("num_beams", "num_return_sequences"):
        if generation_kwargs.get(name, 1) != 1:
            raise ValueError(f"{name} > 1 needs several KV cache rows; compile_decode's cache has one. "
                             "Use a VideoQA without compile_decode.")  # fmt: skip


class VideoQA:
    """A Qwen3-VL model and processor, loaded once, answering questions about videos.

    Build with `VideoQA.from_pretrained(model_id)` (hub or local folder) or `VideoQA.tiny()`.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        model_id: str,
        vision_chunk_patches: int = qwen3_vl.DEFAULT_VISION_CHUNK_PATCHES,
        processor_kwargs: dict | None = None,
        batched_vision_attention: bool = True,
        compile_vision: bool | str = False,
        compile_decode: bool = False,
        max_generation_s: float = DEFAULT_MAX_GENERATION_S,
    ):
        """Wrap a loaded Qwen3-VL `model` and its `processor`.

        batched_vision_attention: one attention call per vision layer for all frame pairs, the
        patch embedding as a matrix product, and the rotary embedding without layout copies
        (`vcast.models.vision_fast`): the same features, faster; only when the vision tower uses SDPA.
        vision_chunk_patches: patches the vision tower encodes at once (activation memory vs speed).
        compile_vision: torch.compile the vision tower of this instance (fuses its elementwise work;
        the first video of each new shape pays the compilation, tens of seconds at 8B scale); a
        string names the torch.compile mode (e.g. "reduce-overhead" for CUDA graphs).
        compile_decode: decode from static KV caches (`vcast.models.decode`), which transformers'
        generate compiles into CUDA graphs on a GPU: each decode step is then bound by the GPU,
        where V-CAST's shorter cache pays, rather than by the host's Python. Cache lengths are
        rounded up to 64 tokens; the first request pays a compilation, the second length a
        recompilation with symbolic lengths, and each new length a graph recording. Each pass's
        cache is freed with it; `self.decode_caches = DecodeCaches(model, kept=2)` keeps them across
        requests instead (the reported peak memory then includes them). Greedy or sampled decoding
        of one sequence only (no beams). On the CPU the caches are used without compilation.
        max_generation_s: wall-clock limit of each pass's generation (generate's max_time).
        """
        qwen3_vl.check_supported(model)
        if batched_vision_attention and model.config.vision_config._attn_implementation == "sdpa":
            use_batched_vision_attention(model)
            use_fused_vision_attention(model)
            use_linear_patch_embed(model)
        if compile_vision:
            mode = compile_vision if isinstance(compile_vision, str) else None
            model.model.visual.compile(dynamic=True, mode=mode)
        self.decode_caches = DecodeCaches(model) if compile_decode else None
        self.model, self.processor, self.model_id = model, processor, model_id
        self.vision_chunk_patches = vision_chunk_patches
        self.max_generation_s = max_generation_s
        self.processor_kwargs = processor_kwargs or {}
        self.is_tiny = model_id == TINY_MODEL_ID

    @property
    def device(self) -> torch.device:
        return self.model.device

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        *,
        device_map: str | dict | None = "auto",
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = None,
        max_pixels_per_video: int = 16384 * 32 * 32,
        compile_vision: bool | str = False,
        compile_decode: bool = False,
        vision_chunk_patches: int = qwen3_vl.DEFAULT_VISION_CHUNK_PATCHES,
        max_generation_s: float = DEFAULT_MAX_GENERATION_S,
        **loading_options,
    ) -> VideoQA:
        """Load a Qwen3-VL checkpoint from the Hugging Face hub or a local folder.

        `max_pixels_per_video` is the processor's total pixel budget over the clip (each 32 x 32
        pixels of a frame pair becomes one visual token); per-frame pixels are capped as in the
        reference qwen-vl-utils. `compile_vision`, `compile_decode`, `vision_chunk_patches` and
        `max_generation_s` are VideoQA's (see `__init__`); other keywords go to transformers' `from_pretrained`.
        Raises ModelError with what to do when the checkpoint is unreachable, unknown, or not Qwen3-VL.
        """
        if model_id == TINY_MODEL_ID:
            return cls.tiny(compile_vision=compile_vision, compile_decode=compile_decode,
                            vision_chunk_patches=vision_chunk_patches, max_generation_s=max_generation_s)  # fmt: skip
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        # Without the hub, only a local folder or a copy in the local cache can load; find out in
        # seconds rather than after the hub client's retries.
        offline = not Path(model_id).is_dir() and not hub_reachable()
        if offline:
            loading_options.setdefault("local_files_only", True)
        try:
            config = AutoConfig.from_pretrained(model_id, local_files_only=offline)
        except (OSError, ValueError) as err:
            why = "the Hugging Face hub cannot be reached from here" if offline else "no such model was found"
            raise ModelError(
                f"Could not load the model {model_id!r}: {why}. Check the name and your connection, pass a local "
                "folder, or run offline on the tiny random model (`--model tiny`, VideoQA.tiny())."
            ) from err
        if config.model_type not in qwen3_vl.SUPPORTED_MODEL_TYPES:
            raise ModelError(
                f"{model_id!r} is a {config.model_type!r} model; V-CAST supports Qwen3-VL checkpoints "
                "(Qwen/Qwen3-VL-2B/4B/8B/32B-Instruct and Qwen/Qwen3-VL-30B-A3B-Instruct)."
            )
        options = {"device_map": device_map, "dtype": dtype, **loading_options}
        if attn_implementation is not None:
            options["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForImageTextToText.from_pretrained(model_id, **options).eval()
            processor = AutoProcessor.from_pretrained(model_id, local_files_only=offline)
        except OSError as err:
            raise ModelError(f"Could not load the weights of {model_id!r}: {err}") from err
        budget = {"size": {"shortest_edge": 128 * 32 * 32, "longest_edge": max_pixels_per_video}}
        return cls(model, processor, model_id=model_id, processor_kwargs={**budget, "cap_pixels_per_frame": True},
                   compile_vision=compile_vision, compile_decode=compile_decode,
                   vision_chunk_patches=vision_chunk_patches, max_generation_s=max_generation_s)  # fmt: skip

    @classmethod
    def tiny(cls, seed: int = 0, *, moe: bool = False, attn_implementation: str = "sdpa", **options) -> VideoQA:
        """A tiny random Qwen3-VL of the real architecture, with an offline tokenizer and processor.
        `options` are VideoQA's (`compile_vision`, `vision_chunk_patches`, `max_generation_s`, ...)."""
        from .models.tiny import tiny_model, tiny_processor

        model = tiny_model(seed=seed, moe=moe, attn_implementation=attn_implementation)
        processor = tiny_processor()
        # Random weights pick bytes at random; keeping them to printable ASCII shows readable noise
        # instead of broken characters. Real checkpoints are left alone.
        vocab = processor.tokenizer.get_vocab()
        readable = {vocab[c] for c in map(chr, range(33, 127))} | {vocab["Ġ"]}  # "Ġ" is the space byte
        all_ids = range(model.config.text_config.vocab_size)
        model.generation_config.suppress_tokens = [i for i in all_ids if i not in readable]
        return cls(model, processor, model_id=TINY_MODEL_ID, **options)

    @classmethod
    def random_weights(
        cls,
        size: str = "8B",
        *,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        attn_implementation: str = "sdpa",
        max_pixels_per_frame: int = 768 * 32 * 32,
        **options,
    ) -> VideoQA:
        """A random-weight model with the real shapes of Qwen3-VL-{size} and an offline processor:
        the real costs of that model, offline (benchmarks, GPU checks); its answers are noise."""
        from .models.tiny import QWEN_SPECIAL_IDS, offline_processor, random_model

        model = random_model(size, device=device, dtype=dtype, attn_implementation=attn_implementation)
        processor = offline_processor(max_pixels_per_frame, QWEN_SPECIAL_IDS)
        return cls(model, processor, model_id=f"random-weights:Qwen3-VL-{size}", **options)

    # -- answering --------------------------------------------------------------------------------

    def answer(
        self,
        video: str | os.PathLike | VideoClip,
        question: str,
        *,
        config: VCastConfig | None = None,
        compare: bool = True,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        num_frames: int | None = None,
        on_token: TokenCallback | None = None,
        cancel: threading.Event | None = None,
        **generation_kwargs,
    ) -> QAResult:
        """Answer `question` about `video` (a path or a VideoClip) with V-CAST, and unpruned if `compare`.

        Greedy decoding unless sampling parameters are passed (do_sample=True, temperature, ...).
        `on_token(pass_name, text_piece)` receives each pass's text as it is generated. Setting `cancel`
        stops the work at the next token or stage and raises Cancelled. Running out of GPU memory frees
        what the request held and raises ModelError saying what to try.
        """
        config = config or VCastConfig()
        if not isinstance(question, str) or not question.strip():
            raise ValueError("Please ask a question about the video (the question is empty).")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
        if self.decode_caches is not None:
            _check_static_cache_options(generation_kwargs)
        cancel = cancel or threading.Event()
        clip = video if isinstance(video, VideoClip) else read_video(video, num_frames=num_frames)
        stage = ["preparing the frames"]  # the step under way, for the out-of-memory message
        try:
            return self._answer(clip, question, config, compare, max_new_tokens, on_token, cancel, generation_kwargs,
                                stage)  # fmt: skip
        except torch.OutOfMemoryError as err:
            self._free_memory()
            raise ModelError(_OUT_OF_MEMORY.format(stage=stage[0])) from err
        except torch._dynamo.exc.TorchDynamoException as err:  # compiling on a machine that cannot compile
            what = "the vision tower" if stage[0] == "encoding the frames" else "the decode step"
            raise ModelError(
                f"Compiling {what} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "run without compile_vision / compile_decode (--compile-vision / --compile-decode)."
            ) from err

    def _answer(
        self,
        clip: VideoClip,
        question: str,
        config: VCastConfig,
        compare: bool,
        max_new_tokens: int,
        on_token: TokenCallback | None,
        cancel: threading.Event,
        generation_kwargs: dict,
        stage: list[str],
    ) -> QAResult:
        inputs = self._processor_inputs(clip, question)
        qwen3_vl.check_single_video(inputs)

        # One vision pass and one set of unpruned positions serve both generations.
        stage[0] = "encoding the frames"
        self._check(cancel)
        self._reset_peak()
        with torch.inference_mode(), _Timer(self.device) as vision:
            prompt = qwen3_vl.prompt_on_host(inputs)
            features = qwen3_vl.encode_video(
                self.model,
                inputs["pixel_values_videos"],
                inputs["video_grid_thw"],
                chunk_patches=self.vision_chunk_patches,
            )
            positions = qwen3_vl.rope_positions(self.model, prompt, device=self.device)  # overlaps the GPU work
        vision_peak = self._peak_memory()

        stage[0] = "selecting tokens"
        with torch.inference_mode(), _Timer(self.device) as selecting:
            selection = select_tokens(features.grouped(), config)
            pruned_inputs = qwen3_vl.pass_inputs(self.model, inputs, features, positions, selection.keep)
        allocations = _comparison_allocations(features.grouped(), selection, config)
        visual_tokens = int(features.embeds.shape[0])
        grid = features.grid
        if not compare:
            del features  # the pruned pass holds its own slices; free the unpruned features first
        stage[0] = "generating the V-CAST answer"
        self._check(cancel)
        pruned = self._generate(
            "vcast", pruned_inputs, visual_tokens, vision.ms, selecting.ms, vision_peak, max_new_tokens, on_token,
            cancel, generation_kwargs,
        )  # fmt: skip
        full = None
        if compare:
            stage[0] = "generating the unpruned answer"
            self._check(cancel)
            full_inputs = qwen3_vl.pass_inputs(self.model, inputs, features, positions)
            full = self._generate(
                "full", full_inputs, visual_tokens, vision.ms, 0.0, vision_peak, max_new_tokens, on_token,
                cancel, generation_kwargs,
            )  # fmt: skip
        return QAResult(
            question=question,
            pruned=pruned,
            full=full,
            selection=_on_host(selection),
            grid=grid,
            processed_size=(grid[1] * 32, grid[2] * 32),
            group_times=((clip.timestamps[0::2] + clip.timestamps[1::2]) / 2).tolist(),
            clip=clip,
            config=config,
            model_id=self.model_id,
            allocations=allocations,
        )

    def warm_up(self, video: str | os.PathLike | VideoClip, *, num_frames: int = 4) -> float:
        """One short run of both passes, so the first real request's timings hold no one-time set-up
        (CUDA context, kernel selection, compilation) that would otherwise land on the V-CAST pass,
        which runs first. Returns the seconds it took."""
        started = time.perf_counter()
        self.answer(video, "What happens in this video?", num_frames=num_frames, max_new_tokens=2)
        return time.perf_counter() - started

    def stream(self, video, question: str, **answer_kwargs) -> Iterator[tuple[str, str | QAResult]]:
        """`answer` as a stream of events: ("vcast" | "full", text piece) as tokens arrive, then
        ("done", QAResult). An error in the worker is raised here, in the caller's thread; closing the
        stream early cancels the work."""
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                result = self.answer(video, question, on_token=lambda name, piece: events.put((name, piece)),
                                     cancel=cancel, **answer_kwargs)  # fmt: skip
                events.put(("done", result))
            except BaseException as err:  # handed to the consumer, which re-raises it
                events.put(("error", err))

        worker = threading.Thread(target=work, name="vcast-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = events.get()
                if kind == "error":
                    raise payload
                yield kind, payload
                if kind == "done":
                    return
        finally:
            # The consumer stopped early (closed the generator, e.g. a cancelled web request) or an
            # error ended the stream: the worker stops at its next token instead of running on.
            cancel.set()

    # -- internals ----------------------------------------------------------------------------------

    def _processor_inputs(self, clip: VideoClip, question: str):
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        video_kwargs = clip_to_processor_inputs(clip)
        inputs = self.processor(text=[text], return_tensors="pt", **video_kwargs, **self.processor_kwargs)
        # The patches stay on the host: the vision tower takes them chunk by chunk.
        pixels = inputs.pop("pixel_values_videos")
        inputs = inputs.to(self.device)
        inputs["pixel_values_videos"] = pixels.pin_memory() if self.device.type == "cuda" else pixels
        return inputs

    def _generate(
        self,
        name: str,
        pass_inputs: qwen3_vl.PassInputs,
        visual_tokens_in: int,
        vision_ms: float,
        selection_ms: float,
        vision_peak: float,
        max_new_tokens: int,
        on_token: TokenCallback | None,
        cancel: threading.Event,
        generation_kwargs: dict,
    ) -> PassResult:
        emit = None if on_token is None else (lambda piece: on_token(name, piece))
        streamer = _PassStreamer(self.processor.tokenizer, emit, self.device)
        stop = StoppingCriteriaList([_CancelCriteria(cancel)])
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "max_time": self.max_generation_s,
                  "stopping_criteria": stop, **generation_kwargs}  # fmt: skip
        if not kwargs.get("do_sample"):
            kwargs.setdefault("temperature", None)
            kwargs.setdefault("top_p", None)
            kwargs.setdefault("top_k", None)
        self._reset_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if self.decode_caches is not None:  # allocating the cache is part of this pass's prefill
            kwargs["past_key_values"] = self.decode_caches.get(int(pass_inputs.input_ids.shape[1]) + max_new_tokens)
        with torch.inference_mode(), qwen3_vl.generation_attention(self.device):
            self.model.generate(**pass_inputs.generate_kwargs(), streamer=streamer, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        self._check(cancel)
        first = streamer.first_token_at or end
        new_tokens = len(streamer.token_ids)
        prefill_ms = (first - start) * 1000.0
        decode_s = end - first
        peak = max(vision_peak, self._peak_memory(streamer.peak_rss))  # with kept caches, they count too
        metrics = PassMetrics(
            visual_tokens_in=visual_tokens_in,
            visual_tokens_kept=pass_inputs.num_visual_tokens,
            sequence_length=int(pass_inputs.input_ids.shape[1]),
            vision_ms=vision_ms,
            selection_ms=selection_ms,
            prefill_ms=prefill_ms,
            ttft_ms=vision_ms + selection_ms + prefill_ms,
            decode_tokens_per_s=(new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else 0.0,
            total_ms=vision_ms + selection_ms + (end - start) * 1000.0,
            new_tokens=new_tokens,
            peak_memory_mb=peak,
            memory_kind="cuda_max_allocated" if self.device.type == "cuda" else "process_rss",
        )
        text = self.processor.tokenizer.decode(streamer.token_ids, skip_special_tokens=True)
        return PassResult(text=text, token_ids=list(streamer.token_ids), metrics=metrics)

    @staticmethod
    def _check(cancel: threading.Event) -> None:
        if cancel.is_set():
            raise Cancelled("The request was cancelled.")

    def _free_memory(self) -> None:
        """Release what a failed request left behind, so the next one starts clean."""
        if self.decode_caches is not None:
            self.decode_caches.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peak_memory(self, rss_seen: int = 0) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(rss_seen, _rss_bytes()) / 2**20
