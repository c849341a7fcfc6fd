"""Reference attention against PyTorch's fused scaled_dot_product_attention.

Times `reference.attention.scaled_dot_product_attention` (which materialises the full
(seq x seq) score matrix, as the formula reads) and `torch.nn.functional.scaled_dot_product_attention`
(a fused kernel) on the same causal inputs, for sequence lengths 128..2048, and measures each call's
peak memory above what was allocated before it. Reported as ratios against PyTorch, both run in the
same process. On the CPU the peak is read from the profiler's allocation events; on CUDA from
`torch.cuda.max_memory_allocated`.

    python benchmarks/bench_attention.py [--device cpu|cuda] [--heads 8] [--head-dim 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from reference.attention import causal_mask, scaled_dot_product_attention
from reference.runtime import pick_device, seed_everything


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Largest amount of memory `fn` held at once, beyond what was allocated before the call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    held = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        held += event.self_cpu_memory_usage  # + on allocation, - on release
        peak = max(peak, held)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    args = parser.parse_args()
    device = pick_device(args.device)
    seed_everything(0)
    print(f"device {device}, batch 1, heads {args.heads}, head_dim {args.head_dim}, float32, causal; median of {args.repeats}")
    header = f"{'seq':>6} {'reference ms':>13} {'torch ms':>10} {'time ratio':>11} {'reference MiB':>14} {'torch MiB':>10} {'memory ratio':>13}"
    print(header)
    print("-" * len(header))
    for seq in args.seq:
        q, k, v = (torch.randn(1, args.heads, seq, args.head_dim, device=device) for _ in range(3))
        mask = causal_mask(seq, device=device)
        with torch.no_grad():
            ours = lambda: scaled_dot_product_attention(q, k, v, mask)  # noqa: E731
            theirs = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
            torch.testing.assert_close(ours(), theirs(), atol=1e-4, rtol=1e-4)
            t_ours, t_theirs = median_seconds(ours, device, args.repeats), median_seconds(theirs, device, args.repeats)
            m_ours, m_theirs = peak_bytes(ours, device), peak_bytes(theirs, device)
        print(
            f"{seq:>6} {t_ours * 1e3:>13.2f} {t_theirs * 1e3:>10.2f} {t_ours / t_theirs:>10.1f}x "
            f"{m_ours / 2**20:>14.1f} {m_theirs / 2**20:>10.1f} {m_ours / max(m_theirs, 1):>12.1f}x"
        )
    print("ratios > 1: the reference is slower / holds more memory than PyTorch's fused kernel.")


if __name__ == "__main__":
    main()
