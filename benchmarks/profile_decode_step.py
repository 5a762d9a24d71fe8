"""The graph decoder's step with and without its fused kernels: tokens/s, tokens, and where a step's time goes.

    python benchmarks/profile_decode_step.py [--model 8B] [--videos 32x448x448,128x352x640]
                                             [--decoders plain,fused,compiled]
                                             [--tokens 64] [--runs 3] [--profile] [--out FILE]

For each video (the app's pixel budget), V-CAST R = 0.25 and unpruned passes are prefilled and then
decoded greedily for `--tokens` tokens by GraphDecoders on the same model: "plain" (transformers'
kernels: SDPA over the whole static cache with a mask, RMSNorm as separate kernels), "fused"
(`vcast.models.decode_kernels`: flash attention over the filled slots, fused RMSNorm) and "compiled"
(fused, and the decoder layers through torch.compile in the prefill and in the recorded step:
`GraphDecoder.compile_prefill(steps=True)`; its first pass compiles), interleaved for `--runs` rounds.
Reports decode tokens/s after the first token (median and every round), and whether each
decoder's tokens equal `generate`'s. `--profile` adds the CUDA kernels of three eager steps of each
decoder (count and time per step, by kernel name) for the first video's V-CAST pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast.models import decode_kernels
from vcast.models.graph_decode import GraphDecoder
from vcast.pipeline import VideoQA


def decode_rate(decoder: GraphDecoder, pass_inputs, tokens: int) -> tuple[float, list[int]]:
    """Tokens/s after the first token, and the tokens."""
    seen: list[int] = []
    stamps: list[float] = []

    def on_token(token_id: int) -> bool:
        stamps.append(time.perf_counter())
        seen.append(token_id)
        return False

    with torch.inference_mode():
        decoder.run(pass_inputs, max_new_tokens=tokens, generation_kwargs={"min_new_tokens": tokens},
                    on_token=on_token, stop_ids=set())  # fmt: skip
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), seen


def generate_tokens(qa: VideoQA, pass_inputs, tokens: int) -> list[int]:
    with torch.inference_mode():
        out = qa.model.generate(**pass_inputs.generate_kwargs(), max_new_tokens=tokens, min_new_tokens=tokens,
                                do_sample=False, temperature=None, top_p=None, top_k=None)  # fmt: skip
    return out[0, pass_inputs.input_ids.shape[1] :].tolist()


def kernel_table(decoder: GraphDecoder, pass_inputs, steps: int = 3) -> list[dict]:
    """CUDA kernels of `steps` eager decode steps (the first token's prefill left out), per step."""
    from torch.profiler import ProfilerActivity, profile

    eager = GraphDecoder(decoder.model, graphs=False, caches=decoder.caches, fast_kernels=decoder.fast is not None)
    eager.compiled_prefill, eager.compiled_steps = decoder.compiled_prefill, decoder.compiled_steps
    counted = {"n": 0}
    prof = profile(activities=[ProfilerActivity.CUDA])

    def on_token(token_id: int) -> bool:
        counted["n"] += 1
        if counted["n"] == 1:
            torch.cuda.synchronize()
            prof.__enter__()
        return False

    with torch.inference_mode():
        eager.run(pass_inputs, max_new_tokens=steps + 1, generation_kwargs={"min_new_tokens": steps + 1},
                  on_token=on_token, stop_ids=set())  # fmt: skip
        torch.cuda.synchronize()
    prof.__exit__(None, None, None)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_name[event.name][0] += 1
            by_name[event.name][1] += event.device_time_total
    rows = [{"kernel": name[:90], "per_step": count / steps, "us_per_step": total / steps}
            for name, (count, total) in by_name.items()]  # fmt: skip
    return sorted(rows, key=lambda r: -r["us_per_step"])


def fused_norms(model) -> int:
    """RMSNorm modules whose forward the fused step replaced (VideoQA's own graph decoder may have done it)."""
    return sum("_fused_norm" in str(vars(m).get("forward")) for m in model.modules())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="8B")
    parser.add_argument("--videos", default="32x448x448,128x352x640")
    parser.add_argument("--decoders", default="plain,fused,compiled")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    qa = VideoQA.random_weights(args.model)
    names = args.decoders.split(",")
    if not set(names) <= {"plain", "fused", "compiled"}:
        raise SystemExit(f"--decoders: choose among plain, fused, compiled, not {args.decoders!r}")
    decoders = {name: GraphDecoder(qa.model, fast_kernels=name != "plain") for name in names}
    if "compiled" in decoders:
        decoders["compiled"].compile_prefill(steps=True)
    report = {"date": date.today().isoformat(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "python": platform.python_version(),
              "model": qa.model_id, "flash_route": decode_kernels._ROUTE, "fused_norms": fused_norms(qa.model),
              "results": [], "kernels": {}}  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k not in ("results", "kernels")}), flush=True)
    for spec in args.videos.split(","):
        frames, height, width = (int(v) for v in spec.split("x"))
        prepared = qa.prepare(synthetic_clip(frames, height, width), "Describe what happens in this video in detail.")
        passes = {"vcast": qa.pass_inputs(prepared, qa.select(prepared, "vcast")), "unpruned": qa.pass_inputs(prepared)}
        for method, pass_inputs in passes.items():
            reference = generate_tokens(qa, pass_inputs, args.tokens)
            rates: dict[str, list[float]] = {name: [] for name in decoders}
            same: dict[str, bool] = {}
            seen = {}
            for name, decoder in decoders.items():  # warm-up: records the step once, compares tokens
                _, seen[name] = decode_rate(decoder, pass_inputs, args.tokens)
                same[name] = seen[name] == reference
            # random weights give near-tied logits: how many leading tokens each decoder shares with the first
            first = next(iter(seen.values()))
            agree = {name: next((i for i, (a, b) in enumerate(zip(first, tokens, strict=True)) if a != b), args.tokens)
                     for name, tokens in seen.items()}  # fmt: skip
            for _ in range(args.runs):
                for name, decoder in decoders.items():
                    rates[name].append(decode_rate(decoder, pass_inputs, args.tokens)[0])
            row = {"video": spec, "method": method, "prompt_tokens": int(pass_inputs.input_ids.shape[1]),
                   **{f"{n}_tok_s": statistics.median(r) for n, r in rates.items()},
                   **{f"{n}_rounds": [round(x, 1) for x in r] for n, r in rates.items()},
                   **{f"{n}_equals_generate": s for n, s in same.items()}}  # fmt: skip
            for faster, slower in (("fused", "plain"), ("compiled", "fused")):
                if faster in rates and slower in rates:
                    row[f"{faster}_over_{slower}"] = row[f"{faster}_tok_s"] / row[f"{slower}_tok_s"]
            row["leading_tokens_shared_with_the_first_decoder"] = agree
            report["results"].append(row)
            print(json.dumps(row), flush=True)
            if args.profile and spec == args.videos.split(",")[0] and method == "vcast":
                for name, decoder in decoders.items():
                    table = kernel_table(decoder, pass_inputs)
                    report["kernels"][name] = table
                    total = sum(r["us_per_step"] for r in table)
                    launches = sum(r["per_step"] for r in table)
                    print(f"# {name}: {launches:.0f} kernels, {total / 1000:.2f} ms of kernels per step", flush=True)
                    for r in table[:15]:
                        print(f"  {r['per_step']:6.0f} x {r['us_per_step']:8.1f} us  {r['kernel']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
