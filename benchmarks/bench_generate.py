"""Decoding throughput of the course's generator against Hugging Face's `generate`, same model, same prompts.

`reference.inference.generate` (KV cache, `MultiHeadAttention(sdpa=True)`) runs the course's
`TransformerLM`; `transformers`' `LlamaForCausalLM.generate` (its DynamicCache, "sdpa" attention) runs
the same weights, copied by `reference.models.hf.to_hf` (or, with --hf-from-gguf, loaded by
transformers itself from the GGUF file: about a minute). Both decode greedily, exactly
--new-tokens tokens (no end-of-sequence stop), from the same chat prompts: batch 1, and batch 8
of different lengths, left-padded. They take turns repeat by repeat in one process, so the
machine's load falls on both alike; tokens/s counts new tokens only (prefill included in the time),
and the ratio is the median over repeats of Hugging Face's time / ours (> 1: ours is faster).

    python benchmarks/bench_generate.py [--model smollm2-135m-instruct|llama-tiny] [--new-tokens 64]
        [--repeats 3] [--batches 1 8] [--device cpu|cuda] [--hf-from-gguf]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reference import load_pretrained
from reference.inference import generate
from reference.inference.chat import render_chat
from reference.runtime import pick_device

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers.",
    "What does a compiler do?",
    "Give me a tip for learning to play the guitar, with an example of a first song to practise.",
    "Who wrote Hamlet?",
    "Describe a cat to someone who has never seen one.",
]


def hf_model_for(model, name: str, from_gguf: bool, device: torch.device):
    """Hugging Face's LlamaForCausalLM with the same weights as `model`, on `device`, sdpa attention."""
    if from_gguf:
        from transformers import LlamaForCausalLM

        from reference.pretrained import gguf_path

        path = gguf_path(name)
        hf = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa")
    else:
        from reference.models.hf import to_hf

        hf = to_hf(model)
        hf.config._attn_implementation = "sdpa"
    hf.generation_config.eos_token_id = None  # exactly --new-tokens tokens
    return hf.to(device).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default=None)
    parser.add_argument("--hf-from-gguf", action="store_true", help="load Hugging Face's model from the GGUF file itself")
    args = parser.parse_args()
    device = pick_device(args.device)
    model, tokenizer = load_pretrained(args.model)
    model = model.to(device).eval()
    hf = hf_model_for(model, args.model, args.hf_from_gguf, device)
    n = args.new_tokens
    print(f"{args.model} on {device} ({torch.get_num_threads()} threads), greedy, {n} new tokens, "
          f"median of {args.repeats} repeats after a warm-up")  # fmt: skip
    print(f"{'batch':>5} {'ours tok/s':>11} {'HF tok/s':>9} {'ours/HF':>8} {'same tokens':>12}")
    for batch in args.batches:
        prompts = [render_chat(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]) for i in range(batch)]
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        times: dict[str, list[float]] = {"ours": [], "hf": []}
        same = True
        for repeat in range(args.repeats + 1):
            for who in ("ours", "hf") if repeat % 2 else ("hf", "ours"):  # each goes first in turn
                synchronize(device)
                start = time.perf_counter()
                if who == "ours":
                    new = generate(model, prompts, n).new_tokens
                else:
                    with torch.no_grad():
                        out = hf.generate(input_ids=ids, attention_mask=attention, max_new_tokens=n,
                                          do_sample=False, pad_token_id=0)  # fmt: skip
                    theirs = out[:, width:].tolist()
                synchronize(device)
                if repeat:
                    times[who].append(time.perf_counter() - start)
            same = same and new == theirs
        ours_s, hf_s = statistics.median(times["ours"]), statistics.median(times["hf"])
        ratio = statistics.median(h / o for h, o in zip(times["hf"], times["ours"]))
        print(f"{batch:>5} {batch * n / ours_s:>11,.1f} {batch * n / hf_s:>9,.1f} {ratio:>8.2f} {'yes' if same else 'NO':>12}")
    print("goal: ours/HF >= 1.0 at batch 1")


if __name__ == "__main__":
    main()
