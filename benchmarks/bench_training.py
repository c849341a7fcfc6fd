"""Training throughput of the course's TransformerLM against Hugging Face's LlamaForCausalLM.

Both models have the same configuration and the same weights (copied with `reference.models.hf.to_hf`)
and run the same training step (forward, next-token cross-entropy, backward, AdamW step) on the same
batches, taking turns step by step in one process so that machine load falls on all of them alike.
Reported as tokens per second and as the ratio ours / Hugging Face's; also the achieved FLOP/s
against the 6N-per-token estimate (Kaplan et al., 2020). Hugging Face runs its "eager" attention and, separately, "sdpa"
(PyTorch's fused kernel); ours runs `MultiHeadAttention(sdpa=True)`, as the course's models do. The
ratios are medians over rounds of the paired ratio (Hugging Face's step time / ours, in the same
round), which cancels most of a shared machine's load swings; the last lines print the goal's ratio.

    python benchmarks/bench_training.py [--device cpu|cuda] [--steps 5] [--batch 16] [--context 256] [--configs ...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch.nn import functional as F

from reference.models.hf import to_hf
from reference.models.llama import TransformerLM
from reference.runtime import pick_device, seed_everything

CONFIGS = {
    "llama-tiny": dict(vocab_size=4096, context_length=256, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
                       d_ff=352, tie_embeddings=True),
    "small": dict(vocab_size=8192, context_length=256, d_model=256, num_layers=6, num_heads=8, num_kv_heads=4,
                  d_ff=688),
}  # fmt: skip


def step_seconds(models: dict, batches: list[torch.Tensor], device: torch.device) -> dict[str, list[float]]:
    """Seconds of each training step (forward, loss, backward, AdamW) for each model, round by round.

    `models` maps a name to (model, function giving logits). The models take turns batch by batch,
    so that a change in the machine's load falls on all of them alike, in a fresh random order each
    round: on the CPU a step runs faster when it follows a model that allocates memory the same way
    (measured: 10-20%, whoever it favours), so no model may always follow the same one. The first
    round warms up.
    """
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    order = random.Random(0)
    for i, ids in enumerate(batches):
        names = list(models)
        order.shuffle(names)
        for name in names:
            model, logits_of = models[name]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            logits = logits_of(model, ids[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(baseline: list[float], ours: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of baseline seconds / our seconds (a step each, the same round:
    both saw the same load), so > 1 means ours is faster."""
    ratios = sorted(b / o for b, o in zip(baseline, ours))
    return statistics.median(ratios), ratios[0], ratios[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    device = pick_device(args.device)
    seed_everything(0)
    print(f"device {device}, batch {args.batch} x context {args.context}, median of {args.steps} steps")
    print(f"{'config':<11} {'params':>10} {'ours tok/s':>11} {'HF eager':>10} {'HF sdpa':>10} "
          f"{'ours/eager':>11} {'ours/sdpa':>10} {'ours GFLOP/s (6N)':>18}")
    ratios: dict[str, tuple[float, float, float]] = {}
    for name in args.configs:
        config = CONFIGS[name]
        ours = TransformerLM(**config).to(device)
        n = sum(p.numel() for p in ours.parameters())
        eager = to_hf(ours).to(device).train()
        sdpa = to_hf(ours)
        sdpa.config._attn_implementation = "sdpa"
        sdpa = sdpa.to(device).train()
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, config["vocab_size"], (args.batch, args.context + 1), generator=g).to(device)
                   for _ in range(args.steps + 1)]
        tokens = args.batch * args.context
        hf_logits = lambda m, x: m(input_ids=x).logits  # noqa: E731
        seconds = step_seconds({"ours": (ours.train(), lambda m, x: m(x)), "eager": (eager, hf_logits),
                                "sdpa": (sdpa, hf_logits)}, batches, device)  # fmt: skip
        t_ours, t_eager, t_sdpa = (statistics.median(seconds[k]) for k in ("ours", "eager", "sdpa"))
        r_eager, r_sdpa = paired_ratio(seconds["eager"], seconds["ours"]), paired_ratio(seconds["sdpa"], seconds["ours"])
        print(f"{name:<11} {n:>10,} {tokens / t_ours:>11,.0f} {tokens / t_eager:>10,.0f} {tokens / t_sdpa:>10,.0f} "
              f"{r_eager[0]:>11.2f} {r_sdpa[0]:>10.2f} {6 * n * tokens / t_ours / 1e9:>18.1f}")
        ratios[name] = r_sdpa
    for name, (median, low, high) in ratios.items():
        print(f"{name}: TransformerLM / LlamaForCausalLM (sdpa) training tokens/s = {median:.2f}x "
              f"(median of {args.steps} paired steps; range {low:.2f}-{high:.2f}; goal >= 1.0)")


if __name__ == "__main__":
    main()
