"""Mixed precision on a GPU: fp32 vs bf16 vs fp16 training steps, and copies hidden on a side stream.

GPU only (the point is the tensor cores); without CUDA it prints why and exits with status 0.

1. A matmul-heavy training step (a TransformerLM of d_model 1024, 8 layers, batch 8 x 512, AdamW):
   fp32 (TF32 off), bf16 autocast, and fp16 autocast with `torch.amp.GradScaler`; the median time
   per step and each as a ratio of fp32's, measured in interleaved rounds in one process.
2. Overlap of host-to-device copies with compute: a pinned 256 MiB copy and a chain of matmuls, run
   one after the other on the default stream, then with the copy on a side stream; the overlap
   fraction is (t_sequential - t_overlapped) / t_copy.

    python benchmarks/bench_precision.py [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from reference.models.llama import TransformerLM
from reference.runtime import machine_info, time_interleaved
from reference.training.numerics import AdamW, cross_entropy


def training_steps(device: torch.device, rounds: int) -> dict[str, float]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    vocab = 8192
    ids = torch.randint(0, vocab, (8, 513), device=device)
    setups = {}
    for name in ("fp32", "bf16_autocast", "fp16_autocast"):
        model = TransformerLM(vocab_size=vocab, context_length=512, d_model=1024, num_layers=8, num_heads=16, d_ff=2816).to(device)
        optimizer = AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda") if name == "fp16_autocast" else None
        dtype = {"bf16_autocast": torch.bfloat16, "fp16_autocast": torch.float16}.get(name)

        def step(model=model, optimizer=optimizer, scaler=scaler, dtype=dtype) -> None:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)

        setups[name] = step
    samples = time_interleaved(setups, rounds=rounds, warmup=2, sync=torch.cuda.synchronize)
    return {name: statistics.median(values) for name, values in samples.items()}


def copy_overlap(device: torch.device, rounds: int) -> dict[str, float]:
    host = torch.empty(64 * 2**20, dtype=torch.float32).pin_memory()  # 256 MiB
    target = torch.empty_like(host, device=device)
    a = torch.randn(4096, 4096, device=device)
    side = torch.cuda.Stream(device)

    def compute() -> None:
        x = a
        for _ in range(20):
            x = x @ a
            x = x / x.norm()

    def copy() -> None:
        target.copy_(host, non_blocking=True)

    def sequential() -> None:
        copy()
        compute()

    def overlapped() -> None:
        with torch.cuda.stream(side):
            copy()
        compute()
        torch.cuda.current_stream(device).wait_stream(side)

    samples = time_interleaved({"compute": compute, "copy": copy, "sequential": sequential, "overlapped": overlapped},
                               rounds=rounds, warmup=2, sync=torch.cuda.synchronize)
    t = {name: statistics.median(values) for name, values in samples.items()}
    t["overlap_fraction"] = (t["sequential"] - t["overlapped"]) / t["copy"]
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_precision: skipped, this machine has no CUDA GPU (the comparison is about tensor cores)")
        return 0
    device = torch.device("cuda")
    steps = training_steps(device, args.steps)
    overlap = copy_overlap(device, args.steps)
    print(f"{'precision':14} {'ms/step':>8} {'vs fp32':>8}")
    for name, seconds in steps.items():
        print(f"{name:14} {1000 * seconds:8.1f} {steps['fp32'] / seconds:7.2f}x")
    print(f"copy 256 MiB: {1000 * overlap['copy']:.1f} ms, compute {1000 * overlap['compute']:.1f} ms, "
          f"sequential {1000 * overlap['sequential']:.1f} ms, side stream {1000 * overlap['overlapped']:.1f} ms: "
          f"overlap fraction {overlap['overlap_fraction']:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"steps_s": steps, "copy_overlap": overlap, "machine": machine_info(device)}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
