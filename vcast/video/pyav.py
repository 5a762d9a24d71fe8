"""The PyAV decoders: keyframe-aware seeking over the probed track, or one pass in order.

Both stop with DecodeTimeout once `deadline` (a time.monotonic() value) has passed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from .budget import SEEK_COST_FRAMES, split_targets
from .clip import BackendFailed, DecodeTimeout
from .probe import Probe


def decode_pyav(
    path: Path, probe: Probe, targets: np.ndarray, out_hw: tuple[int, int], deadline: float | None = None
) -> np.ndarray:
    """Decode frames `targets` ((T,) ascending unique indices) -> (T, h, w, 3) uint8 RGB, before rotation.

    The targets are split into contiguous runs, up to one per CPU core (budget.split_targets), decoded in
    parallel threads (PyAV releases the GIL while decoding).
    """
    runs = split_targets(probe, targets)
    if len(runs) == 1:
        return PyAVRun(path, probe, out_hw, deadline=deadline).decode(targets)
    with ThreadPoolExecutor(len(runs)) as pool:
        parts = pool.map(lambda run: PyAVRun(path, probe, out_hw, deadline=deadline).decode(run), runs)
        return np.concatenate(list(parts))


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DecodeTimeout


class PyAVRun:
    """One decoder over one container, decoding ascending target frames with as little work as it can.

    For each target it either decodes on from where it is or seeks to the target's keyframe, whichever
    decodes fewer frames; on the way it lets the decoder skip frames that no target needs and that no
    other frame references (skip_frame=NONREF), which leaves every other frame's pixels unchanged.
    """

    def __init__(
        self, path: Path, probe: Probe, out_hw: tuple[int, int], *, seek: bool = True, deadline: float | None = None
    ):
        self.path, self.probe, self.out_hw, self.may_seek, self.deadline = path, probe, out_hw, seek, deadline

    def decode(self, targets: np.ndarray) -> np.ndarray:
        """(T,) ascending frame indices -> (T, h, w, 3) uint8 RGB."""
        probe = self.probe
        starts = probe.seek_starts(targets)
        self.wanted = {int(probe.pts[t]): k for k, t in enumerate(targets)}
        self.out: list[np.ndarray | None] = [None] * targets.size
        with probe.open(self.path) as container:
            self.container = container
            self.stream = probe.stream(container)
            # One thread per decoder: the runs already use every core, and frame threads would
            # delay output and apply the per-packet skip setting to a later packet.
            self.stream.codec_context.thread_count = 1
            self.packets: Iterator[av.Packet] | None = None
            self.fed = -1  # decode-order position of the last packet sent to the decoder
            for k, target in enumerate(targets):
                if self.out[k] is not None:
                    continue
                goal = int(probe.position[target])
                if self.packets is None:
                    self._seek(int(starts[k]) if self.may_seek else 0)
                elif self.may_seek and goal - self.fed > goal - starts[k] + SEEK_COST_FRAMES:
                    self._seek(int(starts[k]))
                self._feed_until(k)
                if self.out[k] is None:
                    raise BackendFailed(f"frame {target} did not come out of the decoder", int(target))
        return np.stack(self.out)

    def _seek(self, start: int) -> None:
        """Position the demuxer at the keyframe at decode-order position `start`, decoder flushed."""
        if self.fed >= 0 or start > 0:
            key_pts = int(self.probe.pts[self.probe.decode_order[start]])
            self.container.seek(key_pts, stream=self.stream, backward=True)
            self.stream.codec_context.flush_buffers()
        self.packets = self.container.demux(self.stream)
        self.fed = start - 1
        self.landed = False

    def _feed_until(self, k: int) -> None:
        """Send packets to the decoder until target k has come out, collecting every target on the way."""
        probe, decoder = self.probe, self.stream.codec_context
        for packet in self.packets:
            _check_deadline(self.deadline)
            if packet.size == 0:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            frame = probe.frame_at.get(ts)
            if frame is not None:
                position = int(probe.position[frame])
                if not self.landed and position > self.fed + 1:
                    # The seek overshot our keyframe (an imprecise index): start over from the top.
                    raise BackendFailed("seek landed after the keyframe")
                self.fed = max(self.fed, position)
            self.landed = True
            target = self.wanted.get(ts)
            decoder.skip_frame = "DEFAULT" if target is not None and self.out[target] is None else "NONREF"
            try:
                frames = decoder.decode(packet)
            except av.FFmpegError:  # a damaged packet: conceal it, as players do
                continue
            self._collect(frames)
            if self.out[k] is not None:
                return
        decoder.skip_frame = "DEFAULT"
        self._collect(decoder.decode(None))
        self.packets = None

    def _collect(self, frames: list[av.VideoFrame]) -> None:
        height, width = self.out_hw
        for frame in frames:
            k = self.wanted.get(frame.pts)
            if k is not None and self.out[k] is None:
                self.out[k] = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")


def decode_pyav_in_order(
    path: Path, probe: Probe, targets: np.ndarray, out_hw: tuple[int, int], deadline: float | None = None
) -> np.ndarray:
    """Decode every frame in order and keep `targets` by position: for tracks without usable timestamps."""
    height, width = out_hw
    out = {}
    wanted = set(targets.tolist())
    with probe.open(path) as container:
        stream = probe.stream(container)
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            _check_deadline(deadline)
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
            if i >= targets[-1]:
                break
    if len(out) < targets.size:
        raise BackendFailed(f"only {len(out)} of {targets.size} frames were produced")
    return np.stack([out[i] for i in targets.tolist()])
