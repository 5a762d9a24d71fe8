"""Accuracy of pruning methods on video QA benchmarks: `python -m vcast.eval` (README: "Reproduce the accuracy claim").

The pure parts (manifest, readers, subsets, letters, statistics, report) import no model code;
`EvalSettings` and `run` (the runner, which loads models) are imported on first use.
"""

from .letters import INSTRUCTION, build_prompt, extract_letter
from .manifest import Item, ManifestError, load_manifest, write_manifest
from .readers import load_items
from .stats import bootstrap_accuracies, pass_statistics, percentile_interval
from .subset import stratified_subset

__all__ = [
    "INSTRUCTION",
    "EvalError",
    "EvalSettings",
    "Item",
    "ManifestError",
    "bootstrap_accuracies",
    "build_prompt",
    "extract_letter",
    "load_items",
    "load_manifest",
    "pass_statistics",
    "percentile_interval",
    "run",
    "stratified_subset",
    "write_manifest",
]


def __getattr__(name: str):
    # The runner imports the model side (transformers); the pure helpers above stay light.
    if name in ("EvalError", "EvalSettings", "run"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'vcast.eval' has no attribute {name!r}")
