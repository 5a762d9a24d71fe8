"""Overlays: exact pixels for kept cells, darker dropped cells, a monotone heatmap, one tile per frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from viz import overlays
from viz.overlays import (
    NO_SCORE_RGB,
    OUTLINE_RGB,
    captioned_overlays,
    cell_boxes,
    cell_index_maps,
    contact_sheet,
    contact_sheet_layout,
    dim_and_desaturate,
    frame_groups,
    overlay_frames,
    overlay_heatmap,
    overlay_kept,
    overlay_video,
    resize_frames,
    score_colors,
)

# A decoded frame whose size is not a multiple of the 32 px cells: the processed frame was 352 x 640.
FRAME_HW = (360, 640)
GRID_HW = (11, 20)


def _frame(seed: int = 0, hw: tuple[int, int] = FRAME_HW) -> np.ndarray:
    # Colourful and never black, so "darker" and "less saturated" are measurable everywhere.
    return np.random.default_rng(seed).integers(40, 256, (*hw, 3), dtype=np.uint8)


def _mask(seed: int = 0, grid_hw: tuple[int, int] = GRID_HW, share: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).random(grid_hw) < share


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ [0.299, 0.587, 0.114]


def test_cell_boxes_tile_the_frame_exactly_and_agree_with_the_index_maps():
    boxes = cell_boxes(GRID_HW, FRAME_HW)
    row_of, col_of = cell_index_maps(GRID_HW, FRAME_HW)
    cover = np.zeros(FRAME_HW, int)
    for r in range(GRID_HW[0]):
        for c in range(GRID_HW[1]):
            x0, y0, x1, y1 = boxes[r, c]
            cover[y0:y1, x0:x1] += 1
            assert (row_of[y0:y1] == r).all() and (col_of[x0:x1] == c).all()
    assert (cover == 1).all()
    # Proportional: 11 rows over 360 px are 32-33 px tall, not 32 px with 8 px left over.
    heights = boxes[:, 0, 3] - boxes[:, 0, 1]
    assert set(heights) <= {32, 33}


def test_kept_cells_are_exactly_the_source_pixels():
    frame, mask = _frame(), _mask()
    out = overlay_kept(frame, mask)
    boxes = cell_boxes(GRID_HW, FRAME_HW)
    for r, c in np.argwhere(mask):
        x0, y0, x1, y1 = boxes[r, c]
        np.testing.assert_array_equal(out[y0:y1, x0:x1], frame[y0:y1, x0:x1])


def test_dropped_cells_are_darker_and_desaturated_outline_aside():
    frame, mask = _frame(), _mask()
    out = overlay_kept(frame, mask, outline_px=1)
    boxes = cell_boxes(GRID_HW, FRAME_HW)
    for r, c in np.argwhere(~mask):
        x0, y0, x1, y1 = boxes[r, c] + [1, 1, -1, -1]  # the outline may take the border pixel
        src, got = frame[y0:y1, x0:x1], out[y0:y1, x0:x1]
        assert (_luma(got) < _luma(src)).all()
        assert np.ptp(got.astype(int), axis=-1).mean() < np.ptp(src.astype(int), axis=-1).mean()


def test_outline_runs_just_outside_kept_cells_only():
    frame, mask = _frame(), _mask()
    out = overlay_kept(frame, mask, outline_px=2)
    row_of, col_of = cell_index_maps(GRID_HW, FRAME_HW)
    kept_px = mask[row_of[:, None], col_of[None, :]]
    outline = (out == OUTLINE_RGB).all(axis=-1) & (out != frame).any(axis=-1)
    assert outline.any()
    near_kept = cv2.dilate(kept_px.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert not (outline & kept_px).any() and (outline <= near_kept).all()


def test_nothing_kept_dims_everything_and_all_kept_changes_nothing():
    frame = _frame()
    np.testing.assert_array_equal(overlay_kept(frame, np.ones(GRID_HW, bool)), frame)
    np.testing.assert_array_equal(overlay_kept(frame, np.zeros(GRID_HW, bool)), dim_and_desaturate(frame))


def test_heatmap_brightness_rises_with_score_along_a_gradient():
    frame = np.full((40, 320, 3), 128, np.uint8)
    scores = np.linspace(0.0, 3.0, 16)[None, :]  # one row of 16 cells, score rising left to right
    out = overlay_heatmap(frame, scores)
    centres = _luma(out[20, 10::20])  # the centre pixel of each 20 px cell
    assert (np.diff(centres) > 0).all()


def test_heatmap_range_is_shared_when_given():
    frame = _frame(hw=(32, 64))
    low = overlay_heatmap(frame, np.full((1, 2), 1.0), vmin=0.0, vmax=2.0)
    high = overlay_heatmap(frame, np.full((1, 2), 2.0), vmin=0.0, vmax=2.0)
    assert _luma(high).mean() > _luma(low).mean()
    # Without a range, a frame's own min and max map to the colour map's ends.
    np.testing.assert_array_equal(
        score_colors(np.array([2.0, 7.0])), score_colors(np.array([0.0, 1.0]), vmin=0, vmax=1)
    )


def test_both_frames_of_a_group_are_drawn_with_its_mask():
    frames = np.stack([_frame(i, (64, 96)) for i in range(5)])
    masks = np.stack([_mask(i, (2, 3), share=0.5) for i in range(3)])  # 5 frames -> groups 0, 0, 1, 1, 2
    out = overlay_frames(frames, masks)
    for f, g in enumerate([0, 0, 1, 1, 2]):
        np.testing.assert_array_equal(out[f], overlay_kept(frames[f], masks[g]))


def test_frame_groups_rejects_frames_that_do_not_match_the_selection():
    np.testing.assert_array_equal(frame_groups(5, 3), [0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="pass the frames that were given to the model"):
        frame_groups(8, 3)


def test_contact_sheet_has_one_tile_per_frame_holding_its_overlay():
    frames = np.stack([_frame(i, (90, 160)) for i in range(5)])
    masks = np.stack([_mask(i, (3, 5)) for i in range(3)])
    sheet = contact_sheet(frames, masks, times_s=np.arange(5) * 0.5, tile_width=120, legend=False)
    layout = contact_sheet_layout(5, (90, 160), tile_width=120)
    assert sheet.shape[:2] == layout.size_hw and len(layout.boxes) == 5
    tile_h, tile_w = layout.tile_hw
    for f, (x0, y0, x1, y1) in enumerate(layout.boxes):
        small = cv2.resize(frames[f], (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(sheet[y0:y1, x0:x1], overlay_kept(small, masks[f // 2]))
    # Tiles do not overlap: painting each box once covers exactly 5 tiles' worth of pixels.
    painted = np.zeros(layout.size_hw, int)
    for x0, y0, x1, y1 in layout.boxes:
        painted[y0:y1, x0:x1] += 1
    assert painted.max() == 1 and painted.sum() == 5 * tile_h * tile_w


def test_contact_sheet_heatmap_mode_needs_scores():
    frames = np.stack([_frame(i, (32, 64)) for i in range(2)])
    with pytest.raises(ValueError, match="needs scores"):
        contact_sheet(frames, np.ones((1, 1, 2), bool), mode="heatmap")
    sheet = contact_sheet(frames, np.ones((1, 1, 2), bool), mode="heatmap", scores=np.ones((1, 1, 2)))
    assert sheet.dtype == np.uint8 and sheet.ndim == 3


def _read_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_overlay_video_has_every_sampled_frame(tmp_path):
    frames = np.stack([_frame(i, (63, 111)) for i in range(5)])  # odd sizes: padded for yuv420p
    masks = np.stack([_mask(i, (2, 3)) for i in range(3)])
    video = overlay_video(frames, masks, tmp_path / "overlay.mp4", fps=2.0, times_s=np.arange(5) * 0.5)
    assert video.path.stat().st_size > 0
    assert video.codec == ("h264" if overlays._h264_available() else "mp4v")
    decoded = _read_frames(video.path)
    assert len(decoded) == 5
    assert decoded[0].shape[1] == 112 and decoded[0].shape[0] % 2 == 0


def test_overlay_video_falls_back_to_mp4v_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(overlays, "_h264_available", lambda: False)
    frames = np.stack([_frame(i, (64, 96)) for i in range(2)])
    video = overlay_video(frames, np.ones((1, 2, 3), bool), tmp_path / "overlay.mp4")
    assert video.codec == "mp4v" and not video.browser_playable
    assert len(_read_frames(video.path)) == 2


def test_overlays_reject_frames_that_are_not_uint8_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay_kept(np.zeros((8, 8), np.uint8), np.ones((1, 1), bool))


def test_a_method_without_token_scores_draws_a_heatmap_in_one_neutral_grey():
    scores = np.full((1, 2, 2), np.nan, np.float32)  # pure 2x2 rules and merging methods have no per-token score
    colors = score_colors(scores[0])
    assert (colors == NO_SCORE_RGB).all()
    frames = np.full((2, 8, 8, 3), 200, np.uint8)
    images = overlay_frames(frames, np.ones((1, 2, 2), bool), mode="heatmap", scores=scores)
    assert all(img.dtype == np.uint8 and img.shape == (8, 8, 3) for img in images)


def test_gallery_captions_give_each_frame_its_time_and_its_groups_budget():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0, 0] = masks[1] = True  # group 0 keeps 1 of 4, group 1 all 4
    items = captioned_overlays(frames, masks, times_s=np.array([0.0, 0.5, 1.25]))
    assert [caption for _, caption in items] == ["0.0 s · 1/4 kept", "0.5 s · 1/4 kept", "1.2 s · 4/4 kept"]


def test_resize_frames_bounds_the_longer_side_and_never_enlarges():
    frames = np.zeros((2, 720, 1280, 3), np.uint8)
    assert resize_frames(frames, 640).shape == (2, 360, 640, 3)
    assert resize_frames(frames[:, :100, :50], 640).shape == (2, 100, 50, 3)


def test_enlarged_captions_keep_to_time_and_budget_and_grow_with_the_scale():
    frames = np.zeros((4, 90, 160, 3), np.uint8)
    masks = np.ones((2, 2, 2), bool)
    small = contact_sheet(frames, masks, times_s=np.arange(4) * 0.5, tile_width=320, columns=2, legend=False)
    large = contact_sheet(frames, masks, times_s=np.arange(4) * 0.5, tile_width=320, columns=2, legend=False,
                          caption_scale=2.0)  # fmt: skip
    assert large.shape[1] == small.shape[1] and large.shape[0] > small.shape[0]  # same tiles, taller captions
    assert overlays._text_scale(320, 2.0)[0] == 2 * overlays._text_scale(320)[0]
