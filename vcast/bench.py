"""`python -m vcast.bench`: the GPU benchmark, whose harness lives in the repository's benchmarks/bench.py.

A thin entry, so that benchmarking has one home (benchmarks/) while the documented command keeps
working from a clone or an editable install (`pip install -e .`).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    if not (_ROOT / "benchmarks" / "bench.py").is_file():
        raise SystemExit(
            "python -m vcast.bench runs the harness in the repository's benchmarks/ folder, which an installed "
            "package does not carry: run it from a clone (pip install -e .)."
        )
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    from benchmarks.bench import main as bench_main

    bench_main(argv)


if __name__ == "__main__":
    main()
