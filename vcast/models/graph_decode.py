"""Decoding with every step one CUDA-graph replay: VideoQA's default on a GPU.

With transformers' `generate` and its dynamic cache, a decode step of an 8B model is about two
thousand small kernels launched one by one from Python: the host sets the pace (20-40 tokens/s on
an H200, the same for every cache length), so V-CAST's 3-4x shorter KV cache never shows. Here
each pass gets a static KV cache (`DecodeCaches`: its prompt plus new tokens, rounded up to 64
slots), the LLM prefill runs as one forward (its decoder layers compiled after `compile_prefill`,
`vcast.models.compiled_prefill`), and the decode step (forward, next-token choice, position
and counter updates) is recorded once as a CUDA graph and replayed for every further token. The graph
holds the step's eager kernels, or with `compile_prefill(steps=True)` the compiled layers' fused ones
(`vcast.models.compiled_prefill`, compiled once for every length). It is recorded per pass, after the
first token (tens of milliseconds of host work), so any video length works at once and nothing
accumulates across requests. The host launches the next replay before it reads the previous token,
so the GPU never waits for Python (one step may run past the end of the answer and is discarded).

What it reproduces of `generate`: greedy decoding (the library's default; token for token the same
as `generate`, tested) and sampling with temperature / top-k / top-p (the same distributions,
drawn with a different random stream), the model's `suppress_tokens`, its end-of-text tokens, and
decode positions continuing at the last prompt position + 1 in every row (what `generate` does).
Anything else (beams, repetition penalties, other logits processors) goes to `generate`:
`unsupported(...)` says why. A model spread over several devices or offloaded also uses `generate`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StaticCache

from .base import PassInputs, cache_argument, generation_attention
from .compiled_prefill import CompiledPrefill, PrefillCache, StackedPrefillCache, deepstack_without_waits
from .decode import DecodeCaches
from .decode_kernels import FastDecodeStep, FilledSlots
from .prefill_graphs import PrefillGraphs

logger = logging.getLogger(__name__)

# generate keywords the graph decoder reproduces; VideoQA's own (max_new_tokens, max_time,
# stopping_criteria, streamer) are handled by the caller.
SAMPLING_KEYS = frozenset({"do_sample", "temperature", "top_k", "top_p", "min_new_tokens"})

# Generation-config fields that add a logits processor or change the search when set to anything
# but these neutral values; a checkpoint that sets one decodes through generate.
_NEUTRAL = {
    "num_beams": (None, 1), "num_return_sequences": (None, 1), "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "begin_suppress_tokens": (None,), "min_length": (None, 0),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "sequence_bias": (None,), "min_p": (None,),
    "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "renormalize_logits": (None, False),
    "watermarking_config": (None,), "penalty_alpha": (None,), "diversity_penalty": (None, 0.0),
}  # fmt: skip


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy, or sampled after temperature, top-k and top-p; never one of
    `suppress`, and no end-of-text token before `min_new_tokens` tokens."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    suppress: tuple[int, ...] = ()
    min_new_tokens: int = 0

    def picker(self, device: torch.device, eos_ids: set[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function (1, V) logits -> (1,) token id doing device work only (no host sync, no host
        tensors), so that it can be recorded; it counts the tokens it picked, for `min_new_tokens`."""
        suppressed = torch.tensor(self.suppress, device=device) if self.suppress else None
        eos = torch.tensor(sorted(eos_ids), device=device) if self.min_new_tokens > 0 and eos_ids else None
        picked = torch.zeros((), dtype=torch.long, device=device)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            logits = logits.float()
            if suppressed is not None:
                logits = logits.index_fill(-1, suppressed, float("-inf"))
            if eos is not None:  # generate's MinNewTokensLengthLogitsProcessor, as device work
                logits = torch.where(picked < self.min_new_tokens, logits.index_fill(-1, eos, float("-inf")), logits)
            token = self._choose(logits)
            picked.add_(1)
            return token

        return pick

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(-1)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:  # keep the smallest set of tokens whose probability reaches top_p
            ordered, order = torch.sort(logits, dim=-1)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1.0 - self.top_p
            drop[..., -1:] = False
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        probs = logits.softmax(dim=-1)
        # One draw from `probs`: the arg max of p / E with E ~ Exp(1) (no host sync, unlike multinomial).
        return (probs / torch.empty_like(probs).exponential_(1.0)).argmax(-1)


def sampling_for(model, generation_kwargs: dict) -> Sampling | str:
    """The Sampling that reproduces `generate(**generation_kwargs)` on this model, or why none does."""
    other = sorted(set(generation_kwargs) - SAMPLING_KEYS)
    if other:
        return f"generation options {', '.join(other)} need generate"
    config = model.generation_config
    for name, neutral in _NEUTRAL.items():
        value = generation_kwargs.get(name, getattr(config, name, None))
        if value not in neutral and not (isinstance(value, list | tuple) and not value):
            return f"the generation config sets {name}={value!r}"
    do_sample = bool(generation_kwargs.get("do_sample", False))
    suppress = tuple(int(t) for t in (getattr(config, "suppress_tokens", None) or ()))
    least = generation_kwargs.get("min_new_tokens", getattr(config, "min_new_tokens", None)) or 0
    if not do_sample:
        return Sampling(suppress=suppress, min_new_tokens=int(least))

    def setting(name: str, default):
        value = generation_kwargs.get(name)
        value = getattr(config, name, None) if value is None else value
        return default if value is None else value

    temperature, top_k = float(setting("temperature", 1.0)), int(setting("top_k", 50))
    top_p = float(setting("top_p", 1.0))
    if not temperature > 0 or top_k < 0 or not 0 < top_p <= 1:
        return f"sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p} need generate's checks"
    return Sampling(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, suppress=suppress,
                    min_new_tokens=int(least))


def _single_device(model) -> torch.device | None:
    """The one device all of the model's weights are on, or None (spread out, or offloaded to "meta")."""
    devices = {p.device for p in model.parameters()}
    return devices.pop() if len(devices) == 1 and next(iter(devices)).type != "meta" else None


class GraphDecoder:
    """Decodes one pass at a time for one model: a static cache per pass, CUDA-graph steps on a GPU.

    `graphs=False` runs the very same step eagerly (on the CPU always): what the tests compare with
    `generate`, and the fallback where recording fails. After a recording failure the decoder stays
    eager for the rest of its life and says why in `failure`.
    `fast_kernels` (default: on where the model sits on a GPU) gives the step flash attention over the
    cache's filled slots and fused RMSNorms (`vcast.models.decode_kernels`), and gives the model (every
    forward of it, from here on) deepstack's additions without host waits (`deepstack_without_waits`: the
    same sums). `compile_prefill` compiles the decoder layers for the prefill (and, with `steps=True`, for the
    decode steps too).
    """

    def __init__(self, model, *, graphs: bool = True, caches: DecodeCaches | None = None,
                 fast_kernels: bool | None = None):  # fmt: skip
        self.model = model
        self.caches = caches or DecodeCaches(model)
        self.device = _single_device(model)
        self.graphs = graphs and self.device is not None and self.device.type == "cuda"
        if fast_kernels is None:
            fast_kernels = self.device is not None and self.device.type == "cuda"
        self.fast = FastDecodeStep(model) if fast_kernels and self.device is not None else None
        if self.fast is not None:
            deepstack_without_waits(model)  # the prefill's host no longer waits in the first layers
        self.compiled_prefill: CompiledPrefill | None = None
        self.compiled_steps = False  # the decode steps also run the compiled layers (`compile_prefill(steps=True)`)
        self.prefill_graphs: PrefillGraphs | None = None  # short prefills padded and recorded (`record_prefills`)
        self.failure: str | None = None
        self._cache_keyword = cache_argument(model)
        parameters = inspect.signature(model.forward).parameters
        self._takes_cache_position = "cache_position" in parameters  # transformers before 5.2x
        self._takes_logits_to_keep = "logits_to_keep" in parameters
        self._stream: torch.cuda.Stream | None = None
        self._pool = None  # one memory pool for every recording: what an old graph held is reused
        # The last recording stays alive until the next one is made: a pool whose graphs are all gone is
        # released, and recording into a released pool is an error. Never replayed again, it holds no memory.
        self._last_graph: torch.cuda.CUDAGraph | None = None
        self._warmed = False  # the first pass runs one step eagerly on the recording stream first
        # Whether a decode step has run (with compiled steps: compiled them). A server should freeze the compiled
        # layers only after one: frozen before, every step records eager kernels.
        self.stepped = False
        # Host milliseconds the last pass spent recording its step (None: it recorded nothing). The recording
        # happens between the first and the second token, so it is inside the pass's decode time.
        self.recording_ms: float | None = None

    def compile_prefill(self, *, steps: bool = False, options: dict | None = None, stacked: bool = True,
                        recorded: bool = False) -> None:
        """Run the decoder layers of every later prefill through torch.compile (`CompiledPrefill`; raises
        ValueError for a model it does not serve). The first prefills compile. Kept caches are dropped: from now
        on `self.caches` makes `PrefillCache`s, the only caches the compiled layers are shared with.
        `steps`: the decode step runs the same compiled layers too (one more graph set, for one-token inputs,
        compiled by the first step; the recorded step then replays Inductor's fused kernels).
        `options`: Inductor's (default: `inductor_options`, the C++ wrapper on a GPU). `stacked` (the default, where
        the model sits on one device): the caches are `StackedPrefillCache`s, whose traced update makes each layer one
        compiled graph; False: `PrefillCache`s, each layer's graphs split around its cache update (H200: 35 against
        20 ms of host time per 8B prefill, and a compilation four times as long; docs/BENCHMARKS.md section 17).
        `recorded`: prefills are also padded and replayed as CUDA graphs (`record_prefills`; not the default: the
        recorded graphs and their caches stay in memory, docs/BENCHMARKS.md sections 18-19)."""
        self.compiled_prefill = CompiledPrefill(self.model, options=options)
        self.compiled_steps = steps
        stacked = stacked and self.device is not None  # a cache spread over devices cannot be one tensor
        self.caches.cache_class = StackedPrefillCache if stacked else PrefillCache
        self.caches.clear()
        if recorded:
            self.record_prefills()

    def record_prefills(self, *, record: bool | None = None, **options) -> None:
        """Prefills of prompts up to `max_tokens` tokens are padded to a multiple of `bucket` tokens and, after the
        first one of each padded length, replayed as CUDA graphs (`vcast.models.prefill_graphs`; `options` are
        `PrefillGraphs`'). `record=False` (default: where steps are recorded) pads without recording: the same
        arithmetic, eagerly. For prompts whose attention mask is all ones and whose text positions count 0..L-1
        (VideoQA's passes of the M-RoPE families)."""
        record = self.graphs if record is None else record
        stream = self._recording_stream() if record else None
        self.prefill_graphs = PrefillGraphs(self.model, self.caches, record=record, stream=stream, **options)

    def use_eager_prefill(self) -> None:
        """Undo `compile_prefill`."""
        self.compiled_prefill = None
        self.compiled_steps = False
        self.prefill_graphs = None
        self.caches.cache_class = StaticCache
        self.caches.clear()

    def cache_for(self, length: int, tokens: int):
        """The empty static cache for a pass of a `length`-token prompt and `tokens` slots in all (prompt and new
        tokens): a recorded prefill's where one serves this length (`record_prefills`), else `self.caches`'."""
        recorded = self.prefill_graphs.cache_for(length, tokens) if self.prefill_graphs is not None else None
        return recorded if recorded is not None else self.caches.get(tokens)

    def prefill(self, pass_inputs: PassInputs, cache, *, logits_to_keep: int | None = 1):
        """The LLM prefill of one pass into `cache` (from `self.caches`): the model's output, with generation's
        attention backends (`generation_attention`). Compiled where `compile_prefill` was called and `cache` is a
        `PrefillCache` (with another cache, traced, each layer's index would compile a graph of its own: eager).
        Padded and replayed as a CUDA graph where `cache` came from a recorded prefill (`cache_for`)."""
        kwargs = dict(pass_inputs.generate_kwargs(), use_cache=True, **{self._cache_keyword: cache})
        if self._takes_logits_to_keep and logits_to_keep is not None:
            kwargs["logits_to_keep"] = logits_to_keep
        if self._takes_cache_position:
            kwargs["cache_position"] = torch.arange(int(pass_inputs.input_ids.shape[1]),
                                                    device=pass_inputs.input_ids.device)  # fmt: skip
        compiled = self.compiled_prefill if isinstance(cache, PrefillCache) else None
        layers = compiled.active() if compiled is not None else contextlib.nullcontext()
        graphs = self.prefill_graphs
        replayed = graphs.replacing(cache) if graphs is not None and graphs.serves(cache) else contextlib.nullcontext()
        with generation_attention(pass_inputs.input_ids.device), layers, replayed:
            return self.model(**kwargs)

    @property
    def mode(self) -> str:
        """"cuda_graphs" where steps are replayed, else "eager_loop"."""
        return "cuda_graphs" if self.graphs and self.failure is None else "eager_loop"

    def unsupported(self, generation_kwargs: dict) -> str | None:
        """Why this decoder cannot serve a generate call with these keywords (None: it can)."""
        if self.device is None:
            return "the model is spread over several devices or offloaded"
        found = sampling_for(self.model, generation_kwargs)
        return found if isinstance(found, str) else None

    def run(
        self,
        pass_inputs: PassInputs,
        *,
        max_new_tokens: int,
        generation_kwargs: dict,
        on_token: Callable[[int], bool],
        stop_ids: set[int],
    ) -> None:
        """Prefill, then decode up to `max_new_tokens` tokens. Each token goes to `on_token(id)` as soon as
        it reaches the host, in order; a True return ends the pass, as does a token of `stop_ids` (the
        end-of-text tokens). Run under `torch.inference_mode()`."""
        sampling = sampling_for(self.model, generation_kwargs)
        if isinstance(sampling, str):
            raise ValueError(f"GraphDecoder cannot decode this pass: {sampling}")
        length = int(pass_inputs.input_ids.shape[1])
        cache = self.cache_for(length, length + max_new_tokens)
        slots = self.caches.length_for(length + max_new_tokens)
        if self.prefill_graphs is not None and self.prefill_graphs.serves(cache):
            slots = cache.layers[0].max_cache_len  # at least the padded prompt's length
        extra = {self._cache_keyword: cache, "use_cache": True}
        if self._takes_logits_to_keep:
            extra["logits_to_keep"] = 1
        pick = sampling.picker(pass_inputs.input_ids.device, stop_ids)
        logits = self.prefill(pass_inputs, cache).logits
        token = pick(logits[:, -1, :])
        del logits
        first = int(token)  # the first token on the host: the end of the prefill
        if on_token(first) or first in stop_ids or max_new_tokens == 1:
            return
        # The step's inputs live in fixed buffers that the recorded graph reads and updates in place.
        ids = token.view(1, 1).clone()
        positions = (pass_inputs.position_ids[..., -1:] + 1).contiguous()  # every row: last prompt position + 1
        step_inputs = {"input_ids": ids, "position_ids": positions,
                       "attention_mask": torch.ones(1, slots, dtype=torch.long, device=ids.device),
                       **extra}  # fmt: skip
        counters = [positions]
        if self._takes_cache_position:
            step_inputs["cache_position"] = torch.tensor([length], device=ids.device)
            counters.append(step_inputs["cache_position"])
        kernels = contextlib.nullcontext
        if self.fast is not None:
            filled = FilledSlots(length + 1, slots, ids.device)  # the prompt and the step's own token
            kernels = functools.partial(self.fast.active, filled)
            counters.append(filled.used)
        compiled = self.compiled_prefill if self.compiled_steps and isinstance(cache, PrefillCache) else None
        layers = compiled.active if compiled is not None else contextlib.nullcontext

        def step() -> None:
            with kernels(), layers():
                logits = self.model(**step_inputs).logits
            ids.copy_(pick(logits[:, -1, :]).view(1, 1))
            for counter in counters:
                counter.add_(1)

        steps = max_new_tokens - 1
        if ids.device.type == "cuda":
            self._decode_on_gpu(step, ids, steps, on_token, stop_ids)
            return
        for _ in range(steps):
            step()
            self.stepped = True
            token_id = int(ids)
            if on_token(token_id) or token_id in stop_ids:
                return

    def _decode_on_gpu(self, step: Callable[[], None], ids: torch.Tensor, steps: int,
                       on_token: Callable[[int], bool], stop_ids: set[int]) -> None:  # fmt: skip
        """Up to `steps` tokens after the first one, which the host has already read. The step is recorded only now:
        recorded while the GPU still ran the prefill, it delayed the first token by 30-66 ms and saved no time in total
        (H200, compiled steps, docs/BENCHMARKS.md section 14)."""
        host = torch.empty(steps, dtype=ids.dtype, pin_memory=True)
        done = [torch.cuda.Event() for _ in range(steps)]
        run_step, graph, launched = step, None, 0
        self.recording_ms = None

        def launch() -> None:
            nonlocal launched
            run_step()
            self.stepped = True
            host[launched : launched + 1].copy_(ids.view(1), non_blocking=True)
            done[launched].record()
            launched += 1

        try:
            if self.graphs and self.failure is None:
                if not self._warmed:
                    # State set up lazily (cuBLAS's workspace for a stream) must exist before a recording:
                    # the decoder's first step runs eagerly on the recording stream.
                    stream = self._recording_stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        launch()
                    torch.cuda.current_stream().wait_stream(stream)
                    self._warmed = True
                if launched < steps:
                    began = time.perf_counter()
                    graph = self._record(step)
                    self.recording_ms = (time.perf_counter() - began) * 1000
            if graph is not None:
                run_step = graph.replay
            if launched == 0:
                launch()
            for i in range(steps):
                if launched < steps:
                    launch()  # queued before token i is read: the GPU does not wait for the host
                done[i].synchronize()
                token_id = int(host[i])
                if on_token(token_id) or token_id in stop_ids:
                    break
        finally:
            torch.cuda.current_stream().synchronize()  # a step still running may not outlive its buffers

    def _recording_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
            self._pool = torch.cuda.graph_pool_handle()
        return self._stream

    def _record(self, step: Callable[[], None]) -> torch.cuda.CUDAGraph | None:
        """The step as a CUDA graph, recorded without running it; None (and eager decoding from now on)
        if recording fails. Uses the low-level capture calls: `torch.cuda.graph` would also empty the
        allocator's cache and run the garbage collector on every pass."""
        stream = self._recording_stream()
        graph = torch.cuda.CUDAGraph()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            # Compiled steps: nothing compiles while recording (compiling runs and times kernels, which a recording
            # forbids); a step whose shapes no compiled graph serves records its layers' eager kernels instead.
            # (set_stance switches the stance when called: made inside the try, undone by its with.)
            stance = contextlib.nullcontext()
            if self.compiled_steps:
                stance = torch.compiler.set_stance("eager_on_recompile")
            with torch.cuda.stream(stream), stance:
                graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
                try:
                    step()
                finally:
                    graph.capture_end()
        except torch.OutOfMemoryError:
            raise  # not a limit of recording: VideoQA frees what the request held and says what to try
        except Exception as err:  # any other failure to record: decode eagerly from now on, say why once
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            logger.warning("CUDA-graph decoding is off for this model (%s); decoding eagerly", self.failure)
            torch.cuda.synchronize()
            return None
        torch.cuda.current_stream().wait_stream(stream)
        self._last_graph = graph
        return graph
