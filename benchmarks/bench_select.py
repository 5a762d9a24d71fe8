"""Time `vcast.select_tokens` on a GPU against a per-frame loop baseline and the memory floor.

    python benchmarks/bench_select.py [--out results/select.json]

For T in {16, 32, 64} groups, N in {196, 720} tokens, D = 4096, bf16 features: median of CUDA-event
timings after warm-up, rotating over several inputs so the L2 cache does not serve repeats.
"read floor" is one pass over the features (`X.sum(dtype=float32)`), the least any selection can
cost. "loop baseline" is the straightforward per-frame implementation (Python loop, one `.item()`
per frame), the style of the original code. Also checks that GPU selections equal a float64 CPU
selection of the same data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import date

import torch
import torch.nn.functional as F

import vcast


def loop_baseline(features: torch.Tensor, ratio: float = 0.25, temperature: float = 0.7) -> torch.Tensor:
    """Per-frame reference: Python loop over groups with a host sync per group."""
    T, N, _ = features.shape
    means = F.normalize(features.float().mean(1), dim=-1)
    curvature = torch.ones(T, device=features.device)
    for t in range(1, T - 1):
        a, b = means[t] - means[t - 1], means[t + 1] - means[t]
        curvature[t] = 1 - F.cosine_similarity(a, b, dim=0)
    weights = torch.softmax(curvature / temperature, 0)
    budgets = (weights * round(T * N * ratio)).floor().clamp(1, N)
    kept = []
    for t in range(T):
        x = features[t].float()
        norms = x.norm(dim=-1)
        score = 1 - F.cosine_similarity(x, means[t][None], dim=-1)
        score = score + (norms - norms.min()) / (norms.max() - norms.min() + 1e-8)
        k = int(budgets[t].item())
        kept.append(torch.topk(score, k).indices.sort().values + t * N)
    return torch.cat(kept)


def time_ms(fn, inputs: list[torch.Tensor], iters: int) -> float:
    for x in inputs * 3:  # warm-up
        fn(x)
    torch.cuda.synchronize()
    times = []
    for i in range(iters):
        x = inputs[i % len(inputs)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_against_cpu(x: torch.Tensor) -> dict:
    gpu = vcast.select_tokens(x)
    cpu = vcast.select_tokens(x.cpu().double())
    return {
        "budgets_equal": bool(torch.equal(gpu.budgets.cpu(), cpu.budgets)),
        "score_max_abs_diff": float((gpu.scores.cpu() - cpu.scores).abs().max()),
        "kept_overlap": float(torch.isin(gpu.keep.cpu(), cpu.keep).float().mean()),
    }


def profile_largest() -> None:
    """Where the GPU time goes at T = 64, N = 720."""
    x = torch.randn(64, 720, 4096, device="cuda", dtype=torch.bfloat16)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(10):
            vcast.select_tokens(x)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=40))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/select.json")
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    torch.manual_seed(0)
    rows = []
    for N in (196, 720):
        for T in (16, 32, 64):
            inputs = [torch.randn(T, N, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
            row = {
                "T": T,
                "N": N,
                "D": 4096,
                "select_ms": time_ms(vcast.select_tokens, inputs, args.iters),
                "read_floor_ms": time_ms(lambda x: x.sum(dtype=torch.float32), inputs, args.iters),
                "loop_baseline_ms": time_ms(loop_baseline, inputs, max(20, args.iters // 10)),
                **check_against_cpu(inputs[0]),
            }
            rows.append(row)
            del inputs
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": date.today().isoformat(),
    }
    print(json.dumps(meta))
    print("| T | N | select ms | read floor ms | loop baseline ms | speed-up | budgets = CPU fp64 | max score diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['T']} | {r['N']} | {r['select_ms']:.3f} | {r['read_floor_ms']:.3f} | {r['loop_baseline_ms']:.2f} |"
            f" {r['loop_baseline_ms'] / r['select_ms']:.0f}x | {r['budgets_equal']} | {r['score_max_abs_diff']:.1e} |"
        )
    profile_largest()
    if args.out:
        import pathlib

        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
