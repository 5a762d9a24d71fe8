"""Why a VideoQA pass decodes slower than bare generate(): cProfile of one pruned pass, 8B shapes.

python benchmarks/profile_pipeline_decode.py
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast import VCastConfig
from vcast.pipeline import VideoQA


def main() -> None:
    qa = VideoQA.random_weights("8B")
    clip = synthetic_clip(32, 448, 448)
    qa.answer(clip, "Describe it.", compare=False, max_new_tokens=4)
    profile = cProfile.Profile()
    profile.enable()
    result = qa.answer(clip, "Describe it.", config=VCastConfig(), compare=False, max_new_tokens=32)
    profile.disable()
    print(result.pruned.metrics)
    pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
