"""VideoQA and the CLI end to end on the tiny offline model (CPU, no downloads)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vcast import VCastConfig
from vcast.pipeline import ModelError, QAResult, VideoQA

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qa() -> VideoQA:
    return VideoQA.tiny(seed=0)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    """8 s of a red ball crossing a grey room at 10 fps, with a cut to a green room at 5 s."""
    path = tmp_path_factory.mktemp("clips") / "ball.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 192))
    for i in range(80):
        frame = np.full((192, 320, 3), (90, 90, 90) if i < 50 else (40, 160, 40), np.uint8)
        cv2.circle(frame, (20 + 3 * i, 96), 18, (0, 0, 230), -1)
        writer.write(frame)
    writer.release()
    return path


def test_answer_gives_both_passes_with_fewer_visual_tokens_for_vcast(qa, clip_path):
    result = qa.answer(clip_path, "Where does the ball go?", max_new_tokens=6)
    assert isinstance(result, QAResult) and result.full is not None
    T, h, w = result.grid
    assert result.selection.budgets.shape == (T,) and len(result.group_times) == T
    assert result.clip.num_frames == 2 * T  # 2 frames per temporal group
    pruned, full = result.pruned.metrics, result.full.metrics
    assert full.visual_tokens_in == full.visual_tokens_kept == T * h * w
    assert pruned.visual_tokens_kept == int(result.selection.budgets.sum()) == round(0.25 * T * h * w)
    assert pruned.sequence_length == full.sequence_length - (full.visual_tokens_kept - pruned.visual_tokens_kept)
    assert pruned.new_tokens == full.new_tokens == 6
    assert len(result.pruned.token_ids) == 6
    for m in (pruned, full):
        assert m.vision_ms > 0 and m.prefill_ms > 0 and m.ttft_ms >= m.vision_ms + m.prefill_ms
        assert m.total_ms >= m.ttft_ms and m.peak_memory_mb > 0 and m.memory_kind == "process_rss"
    assert full.selection_ms == 0.0 and pruned.selection_ms > 0
    # The comparison allocations: same total, one budget per group; the chosen one is V-CAST's own.
    assert set(result.allocations) == {"curvature", "uniform", "uniqueness"}
    assert result.allocations["curvature"] == result.selection.budgets.tolist()
    for budgets in result.allocations.values():
        assert len(budgets) == T and sum(budgets) == pruned.visual_tokens_kept


def test_full_retention_answers_exactly_like_the_unpruned_pass(qa, clip_path):
    result = qa.answer(clip_path, "What colour is the room?", config=VCastConfig(retain_ratio=1.0), max_new_tokens=8)
    assert result.pruned.token_ids == result.full.token_ids
    assert result.pruned.text == result.full.text


def test_compare_false_skips_the_unpruned_pass(qa, clip_path):
    result = qa.answer(clip_path, "Anything?", compare=False, max_new_tokens=3)
    assert result.full is None and len(result.pruned.token_ids) == 3


def test_streaming_delivers_the_vcast_pass_then_the_full_pass_then_the_result(qa, clip_path):
    events = list(qa.stream(clip_path, "Describe it.", max_new_tokens=5))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and isinstance(events[-1][1], QAResult)
    assert kinds.index("vcast") < kinds.index("full")
    assert "vcast" not in kinds[kinds.index("full") :]
    result = events[-1][1]
    assert "".join(p for k, p in events if k == "vcast") == result.pruned.text
    assert "".join(p for k, p in events if k == "full") == result.full.text


def test_stream_reraises_errors_in_the_callers_thread(qa, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(ValueError, match="not a video"):
        list(qa.stream(bad, "What?"))


def test_sampling_parameters_pass_through_to_generate(qa, clip_path):
    torch.manual_seed(0)
    a = qa.answer(clip_path, "Q?", compare=False, max_new_tokens=6, do_sample=True, temperature=5.0)
    torch.manual_seed(1)
    b = qa.answer(clip_path, "Q?", compare=False, max_new_tokens=6, do_sample=True, temperature=5.0)
    assert a.pruned.token_ids != b.pruned.token_ids  # greedy decoding would give the same ids twice


def test_empty_question_is_refused(qa, clip_path):
    with pytest.raises(ValueError, match="question is empty"):
        qa.answer(clip_path, "   ")


def test_unreachable_hub_gives_one_message_naming_the_offline_way(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"cannot be reached.*--model tiny"):
        VideoQA.from_pretrained("Qwen/Qwen3-VL-8B-Instruct")


def test_a_checkpoint_of_another_family_names_the_supported_ones(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=32).save_pretrained(tmp_path)
    supported = r"'llama' model, and V-CAST supports these families: Qwen3-VL \(Qwen/Qwen3-VL-2B-Instruct.*LLaVA"
    with pytest.raises(ModelError, match=supported):
        VideoQA.from_pretrained(str(tmp_path))


def test_a_local_qwen3_vl_folder_loads_through_the_real_path_with_videoqa_options(tmp_path, clip_path):
    from vcast.models.tiny import tiny_model, tiny_processor

    saved = tiny_model()
    saved.save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    qa = VideoQA.from_pretrained(str(tmp_path), dtype=torch.float32, max_generation_s=7.0, vision_chunk_patches=1024)
    assert (qa.model_id, qa.max_generation_s, qa.vision_chunk_patches) == (str(tmp_path), 7.0, 1024)
    loaded = qa.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.state_dict().items())
    result = qa.answer(clip_path, "What happens?", max_new_tokens=3)
    assert len(result.pruned.token_ids) == len(result.full.token_ids) == 3
    assert result.pruned.metrics.visual_tokens_kept < result.full.metrics.visual_tokens_kept


# --- faults and limits ---------------------------------------------------------------------------


def _raise_once(error: BaseException, real):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise error
        return real(*args, **kwargs)

    return wrapper


def test_out_of_memory_while_encoding_gives_advice_and_the_next_request_works(qa, clip_path, monkeypatch):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(qa.adapter, "encode", _raise_once(oom, qa.adapter.encode))
    with pytest.raises(ModelError, match=r"ran out of memory on this video \(encoding the frames\).*fewer frames"):
        qa.answer(clip_path, "What happens?", max_new_tokens=2)
    assert len(qa.answer(clip_path, "What happens?", max_new_tokens=2).pruned.token_ids) == 2


def test_out_of_memory_while_generating_gives_advice_and_the_next_request_works(qa, clip_path, monkeypatch):
    oom = torch.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.setattr(qa.model, "generate", _raise_once(oom, qa.model.generate))
    with pytest.raises(ModelError, match=r"generating the V-CAST answer.*lower resolution"):
        qa.answer(clip_path, "What happens?", max_new_tokens=2)
    assert len(qa.answer(clip_path, "What happens?", max_new_tokens=2).full.token_ids) == 2


def test_a_failed_vision_compilation_names_the_option_to_turn_off(qa, clip_path, monkeypatch):
    failure = torch._dynamo.exc.TorchDynamoException("backend='inductor' raised: no C++ compiler found\nmore")
    monkeypatch.setattr(qa.adapter, "encode", _raise_once(failure, qa.adapter.encode))
    with pytest.raises(ModelError, match=r"Compiling the vision tower failed .*no C\+\+ compiler found\); run without"):
        qa.answer(clip_path, "What happens?", max_new_tokens=2)
    assert len(qa.answer(clip_path, "What happens?", max_new_tokens=2).pruned.token_ids) == 2


def test_a_failed_decode_compilation_names_the_options_to_turn_off(qa, clip_path, monkeypatch):
    failure = torch._dynamo.exc.TorchDynamoException("backend='inductor' raised: out of resources\nmore")
    monkeypatch.setattr(qa.model, "generate", _raise_once(failure, qa.model.generate))
    with pytest.raises(ModelError, match=r"Compiling the LLM prefill or decode step failed .*out of resources\); run "):
        qa.answer(clip_path, "What happens?", max_new_tokens=2)
    assert len(qa.answer(clip_path, "What happens?", max_new_tokens=2).pruned.token_ids) == 2


def test_tiny_takes_videoqa_options_through_from_pretrained():
    qa = VideoQA.from_pretrained("tiny", vision_chunk_patches=1024, max_generation_s=7.0)
    assert qa.is_tiny and (qa.vision_chunk_patches, qa.max_generation_s) == (1024, 7.0)


def test_a_cancelled_request_stops_between_tokens(qa, clip_path):
    import threading

    from vcast.pipeline import Cancelled

    cancel, pieces = threading.Event(), []

    def on_token(name, piece):
        pieces.append(name)
        if len(pieces) == 3:
            cancel.set()

    events = []
    with pytest.raises(Cancelled):
        qa.answer(clip_path, "Describe it.", max_new_tokens=200, on_token=on_token, cancel=cancel,
                  on_event=lambda kind, payload: events.append((kind, payload)))  # fmt: skip
    assert 3 <= len(pieces) <= 5 and "full" not in pieces  # stopped within a token; no unpruned pass
    # the cut pass is still reported, with what it had and why it stopped
    assert [kind for kind, _ in events] == ["selected", "pass"]
    cut = events[1][1]
    assert cut.stop_reason == "cancelled" and 3 <= cut.metrics.new_tokens <= 5 and cut.method == "vcast"


def test_closing_a_stream_early_stops_its_worker(qa, clip_path):
    import threading
    import time

    stream = qa.stream(clip_path, "Describe it.", max_new_tokens=2000)
    kind, selected = next(stream)
    assert kind == "selected" and selected.passes == {} and selected.pruned is None  # figures before any answer
    assert next(stream)[0] == "vcast"
    stream.close()
    deadline = time.monotonic() + 20
    while any(t.name == "vcast-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "vcast-stream" for t in threading.enumerate())


def test_each_pass_stops_at_its_time_limit(clip_path):
    slow = VideoQA.tiny(seed=0)
    slow.max_generation_s = 1e-6
    result = slow.answer(clip_path, "Describe it.", max_new_tokens=300)
    assert 1 <= result.pruned.metrics.new_tokens < 300 and 1 <= result.full.metrics.new_tokens < 300


@pytest.mark.parametrize("tokens", [0, -3, 100_000, 2.5, True])
def test_token_limits_are_enforced_with_a_clear_message(qa, clip_path, tokens):
    with pytest.raises(ValueError, match="max_new_tokens must be"):
        qa.answer(clip_path, "Q?", max_new_tokens=tokens)


def _compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_after_freezing_a_new_shape_runs_the_vision_tower_eagerly_with_the_same_answer(clip_path):
    """A server freezes the compiled vision tower after warm-up: no request may pay a compilation."""
    eager = VideoQA.tiny(seed=0)
    qa = VideoQA.tiny(seed=0)
    # static shapes, so that every new video length needs a graph of its own; dynamo's tracing without Inductor's build
    qa.adapter.vision_tower.compile(backend="eager", dynamic=False)
    assert qa.vision_compiled and not eager.vision_compiled
    torch._dynamo.reset()
    qa.answer(clip_path, "What happens?", num_frames=8, max_new_tokens=2)
    warm = _compiled_graphs()
    qa.answer(clip_path, "What happens?", num_frames=12, max_new_tokens=2)
    assert warm >= 1 and _compiled_graphs() > warm  # not frozen: a new length compiles
    qa.freeze_vision_compilation()
    before = _compiled_graphs()
    frozen = qa.answer(clip_path, "What happens?", num_frames=4, max_new_tokens=3)
    assert _compiled_graphs() == before
    plain = eager.answer(clip_path, "What happens?", num_frames=4, max_new_tokens=3)
    assert frozen.pruned.token_ids == plain.pruned.token_ids and frozen.full.token_ids == plain.full.token_ids
    assert torch.equal(frozen.selection.keep, plain.selection.keep)
    qa.answer(clip_path, "What happens?", num_frames=12, max_new_tokens=2)  # a compiled length still runs compiled
    assert _compiled_graphs() == before


def test_use_eager_vision_undoes_the_compilation(clip_path):
    qa = VideoQA.tiny(seed=0)
    qa.adapter.vision_tower.compile(backend="eager", dynamic=True)
    qa.freeze_vision_compilation()
    qa.use_eager_vision()
    assert not qa.vision_compiled and not qa._compiled_shapes_only
    torch._dynamo.reset()
    before = _compiled_graphs()
    qa.answer(clip_path, "What happens?", num_frames=4, max_new_tokens=2)
    assert _compiled_graphs() == before
