"""How long decoding the asked frames will take, estimated from the probe before any frame is decoded.

A small file can cost minutes to decode: 8K frames with one keyframe for the whole clip need every frame
before the last one decoded. The estimate follows the plan the PyAV decoder will carry out (seek to the
keyframe or decode on, whichever is less work) and prices each decoded frame by its pixels and its bytes.

Calibration (2026-12, this project's CI-like machine: 2 vCPU Intel Xeon, PyAV 18.1 with FFmpeg 8.1, one
decoding thread, best of 5 runs while other work ran): 18 H.264 clips written with x264 (24-60 frames of
moving block texture; 1280x720, 1920x1080, 3840x2160; crf 18-35; presets veryfast (High profile, CABAC)
and ultrafast (Constrained Baseline, CAVLC); 7-977 kB a frame) were decoded packet by packet with
`codec_context.decode`. A least-squares fit of the time per frame gave 1.11 ms per megapixel + 0.094 ms per
kB (CABAC) or 0.013 ms per kB (CAVLC), every clip within 0.96-1.26 of it; the constants below round up.
An 8K clip (7680x4320, one keyframe in 120 frames, 1.3 MB a frame, CAVLC) took 6.9 s for 4 frames and 7.4 s
for 16 through read_video, against 7.2 and 7.4 s estimated. Flat grey frames decode 3 times faster than the
fit says. HEVC (x265, 1080p, 39 Mbit/s) took 1.4 times the H.264 fit at its size and bytes; VP9 and AV1
within 10 % of it. Two decoding threads on the 2 vCPUs took as long as one thread doing both jobs while
other work ran, so the estimate adds up the work of all threads: a budget of one core's time, which is also
what a shared server has to give. Reproduce: decode a clip packet by packet with thread_count = 1, time it,
and compare with decode_cost_s(probe(path), np.arange(N)).
"""

from __future__ import annotations

import os

import numpy as np

from .clip import VideoError
from .limits import format_about, format_seconds
from .probe import Probe

DECODE_S_PER_MEGAPIXEL = 1.2e-3
DECODE_S_PER_KB = 0.095e-3  # arithmetic coding (CABAC: H.264 Main and High profiles, HEVC)
DECODE_S_PER_KB_CAVLC = 0.015e-3  # H.264 Baseline profiles, which cannot use CABAC
# Converting a decoded frame to RGB at the output size (swscale, area filter), per megapixel of source.
CONVERT_S_PER_MEGAPIXEL = 0.5e-3
CODEC_FACTORS = {"hevc": 1.5}
# A seek costs about as much as decoding this many frames (demuxer reset, decoder flush).
SEEK_COST_FRAMES = 8
# Below this many target frames per worker, a second decoding thread costs more than it saves.
MIN_FRAMES_PER_WORKER = 4


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_for(num_targets: int) -> int:
    """How many threads decode `num_targets` frames: one per core, each with enough frames to be worth it."""
    return max(1, min(cpu_count(), num_targets // MIN_FRAMES_PER_WORKER))


def split_targets(probe: Probe, targets: np.ndarray) -> list[np.ndarray]:
    """Ascending `targets` ((T,) frame indices) split into contiguous runs, one per decoding thread: one per
    core, each with MIN_FRAMES_PER_WORKER targets at least; a run whose keyframe comes before the previous
    run's last frame joins that run instead, as the two would decode the same frames (one keyframe in a
    whole clip: one run)."""
    if probe.in_order_only:
        return [targets]
    runs: list[np.ndarray] = []
    for chunk in np.array_split(targets, workers_for(targets.size)):
        if runs and probe.seek_starts(chunk[:1])[0] <= probe.position[runs[-1][-1]]:
            runs[-1] = np.concatenate([runs[-1], chunk])
        else:
            runs.append(chunk)
    return runs


def decode_ranges(probe: Probe, targets: np.ndarray) -> tuple[list[tuple[int, int]], int]:
    """The runs of packets one decoder feeds to reach ascending `targets` ((T,) frame indices), as the PyAV
    decoder plans them: [(first, last)] decode-order positions, inclusive, and the number of seeks."""
    if probe.in_order_only:
        return [(0, int(targets[-1]))], 0
    starts = probe.seek_starts(targets)  # (T,)
    ranges: list[tuple[int, int]] = []
    seeks, fed = 0, -1
    for start, target in zip(starts.tolist(), targets.tolist(), strict=True):
        goal = int(probe.position[target])
        if goal <= fed:  # decoded on the way to an earlier target
            continue
        if not ranges or goal - fed > goal - start + SEEK_COST_FRAMES:
            seeks += bool(ranges) or start > 0
            fed = start - 1
        ranges.append((fed + 1, goal))
        fed = goal
    return ranges, seeks


def decode_cost_s(probe: Probe, targets: np.ndarray) -> float:
    """Estimated seconds of one CPU core to decode ascending unique `targets` ((T,) frame indices) and
    convert them to RGB, in the runs the decoders split them into, each from its first target's keyframe."""
    megapixels = probe.width * probe.height / 1e6
    frame_s = DECODE_S_PER_MEGAPIXEL * megapixels
    kb_s = DECODE_S_PER_KB_CAVLC if probe.codec == "h264" and "Baseline" in probe.profile else DECODE_S_PER_KB
    kilobytes = np.concatenate([[0.0], np.cumsum(probe.packet_bytes / 1e3)])  # (N + 1,) in decode order
    total = CONVERT_S_PER_MEGAPIXEL * megapixels * targets.size
    for chunk in split_targets(probe, targets):
        ranges, seeks = decode_ranges(probe, chunk)
        frames = sum(last - first + 1 for first, last in ranges) + seeks * SEEK_COST_FRAMES
        data_kb = sum(kilobytes[last + 1] - kilobytes[first] for first, last in ranges)
        total += (frames * frame_s + data_kb * kb_s) * CODEC_FACTORS.get(probe.codec, 1.0)
    return float(total)


def too_slow_error(probe: Probe, cost_s: float, fewer_frames: int | None) -> VideoError:
    """The sentence for a video whose decoding would exceed the budget; `fewer_frames`, when given, is the
    most frames that would fit."""
    size = f"{probe.width}x{probe.height}"
    keys = int(probe.keyframe.sum())
    if probe.in_order_only:
        cause = f"its {probe.total_frames:,} frames at {size} can only be read in order"
        remedy = "re-encode it as .mp4 or at a lower resolution"
    else:
        spacing = f"a single keyframe in {probe.total_frames:,} frames" if keys <= 1 else (
            f"one keyframe every {round(probe.total_frames / keys):,} frames")  # fmt: skip
        cause = f"{spacing} at {size}"
        remedy = "re-encode it with more keyframes or at a lower resolution"
    if fewer_frames is not None:
        remedy = f"ask for at most {fewer_frames} frames, or {remedy}"
    return VideoError(f"This video would take about {format_about(cost_s)} to decode ({cause}); {remedy}.")


def timeout_error(max_decode_s: float) -> VideoError:
    limit = f"{max_decode_s:g} s" if max_decode_s < 60 else format_seconds(max_decode_s)
    return VideoError(
        f"Decoding this video took longer than the {limit} limit; re-encode it with more keyframes or at a lower "
        "resolution, or ask for fewer frames."
    )
