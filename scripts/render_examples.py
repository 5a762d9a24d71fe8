"""Render V-CAST's figures and overlays for an example clip to PNG / mp4 / JSON, to look at them.

    python scripts/render_examples.py                      # first assets/*.mp4, else a synthetic clip
    python scripts/render_examples.py --video my.mp4 --docs docs/images

No model is loaded: each merged token's feature is a fixed random nonlinear projection of its
32x32 cell's pixels and position (a stand-in for the vision tower, so this runs anywhere in
seconds). The curvature therefore follows pixel content, not semantics. PNG export of the
plotly figures needs kaleido and a Chromium (Debian: apt-get install chromium).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import vcast  # noqa: E402
from viz.export import SelectionRecord, group_times, save_selection_json  # noqa: E402
from viz.overlays import contact_sheet, overlay_heatmap, overlay_kept, overlay_video  # noqa: E402
from viz.plots import AllocationRecord, allocation_figure, cost_figure, save_png  # noqa: E402

CELL_PX = 32  # Qwen3-VL: 16 px patches, 2x2 merge
FEATURE_DIM = 256
logger = logging.getLogger("render_examples")


def _texture(rng: np.random.Generator, size_hw: tuple[int, int], cells: int, amplitude: float) -> np.ndarray:
    """(H, W, 1) float32 smooth noise in [-amplitude, amplitude]: clouds, grass, a wall's grain."""
    height, width = size_hw
    small = rng.uniform(-amplitude, amplitude, (cells, cells * width // height)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]


def synthetic_clip(*, seconds: float = 8.0, fps: float = 2.0, size_hw: tuple[int, int] = (360, 640)) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB with three moments where a reader expects the budget to move:
    a ball flies over a meadow, a hard cut at 3 s to a room where a yellow box appears (4.5 s) and
    grows, and a camera flash at 6.5 s."""
    rng = np.random.default_rng(7)
    y = np.linspace(0, 1, size_hw[0], dtype=np.float32)[:, None, None]
    sky = np.array([60, 120, 200]) * (1 - y) + np.array([170, 210, 240]) * y + _texture(rng, size_hw, 6, 18)
    grass = np.array([50, 120, 45]) + _texture(rng, size_hw, 40, 22)
    meadow = np.where(y > 0.68, grass, sky).astype(np.float32)
    wall = np.array([150, 130, 115]) + _texture(rng, size_hw, 12, 10)
    floor = np.array([95, 70, 50]) + _texture(rng, size_hw, 60, 14)
    room = np.where(y > 0.72, floor, wall).astype(np.float32)
    cv2.rectangle(room, (40, 60), (200, 180), (70, 110, 160), -1)  # a window
    cv2.rectangle(room, (40, 60), (200, 180), (235, 235, 230), 6)
    frames = []
    for f in range(int(seconds * fps)):
        t = f / fps
        if t < 3.0:
            img = meadow.copy()
            x = int(60 + t * 170)
            cv2.circle(img, (x, int(200 - 120 * np.sin(t / 3.0 * np.pi))), 34, (215, 45, 40), -1, cv2.LINE_AA)
        else:
            img = room.copy()
            if t >= 4.5:
                half = int(22 + (t - 4.5) * 40)
                cv2.rectangle(img, (430 - half, 190 - half), (430 + half, 190 + half), (240, 205, 40), -1)
            if 6.5 <= t < 7.0:
                img = 0.3 * img + 0.7 * 255
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def load_clip(video: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Frames (F, H, W, 3) uint8, their times (F,) s, and a name: a real clip when one can be read."""
    candidates = [video] if video else sorted((ROOT / "assets").glob("*.mp4"))
    if candidates and hasattr(vcast, "read_video"):
        clip = vcast.read_video(candidates[0], fps=2.0, max_frames=32)
        return np.asarray(clip.frames), np.asarray(clip.timestamps, dtype=np.float64), candidates[0].stem
    if video:
        raise SystemExit(f"cannot read {video}: vcast.read_video is not available yet")
    logger.info("no example clip in assets/ (or no vcast.read_video): using a synthetic clip")
    frames = synthetic_clip()
    return frames, np.arange(len(frames)) / 2.0, "synthetic"


def processed_grid(frame_hw: tuple[int, int], *, max_pixels: int = 640 * 360) -> tuple[int, int]:
    """Merged-token grid (rows, cols) of a Qwen-style resize: area <= max_pixels, sides multiples of 32.

    Rounding makes the processed frame differ from the decoded one (360 -> 352 rows), which is
    exactly the case the overlays' proportional mapping must handle.
    """
    height, width = frame_hw
    scale = min(1.0, (max_pixels / (height * width)) ** 0.5)
    return max(1, round(height * scale / CELL_PX)), max(1, round(width * scale / CELL_PX))


def pixel_features(frames: np.ndarray, grid_hw: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (T, rows*cols, D) float32 stand-in token features, T = ceil(F / 2).

    The two frames of a group are averaged (as Qwen's temporal patch of 2 merges them). Each cell
    is described by its colour (chroma weighted up, so a red ball stands out from grey sky the way
    an object stands out in a vision encoder's features), its 4x4 detail and its position, through
    a fixed random tanh projection, so that a group's mean feature still depends on where things are.
    """
    rows, cols = grid_hw
    if len(frames) % 2:
        frames = np.concatenate([frames, frames[-1:]])  # pad like the processor
    resized = np.stack([cv2.resize(f, (cols * CELL_PX, rows * CELL_PX), interpolation=cv2.INTER_AREA) for f in frames])
    pairs = resized.reshape(-1, 2, rows * CELL_PX, cols * CELL_PX, 3).astype(np.float32).mean(axis=1) / 255.0
    num_groups, num_cells = len(pairs), rows * cols
    thumbs = pairs.reshape(num_groups, rows, 4, 8, cols, 4, 8, 3).mean(axis=(3, 6))  # (T, rows, 4, cols, 4, 3)
    thumbs = thumbs.transpose(0, 1, 3, 2, 4, 5).reshape(num_groups, num_cells, 16, 3)  # (T, N, 16, 3)
    colour = thumbs.mean(axis=2)  # (T, N, 3)
    gray = colour.mean(axis=-1, keepdims=True)  # (T, N, 1)
    detail = (thumbs - colour[:, :, None]).reshape(num_groups, num_cells, 48)
    r, c = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    pos = np.broadcast_to(np.stack([r, c], -1).reshape(1, num_cells, 2), (num_groups, num_cells, 2))
    x = np.concatenate([4.0 * (colour - gray), gray - 0.5, 0.5 * detail, 0.3 * pos], axis=-1)  # (T, N, 54)
    proj = np.random.default_rng(seed).normal(0, 1.0, (x.shape[-1], FEATURE_DIM)).astype(np.float32)
    return torch.from_numpy(np.tanh(x @ proj))  # (T, N, D)


def illustrative_costs(total_tokens: int, kept_tokens: int) -> tuple[dict, dict]:
    """Made-up but plausible costs, only to look at the cost figure's layout (titled as such)."""
    unpruned = {"visual_tokens_kept": total_tokens, "prefill_ms": 412.0, "ttft_ms": 468.0, "peak_memory_mb": 18650.0}
    pruned = {"visual_tokens_kept": kept_tokens, "prefill_ms": 131.0, "ttft_ms": 176.0, "peak_memory_mb": 17320.0}
    return pruned, unpruned


def save_rgb(path: Path, image: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=None, help="a clip to read (default: first assets/*.mp4)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "examples", help="where every render goes")
    parser.add_argument("--docs", type=Path, default=None, help="also copy the two README images here")
    parser.add_argument("--retain-ratio", type=float, default=0.25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # kaleido logs every browser step at INFO
    args.out.mkdir(parents=True, exist_ok=True)

    # Frames, their token grid and stand-in features.
    frames, frame_times, name = load_clip(args.video)
    grid_hw = processed_grid(frames.shape[1:3])
    features = pixel_features(frames, grid_hw)  # (T, N, D)
    config = vcast.VCastConfig(retain_ratio=args.retain_ratio)

    # V-CAST and the two comparison allocations of the same total.
    selection = vcast.select_tokens(features, config)
    others = {a: vcast.select_tokens(features, config, allocation=a) for a in ("uniform", "uniqueness")}
    record = SelectionRecord.from_selection(selection, times_s=group_times(frame_times), grid_hw=grid_hw, config=config)
    allocation = AllocationRecord.from_record(record, comparisons=others, thumbnails=frames[::2])

    # Figures.
    title = f"Where the token budget goes · {name} · keep {config.retain_ratio:.0%}"
    save_png(allocation_figure(allocation, title=title), args.out / "allocation.png", width=1100)
    pruned, unpruned = illustrative_costs(record.keep_mask.size, int(record.budgets.sum()))
    cost_title = "What pruning saves (illustrative numbers, not a measurement)"
    save_png(cost_figure({"V-CAST": pruned, "unpruned": unpruned}, title=cost_title), args.out / "cost.png", width=800)
    no_full = cost_figure({"V-CAST": pruned}, title="What pruning saves (no unpruned run)")
    save_png(no_full, args.out / "cost_no_full.png", width=800)

    # Overlays: one frame in both modes, the contact sheets, the video, the JSON.
    f = int(np.argmax(record.budgets)) * 2
    save_rgb(args.out / "frame_kept.png", overlay_kept(frames[f], record.keep_mask[f // 2]))
    save_rgb(
        args.out / "frame_heatmap.png",
        overlay_heatmap(frames[f], record.scores[f // 2], keep_mask=record.keep_mask[f // 2]),
    )
    sheet_kwargs = {"times_s": frame_times, "tile_width": 288, "columns": 4}
    save_rgb(args.out / "contact_sheet.png", contact_sheet(frames, record.keep_mask, **sheet_kwargs))
    save_rgb(
        args.out / "contact_sheet_heatmap.png",
        contact_sheet(frames, record.keep_mask, mode="heatmap", scores=record.scores, **sheet_kwargs),
    )
    video = overlay_video(frames, record.keep_mask, args.out / "overlay.mp4", times_s=frame_times)
    save_selection_json(record, args.out / "selection.json")
    logger.info("wrote %s (video codec %s)", args.out, video.codec)

    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        for image in ("allocation.png", "contact_sheet.png"):
            shutil.copyfile(args.out / image, args.docs / image)
        logger.info("copied allocation.png and contact_sheet.png to %s", args.docs)


if __name__ == "__main__":
    main()
