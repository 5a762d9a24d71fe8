"""Which patches survived: OpenCV overlays of a V-CAST selection on the video's own frames.

Arrays in, arrays out: frames are (H, W, 3) uint8 RGB; a group's mask or scores live on its
merged-token grid (rows, cols). The grid covers the whole *processed* frame (the processor resizes
without cropping), so cell (r, c) maps proportionally onto the decoded frame: pixel row y lies in
grid row floor(y * rows / H) whatever the two resolutions are. For Qwen3-VL one temporal group
spans `frames_per_group = 2` sampled frames; both are drawn with that group's mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

OUTLINE_RGB = (255, 255, 255)
BUDGET_RGB = (59, 130, 246)  # the budget bars' blue in viz.plots
SHEET_BACKGROUND_RGB = (24, 24, 27)
LABEL_TEXT_RGB = (235, 235, 235)
NO_SCORE_RGB = (110, 110, 110)  # a token the method gave no score (pure 2x2 rules, merging)


def resize_frames(frames: np.ndarray, max_side_px: int) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F, h, w, 3) with the longer side at most max_side_px (never enlarged):
    overlays drawn on display-sized frames stay sharp on screen and light in memory."""
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side_px / max(height, width))
    if scale == 1.0:
        return frames
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


def cell_index_maps(grid_hw: tuple[int, int], frame_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel row and column of an (H, W) frame, the grid row and column it falls in.

    Returns ((H,) int64 in [0, rows), (W,) int64 in [0, cols)): proportional nearest-cell mapping.
    """
    (rows, cols), (height, width) = grid_hw, frame_hw
    if min(rows, cols, height, width) < 1:
        raise ValueError(f"grid {grid_hw} and frame {frame_hw} sizes must be positive")
    return (np.arange(height) * rows) // height, (np.arange(width) * cols) // width


def cell_boxes(grid_hw: tuple[int, int], frame_hw: tuple[int, int]) -> np.ndarray:
    """(rows, cols, 4) int64 pixel boxes (x0, y0, x1, y1), end exclusive, of every grid cell.

    Consistent with `cell_index_maps`: pixel y is in row r iff y0 <= y < y1 of that row's boxes.
    """
    (rows, cols), (height, width) = grid_hw, frame_hw
    y_edges = (np.arange(rows + 1) * height + rows - 1) // rows  # ceil(r * H / rows)
    x_edges = (np.arange(cols + 1) * width + cols - 1) // cols
    boxes = np.empty((rows, cols, 4), dtype=np.int64)
    boxes[..., 0] = x_edges[None, :-1]
    boxes[..., 1] = y_edges[:-1, None]
    boxes[..., 2] = x_edges[None, 1:]
    boxes[..., 3] = y_edges[1:, None]
    return boxes


def upsample_cells(values: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """(rows, cols) per-cell values -> (H, W) per-pixel values (each cell a flat block)."""
    row_of, col_of = cell_index_maps(values.shape[:2], frame_hw)
    return values[row_of[:, None], col_of[None, :]]


def _check_frame(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8 RGB, got shape {frame.shape} dtype {frame.dtype}")


def _outline_px(frame_hw: tuple[int, int]) -> int:
    """A thin line that stays visible: 1 px up to 360p, thicker on larger frames."""
    return max(1, round(min(frame_hw) / 360))


def _outline_ring(kept_px: np.ndarray, width_px: int) -> np.ndarray:
    """(H, W) bool kept pixels -> the band of `width_px` just outside them.

    The outline is drawn outside the kept cells, on dropped pixels, so every kept pixel stays
    exactly the source pixel; adjacent kept cells merge into one outlined region.
    """
    kernel = np.ones((2 * width_px + 1, 2 * width_px + 1), np.uint8)
    return cv2.dilate(kept_px.astype(np.uint8), kernel).astype(bool) & ~kept_px


def dim_and_desaturate(frame: np.ndarray, *, brightness: float = 0.4, saturation: float = 0.2) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same frame greyed toward its luminance and darkened.

    brightness in [0, 1] scales luminance; saturation in [0, 1] keeps that share of the colour.
    """
    rgb = frame.astype(np.float32)
    gray = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W) luma, BT.601
    mixed = saturation * rgb + (1.0 - saturation) * gray[..., None]
    return np.clip(mixed * brightness + 0.5, 0, 255).astype(np.uint8)


def overlay_kept(
    frame: np.ndarray,
    keep_mask: np.ndarray,
    *,
    brightness: float = 0.4,
    saturation: float = 0.2,
    outline_rgb: tuple[int, int, int] = OUTLINE_RGB,
    outline_px: int | None = None,
) -> np.ndarray:
    """Show which token cells a group kept.

    frame: (H, W, 3) uint8 RGB, the decoded frame (any resolution).
    keep_mask: (rows, cols) bool, the group's kept cells on its merged-token grid.
    Returns (H, W, 3) uint8 RGB: kept cells are the source pixels unchanged; dropped cells are
    dimmed to `brightness` and desaturated; a thin outline (`outline_px`, default by frame size)
    runs just outside each kept region.
    """
    _check_frame(frame)
    kept_px = upsample_cells(np.asarray(keep_mask, dtype=bool), frame.shape[:2])  # (H, W)
    out = np.where(kept_px[..., None], frame, dim_and_desaturate(frame, brightness=brightness, saturation=saturation))
    ring = _outline_ring(kept_px, outline_px or _outline_px(frame.shape[:2]))
    out[ring] = outline_rgb
    return out


def score_colors(
    scores: np.ndarray, *, vmin: float | None = None, vmax: float | None = None, colormap: int = cv2.COLORMAP_INFERNO
) -> np.ndarray:
    """(...,) float scores -> (..., 3) uint8 RGB colours; vmin/vmax default to the scores' range.

    Inferno's luminance rises monotonically, so brighter always means a higher score, also for
    readers who do not see colour. NaN (a method without per-token scores) is NO_SCORE_RGB.
    """
    s = np.asarray(scores, dtype=np.float32)
    lo, hi = _score_range(s)
    lo, hi = lo if vmin is None else vmin, hi if vmax is None else vmax
    level = np.clip(np.nan_to_num((s - lo) / max(hi - lo, 1e-12)), 0.0, 1.0)
    index = np.round(level * 255).astype(np.uint8).reshape(-1, 1)
    rgb = cv2.applyColorMap(index, colormap).reshape(*s.shape, 3)[..., ::-1].copy()
    rgb[np.isnan(s)] = NO_SCORE_RGB
    return rgb


def _score_range(scores: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite scores; (0, 1) where there are none."""
    finite = scores[np.isfinite(scores)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def overlay_heatmap(
    frame: np.ndarray,
    scores: np.ndarray,
    *,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    keep_mask: np.ndarray | None = None,
    colormap: int = cv2.COLORMAP_INFERNO,
    outline_rgb: tuple[int, int, int] = OUTLINE_RGB,
    outline_px: int | None = None,
) -> np.ndarray:
    """The dual-anchor token scores as a colour map over the (greyed) frame.

    frame: (H, W, 3) uint8 RGB; scores: (rows, cols) float, one per merged token.
    alpha in [0, 1]: weight of the colour map. vmin/vmax: the score range mapped to the colour
    map's ends (default: this frame's range; pass the video's range to compare frames).
    keep_mask: optional (rows, cols) bool; kept regions then get the same outline as overlay_kept.
    Returns (H, W, 3) uint8 RGB. The frame is greyed first so the colours read as scores only.
    """
    _check_frame(frame)
    colors = upsample_cells(score_colors(scores, vmin=vmin, vmax=vmax, colormap=colormap), frame.shape[:2])
    gray = dim_and_desaturate(frame, brightness=1.0, saturation=0.0)
    out = cv2.addWeighted(gray, 1.0 - alpha, colors, alpha, 0.0)
    if keep_mask is not None:
        kept_px = upsample_cells(np.asarray(keep_mask, dtype=bool), frame.shape[:2])
        out[_outline_ring(kept_px, outline_px or _outline_px(frame.shape[:2]))] = outline_rgb
    return out


def frame_groups(num_frames: int, num_groups: int, frames_per_group: int = 2) -> np.ndarray:
    """(F,) int64: the temporal group of each sampled frame (f // frames_per_group).

    Raises when the counts disagree (the last group may be incomplete: the processor pads it).
    """
    if -(-num_frames // frames_per_group) != num_groups:
        raise ValueError(
            f"{num_frames} frames in groups of {frames_per_group} make {-(-num_frames // frames_per_group)} groups,"
            f" but the selection has {num_groups}: pass the frames that were given to the model"
        )
    return np.arange(num_frames) // frames_per_group


def overlay_frames(
    frames: np.ndarray | Sequence[np.ndarray],
    keep_masks: np.ndarray,
    *,
    mode: str = "kept",
    scores: np.ndarray | None = None,
    frames_per_group: int = 2,
) -> list[np.ndarray]:
    """Overlay every sampled frame with its group's selection.

    frames: (F, H, W, 3) uint8 RGB; keep_masks: (T, rows, cols) bool, T = ceil(F / frames_per_group).
    mode: "kept" (overlay_kept) or "heatmap" (overlay_heatmap, needs scores (T, rows, cols); one
    score range for the whole video, so colours compare across frames).
    Returns F arrays (H, W, 3) uint8 RGB.
    """
    keep_masks = np.asarray(keep_masks, dtype=bool)
    groups = frame_groups(len(frames), keep_masks.shape[0], frames_per_group)
    if mode == "kept":
        return [overlay_kept(frame, keep_masks[g]) for frame, g in zip(frames, groups, strict=True)]
    if mode == "heatmap":
        if scores is None:
            raise ValueError("mode='heatmap' needs scores of shape (T, rows, cols)")
        scores = np.asarray(scores, dtype=np.float32)
        lo, hi = _score_range(scores)
        return [
            overlay_heatmap(frame, scores[g], vmin=lo, vmax=hi, keep_mask=keep_masks[g])
            for frame, g in zip(frames, groups, strict=True)
        ]
    raise ValueError(f"mode must be 'kept' or 'heatmap', got {mode!r}")


def frame_labels(
    num_frames: int,
    budgets: np.ndarray,
    tokens_per_group: int,
    *,
    times_s: np.ndarray | None = None,
    frames_per_group: int = 2,
) -> list[str]:
    """One caption per frame: '4.50 s | group 2 | 12/64 kept (19%)'."""
    budgets = np.asarray(budgets).reshape(-1)
    groups = frame_groups(num_frames, budgets.shape[0], frames_per_group)
    labels = []
    for f, g in enumerate(groups):
        # ASCII only: OpenCV 4's Hershey fonts have no glyph for '·' or '→'.
        when = f"{float(times_s[f]):.2f} s | " if times_s is not None else ""
        b = int(budgets[g])
        labels.append(f"{when}group {g} | {b}/{tokens_per_group} kept ({b / tokens_per_group:.0%})")
    return labels


def captioned_overlays(
    frames: np.ndarray | Sequence[np.ndarray],
    keep_masks: np.ndarray,
    *,
    times_s: np.ndarray | None = None,
    mode: str = "kept",
    scores: np.ndarray | None = None,
    frames_per_group: int = 2,
) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) per sampled frame, for a gallery: `overlay_frames`, captioned '4.5 s · 12/64 kept'
    (time, then the tokens its temporal group kept)."""
    keep_masks = np.asarray(keep_masks, dtype=bool)
    images = overlay_frames(frames, keep_masks, mode=mode, scores=scores, frames_per_group=frames_per_group)
    budgets = keep_masks.sum(axis=(1, 2))[frame_groups(len(images), keep_masks.shape[0], frames_per_group)]
    times = [f"{t:.1f} s · " for t in times_s] if times_s is not None else [""] * len(images)
    tokens = keep_masks.shape[1] * keep_masks.shape[2]
    return [(image, f"{t}{b}/{tokens} kept") for image, t, b in zip(images, times, budgets, strict=True)]


def _text_scale(width_px: int, boost: float = 1.0) -> tuple[float, int, int]:
    """Font scale, thickness and strip height that keep a label legible on a tile this wide (times `boost`)."""
    scale = float(np.clip(width_px / 640, 0.38, 0.9)) * boost
    return scale, 1 if scale < 0.7 else 2, round(34 * scale) + 6


def _put_text(image: np.ndarray, text: str, *, x: int, center_y: int, scale: float, thickness: int) -> int:
    """Draw text vertically centred on center_y, in place; returns the text's width in pixels."""
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    origin = (x, center_y + height // 2)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, LABEL_TEXT_RGB, thickness, cv2.LINE_AA)
    return width


def _caption_strips(
    keep_masks: np.ndarray,
    width_px: int,
    *,
    num_frames: int,
    times_s: np.ndarray | None,
    frames_per_group: int,
    caption_scale: float = 1.0,
) -> list[np.ndarray]:
    """One label strip per frame: time, group, budget, and the bar of the group's kept share. Captions
    enlarged by `caption_scale` > 1 say only the time and the budget, so that they fit."""
    num_groups, rows, cols = keep_masks.shape
    budgets = keep_masks.sum(axis=(1, 2))
    groups = frame_groups(num_frames, num_groups, frames_per_group)
    if caption_scale > 1:
        times = [f"{float(t):.1f} s  " for t in times_s] if times_s is not None else [""] * num_frames
        labels = [f"{t}{budgets[g]}/{rows * cols} kept" for t, g in zip(times, groups, strict=True)]
    else:
        labels = frame_labels(num_frames, budgets, rows * cols, times_s=times_s, frames_per_group=frames_per_group)
    return [
        label_strip(text, width_px, share=budgets[g] / (rows * cols), scale=caption_scale)
        for text, g in zip(labels, groups, strict=True)
    ]


def label_strip(text: str, width_px: int, *, share: float | None = None, scale: float = 1.0) -> np.ndarray:
    """(h, width_px, 3) uint8 RGB: the text on the sheet's dark background (`scale` times the usual size for
    this width), and, when `share` in [0, 1] is given, a blue bar along the bottom whose length is that share."""
    scale, thickness, height = _text_scale(width_px, scale)
    strip = np.empty((height, width_px, 3), np.uint8)
    strip[:] = SHEET_BACKGROUND_RGB
    _put_text(strip, text, x=4, center_y=height // 2, scale=scale, thickness=thickness)
    if share is not None:
        bar_h = max(2, height // 8)
        strip[-bar_h:, : int(np.rint(np.clip(share, 0.0, 1.0) * width_px))] = BUDGET_RGB
    return strip


@dataclass(frozen=True)
class SheetLayout:
    """Where each frame's tile sits on a contact sheet.

    boxes: (F, 4) int64 (x0, y0, x1, y1), end exclusive, of each tile's image (its label below).
    size_hw: (height, width) of the whole sheet in pixels.
    tile_hw: (height, width) of each tile's image.
    """

    boxes: np.ndarray
    size_hw: tuple[int, int]
    tile_hw: tuple[int, int]


def contact_sheet_layout(
    num_frames: int,
    frame_hw: tuple[int, int],
    *,
    columns: int | None = None,
    tile_width: int = 320,
    frames_per_group: int = 2,
    caption_scale: float = 1.0,
) -> SheetLayout:
    """Tiles in rows of `columns` (default: up to 8, a multiple of frames_per_group, so a row holds
    whole groups), a thin gap between the frames of one group and a wider one between groups."""
    if columns is None:
        columns = min(num_frames, max(frames_per_group, 8 - 8 % frames_per_group))
    height, width = frame_hw
    tile_h = max(1, round(height * tile_width / width))
    label_h = _text_scale(tile_width, caption_scale)[2]
    small_gap, group_gap, margin = 2, 12, 8
    col = np.arange(columns)
    gaps_before = np.concatenate([[0], np.where((col[:-1] + 1) % frames_per_group == 0, group_gap, small_gap)])
    x0_of_col = margin + col * tile_width + np.cumsum(gaps_before)
    rows = -(-num_frames // columns)
    y0_of_row = margin + np.arange(rows) * (tile_h + label_h + group_gap)
    f = np.arange(num_frames)
    x0, y0 = x0_of_col[f % columns], y0_of_row[f // columns]
    boxes = np.stack([x0, y0, x0 + tile_width, y0 + tile_h], axis=1).astype(np.int64)
    size_hw = (int(y0_of_row[-1] + tile_h + label_h + margin), int(x0_of_col[-1] + tile_width + margin))
    return SheetLayout(boxes=boxes, size_hw=size_hw, tile_hw=(tile_h, tile_width))


def contact_sheet(
    frames: np.ndarray | Sequence[np.ndarray],
    keep_masks: np.ndarray,
    *,
    times_s: np.ndarray | None = None,
    mode: str = "kept",
    scores: np.ndarray | None = None,
    frames_per_group: int = 2,
    columns: int | None = None,
    tile_width: int = 320,
    legend: bool = True,
    caption_scale: float = 1.0,
) -> np.ndarray:
    """All sampled frames with their overlays, one tile per frame, for a one-glance summary.

    frames: (F, H, W, 3) uint8 RGB, the frames given to the model; keep_masks: (T, rows, cols)
    bool; times_s: optional (F,) frame times in seconds; mode/scores as in overlay_frames.
    Each tile is captioned with time, group and budget, and a blue bar whose length is the share
    of the group's tokens kept; `legend` adds a key below the tiles. `caption_scale` > 1 enlarges the
    captions to time and budget only (a sheet shown small, on a phone). Returns (H', W', 3) uint8 RGB;
    tile f is overlay_frames(...) of frame f resized to the tile, at contact_sheet_layout(...).boxes[f].
    """
    keep_masks = np.asarray(keep_masks, dtype=bool)
    layout = contact_sheet_layout(len(frames), frames[0].shape[:2], columns=columns, tile_width=tile_width,
                                  frames_per_group=frames_per_group, caption_scale=caption_scale)  # fmt: skip
    # Shrink first, then draw: outlines stay one crisp pixel instead of fading in the downscale.
    tile_h, tile_w = layout.tile_hw
    tiles = [cv2.resize(np.asarray(f), (tile_w, tile_h), interpolation=cv2.INTER_AREA) for f in frames]
    tiles = overlay_frames(tiles, keep_masks, mode=mode, scores=scores, frames_per_group=frames_per_group)
    captions = _caption_strips(keep_masks, tile_w, num_frames=len(tiles), times_s=times_s,
                               frames_per_group=frames_per_group, caption_scale=caption_scale)  # fmt: skip
    sheet = np.empty((*layout.size_hw, 3), np.uint8)
    sheet[:] = SHEET_BACKGROUND_RGB
    for (x0, y0, x1, y1), tile, caption in zip(layout.boxes, tiles, captions, strict=True):
        sheet[y0:y1, x0:x1] = tile
        sheet[y1 : y1 + caption.shape[0], x0:x1] = caption
    if legend:
        sheet = np.concatenate([sheet, legend_strip(mode, sheet.shape[1], tile_width=tile_w)], axis=0)
    return sheet


def legend_strip(mode: str, width_px: int, *, tile_width: int = 320) -> np.ndarray:
    """(h, width_px, 3) uint8 RGB: the key to a contact sheet's tiles, sized like their captions.

    "kept": a kept swatch (outlined), a dropped swatch (dimmed), the budget bar. "heatmap": the
    colour ramp from low to high score, and the kept outline.
    """
    scale, thickness, height = _text_scale(tile_width)
    strip = np.empty((height + 8, width_px, 3), np.uint8)
    strip[:] = SHEET_BACKGROUND_RGB
    swatch = height - 8
    x, y0 = 8, 4

    def text(label: str) -> None:
        nonlocal x
        x += _put_text(strip, label, x=x, center_y=y0 + swatch // 2, scale=scale, thickness=thickness) + 18

    def box(color: np.ndarray | tuple[int, int, int], *, outlined: bool, width: int | None = None) -> None:
        nonlocal x
        width = width or swatch
        strip[y0 : y0 + swatch, x : x + width] = color
        if outlined:
            cv2.rectangle(strip, (x - 1, y0 - 1), (x + width, y0 + swatch), OUTLINE_RGB, 1)
        x += width + 6

    if mode == "heatmap":
        text("token score: low")
        box(score_colors(np.linspace(0, 1, 8 * swatch))[None, :, :], outlined=False, width=8 * swatch)
        text("high")
        box(SHEET_BACKGROUND_RGB, outlined=True)
        text("kept tokens")
    else:
        box((200, 200, 200), outlined=True)
        text("kept token (as decoded)")
        box(dim_and_desaturate(np.full((1, 1, 3), 200, np.uint8))[0, 0], outlined=False)
        text("dropped token")
    strip[y0 + swatch // 2 - 1 : y0 + swatch // 2 + 2, x : x + 3 * swatch] = BUDGET_RGB
    x += 3 * swatch + 6
    text("share of the group's tokens kept")
    return strip


@dataclass(frozen=True)
class VideoExport:
    """A written video: its path and codec ("h264" plays in browsers; "mp4v" may not)."""

    path: Path
    codec: str

    @property
    def browser_playable(self) -> bool:
        return self.codec == "h264"


def _even_size(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width by repeating the edge: yuv420p cannot encode odd sizes."""
    h, w = frame.shape[:2]
    return cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE) if (h % 2 or w % 2) else frame


def _h264_available() -> bool:
    try:
        import av
    except ImportError:
        return False
    return "libx264" in av.codecs_available


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, *, fps: float = 2.0) -> VideoExport:
    """Write (H, W, 3) uint8 RGB frames of one size to an mp4 at `fps` frames per second.

    H.264 (PyAV + libx264, yuv420p, faststart) when available, so browsers play it; otherwise
    OpenCV's mp4v, with a warning: the returned codec says which, so a UI can tell its user.
    """
    if len(frames) == 0 or fps <= 0:
        raise ValueError(f"need at least one frame and fps > 0, got {len(frames)} frames at {fps} fps")
    path = Path(path)
    frames = [_even_size(np.ascontiguousarray(f)) for f in frames]
    if _h264_available():
        _write_h264(frames, path, fps=fps)
        return VideoExport(path=path, codec="h264")
    logger.warning("PyAV with libx264 not found: writing %s as mp4v, which browsers may not play", path)
    _write_mp4v(frames, path, fps=fps)
    return VideoExport(path=path, codec="mp4v")


def _write_h264(frames: list[np.ndarray], path: Path, *, fps: float) -> None:
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames


def _write_mp4v(frames: list[np.ndarray], path: Path, *, fps: float) -> None:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open {path} for writing; install PyAV (pip install av) for H.264")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def overlay_video(
    frames: np.ndarray | Sequence[np.ndarray],
    keep_masks: np.ndarray,
    path: str | Path,
    *,
    fps: float = 2.0,
    times_s: np.ndarray | None = None,
    mode: str = "kept",
    scores: np.ndarray | None = None,
    frames_per_group: int = 2,
) -> VideoExport:
    """The overlays over time as an mp4: each sampled frame once, captioned like the contact sheet.

    frames: (F, H, W, 3) uint8 RGB; keep_masks: (T, rows, cols) bool; fps: playback rate, by
    default the usual sampling rate (2 frames per second), so the video runs in real time.
    """
    keep_masks = np.asarray(keep_masks, dtype=bool)
    overlays = overlay_frames(frames, keep_masks, mode=mode, scores=scores, frames_per_group=frames_per_group)
    captions = _caption_strips(
        keep_masks, overlays[0].shape[1], num_frames=len(overlays), times_s=times_s, frames_per_group=frames_per_group
    )
    return write_mp4([np.concatenate(pair, axis=0) for pair in zip(overlays, captions, strict=True)], path, fps=fps)
