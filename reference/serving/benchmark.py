"""Continuous batching on a paged cache against static batching, and the engine against `transformers`.

    python -m reference.serving.benchmark [--requests 64] [--batch 16] [--rates 4 8 16] [--out FILE]

One process, one model (llama-tiny by default), the same workload of mixed prompt and output
lengths (every request decodes exactly its own max_tokens: `ignore_eos`, so both systems do the
same useful work):
- *static batching*: requests in arrival order, `--batch` at a time, through Chapter 15's
  `generate`; a batch ends when its longest request does, and its contiguous cache reserves
  (batch, longest prompt + longest output) slots;
- *the paged engine*: `LLMEngine` with the same `max_num_seqs`, blocks of 16.
It reports useful tokens per second of each and their ratio, the KV slots holding a token state
against the slots reserved (averaged over steps), for the engine, for static batching and for a
naive server that reserves prompt + max_tokens per request; latency against request rate (Poisson
arrivals); and the engine's greedy decoding against `transformers`' `generate` on the same weights
(`reference.models.hf.to_hf`). Writes JSON (seed, configuration, machine) to `--out`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.runtime import machine_info, pick_device, write_json
from reference.serving.engine import LLMEngine

DEFAULT_OUT = "chapters/results/16_serving.json"


def workload(num_requests: int, context: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens) pairs of mixed lengths: prompts 8 .. context/2, outputs drawn
    log-uniformly between 4 and context/2 (most short, a few long, as in chat), so that any
    prompt and any output fit one context together (what a static batch needs)."""
    rng = random.Random(seed)
    work = []
    for _ in range(num_requests):
        prompt = rng.randint(8, context // 2)
        longest = context // 2
        out = int(round(4 * (longest / 4) ** rng.random()))
        work.append(([rng.randrange(4, vocab) for _ in range(prompt)], max(1, min(out, longest))))
    return work


def run_static(model, work, batch: int) -> dict:
    """Static batching with the contiguous cache; the time, the tokens and the KV slots used/reserved."""
    start, used_sum, reserved_sum = time.perf_counter(), 0.0, 0.0
    for i in range(0, len(work), batch):
        chunk = work[i : i + batch]
        longest_out = max(m for _, m in chunk)
        width = max(len(p) for p, _ in chunk)
        generate(model, [p for p, _ in chunk], longest_out)
        reserved = len(chunk) * (width + longest_out)
        for t in range(1, longest_out + 1):  # per step: the states that belong to live requests
            used_sum += sum(len(p) + min(t, m) for p, m in chunk)
            reserved_sum += reserved
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, tokens=sum(m for _, m in work), tokens_per_s=sum(m for _, m in work) / seconds,
                kv_used_fraction=used_sum / reserved_sum)  # fmt: skip


def run_engine(model, work, batch: int, block_size: int = 16, arrivals: list[float] | None = None) -> dict:
    """The paged engine on the workload (all at once, or at `arrivals` seconds); time, tokens, KV
    slots used/allocated per step (paged) and used/reserved for prompt + max_tokens (naive)."""
    blocks = batch * -(-model.context_length // block_size)
    engine = LLMEngine(model, block_size=block_size, num_blocks=blocks, max_num_seqs=batch)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in work]
    used = allocated = naive = 0
    latencies, pending = [], list(range(len(work)))
    start = time.perf_counter()
    added: dict = {}
    while pending or engine.has_unfinished_requests():
        now = time.perf_counter() - start
        while pending and (arrivals is None or arrivals[pending[0]] <= now):
            i = pending.pop(0)
            added[engine.add_request(work[i][0], params[i])] = (i, now if arrivals is None else arrivals[i])
        if not engine.has_unfinished_requests():
            time.sleep(0.001)
            continue
        for out in engine.step():
            if out.finished:
                latencies.append(time.perf_counter() - start - added[out.request_id][1])
        usage = engine.block_manager.usage()
        used += usage["used"]
        allocated += usage["allocated"]
        naive += sum(len(g.seqs[0].prompt) + g.params.max_tokens for g in engine.scheduler.running)
    seconds = time.perf_counter() - start
    tokens = sum(m for _, m in work)
    return dict(seconds=seconds, tokens=tokens, tokens_per_s=tokens / seconds, steps=engine.stats["steps"],
                kv_used_fraction=used / max(allocated, 1), naive_used_fraction=used / max(naive, 1),
                mean_latency_s=statistics.mean(latencies), p90_latency_s=sorted(latencies)[int(0.9 * (len(latencies) - 1))])  # fmt: skip


def run_static_arrivals(model, work, batch: int, arrivals: list[float]) -> dict:
    """Static batching under arrivals: a batch takes whatever has arrived (up to `batch`) when the last one ends."""
    start, latencies, i = time.perf_counter(), [], 0
    while i < len(work):
        now = time.perf_counter() - start
        if arrivals[i] > now:
            time.sleep(arrivals[i] - now)
            now = arrivals[i]
        j = i + 1
        while j < len(work) and j - i < batch and arrivals[j] <= now:
            j += 1
        chunk = work[i:j]
        generate(model, [p for p, _ in chunk], max(m for _, m in chunk))
        done = time.perf_counter() - start
        latencies += [done - arrivals[k] for k in range(i, j)]
        i = j
    seconds = time.perf_counter() - start
    tokens = sum(m for _, m in work)
    return dict(seconds=seconds, tokens_per_s=tokens / seconds, mean_latency_s=statistics.mean(latencies),
                p90_latency_s=sorted(latencies)[int(0.9 * (len(latencies) - 1))])  # fmt: skip


def against_transformers(model, prompts: list[list[int]], new_tokens: int) -> dict:
    """Greedy decoding of the same prompts by the engine and by `transformers`' generate."""
    from reference.models.hf import to_hf

    hf = to_hf(model)
    hf.config._attn_implementation = "sdpa"
    hf.generation_config.eos_token_id = None
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    engine = LLMEngine(model, num_blocks=len(prompts) * -(-model.context_length // 16), max_num_seqs=len(prompts))
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    times = {"engine": [], "transformers": []}
    for repeat in range(3):
        t = time.perf_counter()
        ours = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
        times["engine"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            theirs = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=0)[:, width:].tolist()  # fmt: skip
        times["transformers"].append(time.perf_counter() - t)
    total = len(prompts) * new_tokens
    e, h = statistics.median(times["engine"]), statistics.median(times["transformers"])
    return dict(batch=len(prompts), new_tokens=new_tokens, engine_tokens_per_s=total / e,
                transformers_tokens_per_s=total / h, engine_over_transformers=h / e, same_tokens=ours == theirs)


def run(model_name: str = "llama-tiny", requests: int = 64, batch: int = 16, rates=(4.0, 8.0, 16.0),
        rate_requests: int = 32, seed: int = 0, hf_batch: int = 8, hf_tokens: int = 32) -> dict:  # fmt: skip
    from reference.pretrained import load_pretrained

    torch.manual_seed(seed)
    device = pick_device("cpu")
    model, _ = load_pretrained(model_name)
    model = model.to(device).eval()
    work = workload(requests, model.context_length, model.config["vocab_size"], seed)
    run_engine(model, work[:4], batch)  # warm-up
    static = run_static(model, work, batch)
    paged = run_engine(model, work, batch)
    paged8 = run_engine(model, work, batch, block_size=8)
    sweep = []
    rng = random.Random(seed + 1)
    for rate in rates:
        w = workload(rate_requests, model.context_length, model.config["vocab_size"], seed + int(rate))
        t, arrivals = 0.0, []
        for _ in w:
            t += rng.expovariate(rate)
            arrivals.append(t)
        e = run_engine(model, w, batch, arrivals=arrivals)
        s = run_static_arrivals(model, w, batch, arrivals)
        sweep.append(dict(rate=rate, engine=e, static=s))
    prompts = [p[:48] for p, _ in work[:hf_batch]]
    hf = against_transformers(model, prompts, hf_tokens)
    return dict(
        command="python -m reference.serving.benchmark", seed=seed,
        config=dict(model=model_name, requests=requests, batch=batch, rates=list(rates), rate_requests=rate_requests,
                    block_size=16, hf_batch=hf_batch, hf_tokens=hf_tokens),
        machine=machine_info(device), static=static, paged=paged, paged_block8=paged8,
        throughput_ratio=paged["tokens_per_s"] / static["tokens_per_s"],
        kv_waste=dict(paged=1 - paged["kv_used_fraction"], paged_block8=1 - paged8["kv_used_fraction"],
                      static=1 - static["kv_used_fraction"], naive_max_reservation=1 - paged["naive_used_fraction"]),
        rate_sweep=sweep, transformers=hf,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-tiny")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rates", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    parser.add_argument("--rate-requests", type=int, default=32)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--hf-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    r = run(args.model, args.requests, args.batch, tuple(args.rates), args.rate_requests, args.seed, args.hf_batch, args.hf_tokens)
    print(f"{args.model}, {args.requests} requests of mixed lengths, batch {args.batch}")
    print(f"static batching: {r['static']['tokens_per_s']:8.1f} tok/s   paged engine: {r['paged']['tokens_per_s']:8.1f} tok/s"
          f"   ratio {r['throughput_ratio']:.2f}x (goal >= 2)")  # fmt: skip
    w = r["kv_waste"]
    print(f"KV waste: paged (blocks of 16) {w['paged']:.1%} (goal < 4%), blocks of 8 {w['paged_block8']:.1%}, "
          f"static batch {w['static']:.1%}, naive prompt+max_tokens reservation {w['naive_max_reservation']:.1%}")
    for row in r["rate_sweep"]:
        print(f"rate {row['rate']:5.1f}/s: engine {row['engine']['tokens_per_s']:7.1f} tok/s, mean latency "
              f"{row['engine']['mean_latency_s']:.2f}s | static {row['static']['tokens_per_s']:7.1f} tok/s, "
              f"{row['static']['mean_latency_s']:.2f}s")  # fmt: skip
    h = r["transformers"]
    print(f"engine vs transformers generate (batch {h['batch']}, {h['new_tokens']} tokens): {h['engine_tokens_per_s']:.1f} vs "
          f"{h['transformers_tokens_per_s']:.1f} tok/s ({h['engine_over_transformers']:.2f}x), same tokens: {h['same_tokens']}")
    path = write_json(args.out, r)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
