"""Chapter 15's two speed ratios, each against a baseline run in the same process, interleaved.

1. Decoding with the KV cache against recomputing the whole sequence at every step (llama-tiny or
   SmolLM2-135M, greedy, batch 1): tokens/s of each and their ratio, for several prompt lengths.
2. `reference.inference.flash.FlashAttention` (pure PyTorch, tiled) against
   `torch.nn.functional.scaled_dot_product_attention` (PyTorch's fused kernels), forward and
   forward + backward: the ratio SDPA time / ours (< 1: ours is slower, as a Python-level tiling
   must be; the memory advantage is measured in the chapter).

    python benchmarks/bench_inference.py [--model llama-tiny|smollm2-135m-instruct] [--new-tokens 32]
        [--lengths 32 128 224] [--seq 256 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from reference import load_pretrained
from reference.inference import generate
from reference.inference.flash import FlashAttention
from reference.runtime import time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-tiny")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 224])
    parser.add_argument("--seq", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _ = load_pretrained(args.model)
    print(f"KV cache, {args.model}, greedy, batch 1, {args.new_tokens} new tokens")
    print(f"{'prompt':>7} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>7}")
    for length in args.lengths:
        prompt = [[(7 * i) % 200 + 10 for i in range(min(length, model.context_length - args.new_tokens))]]
        times = {c: [] for c in (True, False)}
        for _ in range(args.repeats):
            for use_cache in (True, False):
                times[use_cache].append(_time(lambda: generate(model, prompt, args.new_tokens, use_cache=use_cache)))
        cached, uncached = (statistics.median(times[c]) for c in (True, False))
        print(f"{length:>7} {args.new_tokens / cached:>13.1f} {args.new_tokens / uncached:>15.1f} {uncached / cached:>7.2f}")
    print("\nFlashAttention (PyTorch tiles of 64) vs SDPA, float32, batch 1, 8 heads of 64, causal")
    print(f"{'seq':>6} {'fwd ratio':>10} {'fwd+bwd ratio':>14}   (SDPA time / ours)")
    for n in args.seq:
        q, k, v = (torch.randn(1, 8, n, 64, requires_grad=True) for _ in range(3))

        def ours_fwd():
            with torch.no_grad():
                FlashAttention.apply(q, k, v, True, None, 64, 64)

        def sdpa_fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def ours_both():
            FlashAttention.apply(q, k, v, True, None, 64, 64).sum().backward()

        def sdpa_both():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        fwd = time_interleaved({"ours": ours_fwd, "sdpa": sdpa_fwd}, rounds=args.repeats)
        both = time_interleaved({"ours": ours_both, "sdpa": sdpa_both}, rounds=args.repeats)
        print(f"{n:>6} {_median(fwd['sdpa']) / _median(fwd['ours']):>10.2f} {_median(both['sdpa']) / _median(both['ours']):>14.2f}")


def _median(value) -> float:
    return statistics.median(value) if isinstance(value, (list, tuple)) else float(value)


def _time(fn) -> float:
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
