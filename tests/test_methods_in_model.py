"""Every method inside the tiny Qwen3-VL (CPU, fp32): pruning methods equal an unpruned forward with the dropped
tokens masked out; the merging method equals a forward whose video tokens are the window means at the windows'
top-left positions, deepstack layers merged alike; and `VideoQA.answer` runs them all from one vision pass."""

from __future__ import annotations

import pytest
import torch
from _families import family_setup, random_clip

from vcast import METHODS, VideoQA, prune
from vcast.pipeline import FULL

PRUNING = [m for m in METHODS if m != "avgpool_2x2"]


def _masked_mask(length: int, dropped: torch.Tensor) -> torch.Tensor:
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & ~dropped[None, :]
    allowed |= torch.eye(length, dtype=torch.bool)
    return torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


@pytest.fixture(scope="module")
def setup():
    model, adapter, inputs = family_setup("qwen3_vl", seed=5, num_frames=8)
    with torch.inference_mode():
        features = adapter.encode(inputs)
        positions = adapter.positions(adapter.prompt_on_host(inputs))
    return model, adapter, inputs, features, positions


@pytest.mark.parametrize("method", PRUNING)
def test_pruning_methods_equal_an_unpruned_forward_with_their_dropped_tokens_masked(setup, method):
    model, adapter, inputs, features, positions = setup
    selection = prune(features.grouped(), method, retain_ratio=0.25, grid_hw=features.grid[1:])
    assert selection.assign is None and selection.method == method
    with torch.inference_mode():
        pruned = adapter.pass_inputs(inputs, features, positions, selection)
        ours = model(**pruned.generate_kwargs()).logits[0]
        keep = adapter.sequence_keep(inputs["input_ids"], features, selection)
        length = inputs["input_ids"].shape[1]
        position_ids = torch.cat([torch.arange(length).view(1, 1, -1), positions], dim=0)
        reference = model(input_ids=inputs["input_ids"], attention_mask=_masked_mask(length, ~keep),
                          position_ids=position_ids, pixel_values_videos=inputs["pixel_values_videos"],
                          video_grid_thw=inputs["video_grid_thw"]).logits[0]  # fmt: skip
    assert (ours - reference[keep]).abs().max() <= 1e-5


def _window_means(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(T*N, D) -> (T * windows, D): the mean of every 2x2 window (cut at odd borders), by plain loops."""
    T, h, w = grid
    x = tokens.view(T, h, w, -1)
    means = [x[t, r : r + 2, c : c + 2].reshape(-1, x.shape[-1]).mean(0)
             for t in range(T) for r in range(0, h, 2) for c in range(0, w, 2)]  # fmt: skip
    return torch.stack(means)


def test_avgpool_equals_a_forward_of_the_window_means_at_their_top_left_positions(setup):
    model, adapter, inputs, features, positions = setup
    T, h, w = features.grid
    selection = prune(features.grouped(), "avgpool_2x2", retain_ratio=0.25, grid_hw=(h, w))
    # the kept slots are the windows' top-left tokens, in order
    top_left = [t * h * w + r * w + c for t in range(T) for r in range(0, h, 2) for c in range(0, w, 2)]
    assert selection.keep.tolist() == top_left
    merged = _window_means(features.embeds, features.grid)
    deepstack = [_window_means(layer, features.grid) for layer in features.extras]
    with torch.inference_mode():
        ours_inputs = adapter.pass_inputs(inputs, features, positions, selection)
        ours = model(**ours_inputs.generate_kwargs()).logits[0]
        video = ours_inputs.mm_encoder_outputs["video"]
        torch.testing.assert_close(video.pooler_output[0], merged, atol=1e-6, rtol=0)
        for ours_layer, expected in zip(video.deepstack_features, deepstack, strict=True):
            torch.testing.assert_close(ours_layer[0], expected, atol=1e-6, rtol=0)  # merged with the same windows
        # The reference: the kept ids, the window means, at the top-left tokens' unpruned positions.
        slots = (inputs["input_ids"][0] == adapter.video_token_id).nonzero().squeeze(1)
        keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
        keep[slots] = False
        keep[slots[torch.tensor(top_left)]] = True
        ids = inputs["input_ids"][:, keep]
        position_ids = torch.cat([torch.arange(ids.shape[1]).view(1, 1, -1), positions[:, :, keep]], dim=0)
        encoder = type(video)(pooler_output=(merged,), deepstack_features=[(d,) for d in deepstack])
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids,
                          mm_encoder_outputs={"video": encoder}).logits[0]  # fmt: skip
        pruned = adapter.pass_inputs(inputs, features, positions, prune(features.grouped(), "first_2x2",
                                                                        retain_ratio=0.25, grid_hw=(h, w)))
        first = model(**pruned.generate_kwargs()).logits[0]
    assert (ours - reference).abs().max() <= 1e-5
    assert (ours[-1] - first[-1]).abs().max() > 1e-4  # merging is not keeping the top-left tokens


def test_answer_runs_every_method_from_one_vision_pass_and_streams_each(monkeypatch):
    qa = VideoQA.tiny(seed=1)
    calls = []
    encode = qa.adapter.encode
    monkeypatch.setattr(qa.adapter, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    methods = list(METHODS)
    events = list(qa.stream(random_clip(8), "What happens?", methods=methods, max_new_tokens=3,
                            method_options={"random_2x2": {"seed": 2}}))  # fmt: skip
    kind, result = events[-1]
    assert kind == "done" and calls == [1]  # one vision pass for all nine passes
    assert result.methods == methods and result.full is not None
    # every method selects before any answer: the figures can show first
    assert events[0][0] == "selected" and list(events[0][1].selections) == methods and events[0][1].passes == {}
    finished = [payload for kind, payload in events if kind == "pass"]
    assert [p.method for p in finished] == [*methods, FULL] and finished[-1] is result.full
    streamed = [name for name, _ in events[1:-1] if name not in ("selected", "pass")]
    assert [n for i, n in enumerate(streamed) if i == 0 or streamed[i - 1] != n] == [*methods, FULL]
    for name in methods:
        run, selection = result.passes[name], result.selections[name]
        assert "".join(p for n, p in events[1:-1] if n == name) == run.text
        assert selection.method == name and run.method == name
        assert run.metrics.visual_tokens_kept == selection.keep.numel() == int(selection.budgets.sum())
        assert torch.equal(selection.curvature, result.selections["vcast"].curvature)  # always the video's
    assert (result.selections["avgpool_2x2"].assign is not None) and result.selections["evs"].assign is None
    assert result.pruned is result.passes["vcast"] and result.selection is result.selections["vcast"]
