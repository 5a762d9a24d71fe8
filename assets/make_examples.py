"""Generate the example clips of the app and the tests, deterministically, and assets/examples.json.

    python assets/make_examples.py [--out assets]

Three 640x360 24 fps H.264 clips, each built to show one behaviour of V-CAST, each with a question
that only the right frames answer:
- scene_cuts.mp4 (21 s): three scenes joined by hard cuts at 7 s and 14 s. Inside a scene things
  move steadily (a straight trajectory), so the curvature of the frame trajectory peaks at the cuts.
- brief_event.mp4 (20 s): a quiet room where only a clock hand and a cloud move, and for 1.5 s
  (11.0-12.5 s) a sign with a word pops up. The event frames turn the trajectory and win budget.
- smooth_motion.mp4 (15 s): a balloon drifting across a brightening sky: one smooth motion, flat
  curvature, so V-CAST spreads the budget almost evenly.

Drawing is OpenCV on numpy arrays; encoding is PyAV's libx264 with one thread and bit-exact flags,
so the same library versions write the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 640, 360, 24
SUBPIXEL = 4  # OpenCV draws at 1/16-pixel positions, so slow motion is smooth rather than stepped
FONT = cv2.FONT_HERSHEY_DUPLEX
Color = tuple[int, int, int]  # RGB


@dataclass(frozen=True)
class Example:
    """One clip: how to draw its frame at time t (seconds) -> (360, 640, 3) uint8 RGB, and its question."""

    file: str
    seconds: float
    draw: Callable[[float], np.ndarray]
    question: str
    teaches: str


def _fixed(value: float) -> int:
    return round(value * (1 << SUBPIXEL))


def _circle(img: np.ndarray, center: tuple[float, float], radius: float, color: Color) -> None:
    cv2.circle(img, (_fixed(center[0]), _fixed(center[1])), _fixed(radius), color, -1, cv2.LINE_AA, SUBPIXEL)


def _polygon(img: np.ndarray, points: list[tuple[float, float]], color: Color) -> None:
    pts = np.array([[_fixed(x), _fixed(y)] for x, y in points], np.int32)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA, SUBPIXEL)


def _line(img: np.ndarray, a: tuple[float, float], b: tuple[float, float], color: Color, thickness: int) -> None:
    cv2.line(img, (_fixed(a[0]), _fixed(a[1])), (_fixed(b[0]), _fixed(b[1])), color, thickness, cv2.LINE_AA, SUBPIXEL)


def _text(img: np.ndarray, text: str, origin: tuple[int, int], scale: float, color: Color, thickness: int = 2) -> None:
    cv2.putText(img, text, origin, FONT, scale, color, thickness, cv2.LINE_AA)


def _vertical_gradient(top: Color, bottom: Color) -> np.ndarray:
    """(360, 640, 3) uint8, blending `top` into `bottom`."""
    w = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    rows = (1 - w) * np.array(top, np.float64) + w * np.array(bottom, np.float64)  # (H, 1, 3)
    return np.repeat(rows, WIDTH, axis=1).round().astype(np.uint8)


# -- scene_cuts.mp4: three scenes, two hard cuts ----------------------------------------------------
# Inside each scene the light changes steadily (the background blends from one palette to another)
# while one object moves at constant speed: a smooth, straight trajectory that the cuts break.


def _blend(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    return ((1 - s) * a.astype(np.float32) + s * b.astype(np.float32)).round().astype(np.uint8)


_SEA = (_vertical_gradient((150, 200, 240), (20, 80, 160)), _vertical_gradient((250, 190, 120), (60, 70, 120)))
_CITY = (_vertical_gradient((90, 60, 130), (160, 90, 110)), _vertical_gradient((5, 8, 30), (25, 30, 70)))
_FIELD = (_vertical_gradient((200, 225, 245), (150, 210, 120)), _vertical_gradient((250, 150, 90), (70, 110, 40)))


def _sea(s: float) -> np.ndarray:
    """A white sailboat crossing the sea from left to right as the afternoon turns golden."""
    img = _blend(*_SEA, s)
    x = 110 + 300 * s
    _polygon(img, [(x - 70, 235), (x + 70, 235), (x + 45, 265), (x - 45, 265)], (120, 60, 30))  # hull
    _polygon(img, [(x - 5, 110), (x - 5, 228), (x - 80, 228)], (250, 250, 250))  # sails
    _polygon(img, [(x + 5, 130), (x + 5, 228), (x + 60, 228)], (235, 235, 235))
    _text(img, "1", (600, 40), 1.0, (255, 255, 255))
    return img


def _city(s: float) -> np.ndarray:
    """A green car driving right to left past lit buildings as dusk turns to night."""
    img = _blend(*_CITY, s)
    for i, (left, height) in enumerate([(20, 190), (150, 250), (300, 170), (430, 230), (540, 200)]):
        cv2.rectangle(img, (left, 300 - height), (left + 100, 300), (55, 55, 70), -1)
        for row in range(300 - height + 15, 290, 30):
            for col in range(left + 12, left + 90, 26):
                if (row // 30 + col // 26 + i) % 3:
                    cv2.rectangle(img, (col, row), (col + 12, row + 14), (250, 220, 90), -1)
    img[300:] = (40, 40, 45)
    x = 560 - 380 * s
    _polygon(img, [(x - 60, 300), (x + 60, 300), (x + 60, 330), (x - 60, 330)], (40, 190, 70))  # body
    _polygon(img, [(x - 35, 280), (x + 30, 280), (x + 45, 300), (x - 45, 300)], (40, 190, 70))  # cabin
    _circle(img, (x - 35, 333), 12, (20, 20, 20))
    _circle(img, (x + 35, 333), 12, (20, 20, 20))
    _text(img, "2", (600, 40), 1.0, (255, 255, 255))
    return img


def _field(s: float) -> np.ndarray:
    """A red kite rising over a field under a yellow sun as the sun sets."""
    img = _blend(*_FIELD, s)
    _circle(img, (540, 70), 40, (250, 215, 40))
    x, y = 200 + 140 * s, 250 - 110 * s
    _polygon(img, [(x, y - 45), (x + 30, y), (x, y + 45), (x - 30, y)], (220, 30, 30))
    cv2.line(img, (round(x), round(y + 45)), (120, 330), (90, 90, 90), 1, cv2.LINE_AA)
    _text(img, "3", (600, 40), 1.0, (255, 255, 255))
    return img


SCENE_SECONDS = 7.0


def scene_cuts(t: float) -> np.ndarray:
    """Three scenes of SCENE_SECONDS each; s in [0, 1) is the progress within the current scene."""
    scene, s = divmod(t / SCENE_SECONDS, 1.0)
    return (_sea, _city, _field)[min(int(scene), 2)](s)


# -- brief_event.mp4: a quiet room and one short event --------------------------------------------

_ROOM = _vertical_gradient((225, 215, 195), (200, 185, 160))


def brief_event(t: float) -> np.ndarray:
    """A room with a clock and a window; at 11.0-12.5 s a yellow sign reads BINGO."""
    img = _ROOM.copy()
    img[290:] = (150, 110, 80)  # floor
    cv2.rectangle(img, (380, 60), (600, 220), (180, 215, 245), -1)  # window: sky
    _circle(img, (400 + 8 * t, 120), 28, (250, 250, 250))  # a cloud drifting slowly
    _circle(img, (430 + 8 * t, 110), 34, (250, 250, 250))
    cv2.rectangle(img, (380, 60), (600, 220), (110, 80, 60), 6)
    cv2.line(img, (490, 60), (490, 220), (110, 80, 60), 4)
    _circle(img, (150, 120), 60, (245, 245, 240))  # clock face
    cv2.circle(img, (150, 120), 60, (60, 60, 60), 3, cv2.LINE_AA)
    angle = 2 * math.pi * t / 60  # the second hand: one turn a minute
    tip = (150 + 52 * math.sin(angle), 120 - 52 * math.cos(angle))
    _line(img, (150, 120), tip, (200, 30, 30), 2)
    cv2.rectangle(img, (60, 250), (300, 290), (120, 85, 55), -1)  # a table
    if 11.0 <= t < 12.5:
        cv2.rectangle(img, (150, 120), (490, 250), (250, 210, 30), -1)
        cv2.rectangle(img, (150, 120), (490, 250), (40, 40, 40), 4)
        _text(img, "BINGO", (190, 215), 2.6, (30, 30, 30), 5)
    return img


# -- smooth_motion.mp4: one steady motion ---------------------------------------------------------


def smooth_motion(t: float) -> np.ndarray:
    """An orange hot-air balloon drifting from lower left to upper right as the sky brightens."""
    light = t / 15.0
    top = tuple(round(a + (b - a) * light) for a, b in zip((40, 60, 130), (120, 180, 240), strict=True))
    bottom = tuple(round(a + (b - a) * light) for a, b in zip((200, 120, 90), (230, 220, 200), strict=True))
    img = _vertical_gradient(top, bottom)
    _polygon(img, [(0, 330), (160, 280), (330, 320), (480, 270), (640, 310), (640, 360), (0, 360)], (60, 110, 60))
    x, y = 90 + 30 * t, 250 - 9 * t
    _circle(img, (x, y), 45, (240, 120, 30))
    _polygon(img, [(x - 40, y + 20), (x + 40, y + 20), (x + 12, y + 62), (x - 12, y + 62)], (240, 120, 30))
    _polygon(img, [(x - 12, y + 66), (x + 12, y + 66), (x + 12, y + 84), (x - 12, y + 84)], (110, 70, 40))  # basket
    return img


EXAMPLES = (
    Example(
        "scene_cuts.mp4",
        21.0,
        scene_cuts,
        "What colour is the kite in the last scene?",
        "Hard cuts: the frame trajectory turns sharply at 7 s and 14 s, so curvature peaks there and "
        "the frames around each cut keep more tokens; the answer needs the last scene.",
    ),
    Example(
        "brief_event.mp4",
        20.0,
        brief_event,
        "What word appears on the yellow sign?",
        "A brief event in a quiet scene: only the 1.5 s sign (11.0-12.5 s) turns the trajectory, so "
        "its frames win budget; uniform pruning at a low ratio can drop the word.",
    ),
    Example(
        "smooth_motion.mp4",
        15.0,
        smooth_motion,
        "Which way does the orange balloon move?",
        "Smooth continuous motion: the trajectory hardly turns, curvature is flat and V-CAST spreads "
        "the budget almost evenly, like uniform pruning.",
    ),
)


def write_clip(path: Path, example: Example) -> Path:
    """Encode the example's frames to H.264 in MP4, bit-exactly (one encoder thread, no timestamps of now)."""
    options = {"crf": "20", "preset": "medium", "threads": "1", "x264-params": "threads=1:lookahead-threads=1"}
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.options = WIDTH, HEIGHT, "yuv420p", options
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i in range(round(example.seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(example.draw(i / FPS), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_all(out_dir: Path) -> list[dict[str, str]]:
    """Write every clip and examples.json into `out_dir`; returns the JSON records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for example in EXAMPLES:
        write_clip(out_dir / example.file, example)
        records.append({"file": example.file, "question": example.question, "what it teaches": example.teaches})
    (out_dir / "examples.json").write_text(json.dumps(records, indent=2) + "\n")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    for record in make_all(args.out):
        path = args.out / record["file"]
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
