"""The paged engine against static batching under one KV memory budget, as the vLLM paper compares them.

    python -m reference.serving.benchmark [--requests 64] [--kv-budget-tokens 8192] [--out FILE]

Kwon et al., 2023 (SOSP), sections 2.3 and 6: systems that keep each request's KV cache contiguous
must reserve the longest it may become (prompt + max_tokens) when the request is admitted; in a
fixed KV memory budget they fit fewer requests at once, and most of what they reserve holds no token
state for most of the time. A paged cache allocates a block when a sequence needs it. One process,
one model, one workload and one budget of KV memory (`--kv-budget-tokens` token slots, stated in
bytes in the results) for every system:

- *static batching* (FasterTransformer-style): requests in arrival order form a batch while their
  reservations (prompt + max_tokens each) fit the budget; the batch runs through Chapter 15's
  `generate` until its longest request ends, and only then is the next batch formed;
- *continuous batching with reservation* (Orca-style, with max_tokens as the reservation: the
  paper's "Orca (Oracle)" when outputs have their exact lengths): `LLMEngine` steps every
  iteration, but a request is admitted only while the reservations of the unfinished ones fit;
- *the paged engine*: `LLMEngine` whose block pool is the budget (blocks of 16, and of 8), which
  admits while blocks are free and preempts by recomputation when they run out.

The workload: `--requests` requests with prompt and output lengths drawn (seeded) from log-normal
distributions with ShareGPT's means (161 prompt and 338 output tokens, the paper's figure 11), each
request decoding exactly its own max_tokens (`ignore_eos`, as vLLM's throughput benchmark does), so
that all systems do the same useful work. The model: by default a randomly initialised course
`TransformerLM` with llama-tiny's shape and a 2,048-token context (with fixed output lengths the
weights change neither the work nor the memory; llama-tiny's own 256-token context would keep every
sequence shorter than ShareGPT's).

It reports useful (output) tokens per second of each system, per CPU second of the process (torch
runs one thread, so this is what a core of its own would give; the headline ratio) and per
wall-clock second (which on a shared machine also counts other jobs' turns), and the ratios; KV memory waste,
(allocated slots - slots holding a token state) / allocated slots, summed over the steps
(sampled after each step) before dividing, for each system; throughput and latency against request
rate (Poisson arrivals); and the engine's greedy decoding against `transformers`' `generate` on the
same weights (`reference.models.hf.to_hf`). Writes JSON (seed, configuration, machine) to `--out`.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

import torch

from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.runtime import machine_info, pick_device, write_json
from reference.serving.engine import LLMEngine

DEFAULT_OUT = "chapters/results/16_serving.json"
SHAREGPT_MEANS = (161.0, 338.0)  # mean prompt and output tokens of ShareGPT (Kwon et al., 2023, fig. 11)
RANDOM_MODEL = "random-llama-tiny"  # llama-tiny's shape, random weights, a longer context


def workload(num_requests: int, vocab: int, seed: int = 0, *, prompt_mean: float = SHAREGPT_MEANS[0],
             output_mean: float = SHAREGPT_MEANS[1], sigma: float = 1.0, max_prompt: int = 1024,
             max_output: int = 1024) -> list[tuple[list[int], int]]:  # fmt: skip
    """(prompt ids, max_tokens) pairs: lengths log-normal with the given means (before clipping)
    and log-standard deviation `sigma`, rounded and clipped to [4, max_prompt] and [4, max_output];
    prompt ids uniform in [4, vocab)."""
    rng = random.Random(seed)
    mu_p, mu_o = math.log(prompt_mean) - sigma**2 / 2, math.log(output_mean) - sigma**2 / 2
    work = []
    for _ in range(num_requests):
        prompt = min(max(round(rng.lognormvariate(mu_p, sigma)), 4), max_prompt)
        out = min(max(round(rng.lognormvariate(mu_o, sigma)), 4), max_output)
        work.append(([rng.randrange(4, vocab) for _ in range(prompt)], out))
    return work


def _latency(latencies: list[float], work, order) -> dict:
    """Mean and p90 latency (s) and the paper's normalized latency: mean of latency / output tokens (s/token)."""
    return dict(mean_latency_s=statistics.mean(latencies), p90_latency_s=sorted(latencies)[int(0.9 * (len(latencies) - 1))],
                normalized_latency_s_per_token=statistics.mean(l / work[i][1] for l, i in zip(latencies, order)))  # fmt: skip


def static_batches(work, budget: int, start: int = 0, arrived: int | None = None) -> int:
    """End index of the next static batch from `start`: requests in order while their reservations
    (prompt + max_tokens) fit `budget` token slots (at least one), among the first `arrived`."""
    end, reserved, limit = start, 0, len(work) if arrived is None else arrived
    while end < limit and (end == start or reserved + len(work[end][0]) + work[end][1] <= budget):
        reserved += len(work[end][0]) + work[end][1]
        end += 1
    return end


def run_static(model, work, budget: int, arrivals: list[float] | None = None) -> dict:
    """Static batching (see the module docstring): time, tokens, batch sizes, latency, KV waste.

    KV accounting per decoding step t of a batch: reserved = sum of prompt + max_tokens of its
    requests (held until the batch ends), used = sum of prompt + min(t, max_tokens) - 1 (the
    states written so far; a finished request's states stay until the batch ends). `kv_waste_live`
    counts only the states of unfinished requests as used (what the held states of finished ones
    serve: nothing). `padded_peak_slots`: what Chapter 15's contiguous cache actually allocates
    for the largest batch, batch x (longest prompt + longest output), which may exceed the budget:
    the accounting charges static batching only its reservations, the kinder measure."""
    start, cpu, i, latencies, order, sizes = time.perf_counter(), time.process_time(), 0, [], [], []
    used = live = reserved = steps = padded = 0
    while i < len(work):
        now = time.perf_counter() - start
        if arrivals is not None and arrivals[i] > now:
            time.sleep(arrivals[i] - now)
            now = arrivals[i]
        arrived = None if arrivals is None else sum(1 for a in arrivals if a <= now)
        j = static_batches(work, budget, i, arrived)
        chunk = work[i:j]
        longest = max(m for _, m in chunk)
        generate(model, [p for p, _ in chunk], longest)
        done = time.perf_counter() - start
        latencies += [done - (0.0 if arrivals is None else arrivals[k]) for k in range(i, j)]
        order += range(i, j)
        sizes.append(len(chunk))
        hold = sum(len(p) + m for p, m in chunk)
        # sum over t = 1 .. longest of prompt + min(t, m) - 1, in closed form
        used += sum((len(p) - 1) * longest + m * (m + 1) // 2 + (longest - m) * m for p, m in chunk)
        live += sum(len(p) * m + m * (m - 1) // 2 for p, m in chunk)  # sum over t = 1 .. m of prompt + t - 1
        reserved += hold * longest
        steps += longest
        padded = max(padded, len(chunk) * (max(len(p) for p, _ in chunk) + longest))
        i = j
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(m for _, m in work)
    return dict(seconds=seconds, cpu_seconds=cpu, tokens=tokens, tokens_per_s=tokens / seconds, tokens_per_cpu_s=tokens / cpu,
                steps=steps, batches=len(sizes),
                mean_batch=statistics.mean(sizes), kv_waste=1 - used / reserved, kv_waste_live=1 - live / reserved,
                padded_peak_slots=padded,
                **_latency(latencies, work, order))  # fmt: skip


def run_engine(model, work, budget: int, *, block_size: int = 16, reserve: bool = False,
               arrivals: list[float] | None = None, max_num_seqs: int = 256) -> dict:  # fmt: skip
    """`LLMEngine` on the workload (all at once, or at `arrivals` seconds).

    reserve=False (paged): the pool is the budget, budget // block_size blocks; KV accounting per
    step from `BlockManager.usage()` (used = slots holding a token state, allocated = slots of
    allocated blocks). reserve=True (Orca-style): a request is handed to the engine only while the
    reservations (prompt + max_tokens) of the unfinished requests fit the budget; the pool is large
    enough never to bind; allocated = those reservations. The accounting's own time is not counted."""
    blocks = budget // block_size + (max_num_seqs * -(-model.context_length // block_size) if reserve else 0)
    engine = LLMEngine(model, block_size=block_size, num_blocks=blocks, max_num_seqs=max_num_seqs)
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in work]
    used = allocated = 0
    latencies, order, batch_sizes, pending, added = [], [], [], 0, {}
    held, accounting, accounting_cpu = 0, 0.0, 0.0  # reserved slots of the unfinished requests; seconds spent measuring
    start, cpu = time.perf_counter(), time.process_time()
    while pending < len(work) or engine.has_unfinished_requests():
        now = time.perf_counter() - start - accounting  # the clock without the accounting
        while pending < len(work) and (arrivals is None or arrivals[pending] <= now):
            need = len(work[pending][0]) + work[pending][1]
            if reserve and held + need > budget:
                break
            if reserve:
                held += need
            added[engine.add_request(work[pending][0], params[pending])] = pending
            pending += 1
        if not engine.has_unfinished_requests():
            time.sleep(0.001)
            continue
        for out in engine.step():
            if out.finished:
                k = added[out.request_id]
                latencies.append(time.perf_counter() - start - accounting - (0.0 if arrivals is None else arrivals[k]))
                order.append(k)
                if reserve:
                    held -= len(work[k][0]) + work[k][1]
        t, c = time.perf_counter(), time.process_time()
        usage = engine.block_manager.usage()
        used += usage["used"]
        allocated += held if reserve else usage["allocated"]
        batch_sizes.append(engine.scheduler.num_running_seqs())
        accounting += time.perf_counter() - t
        accounting_cpu += time.process_time() - c
    seconds, cpu = time.perf_counter() - start - accounting, time.process_time() - cpu - accounting_cpu
    tokens = sum(m for _, m in work)
    return dict(seconds=seconds, cpu_seconds=cpu, tokens=tokens, tokens_per_s=tokens / seconds, tokens_per_cpu_s=tokens / cpu,
                steps=engine.stats["steps"],
                mean_batch=statistics.mean(batch_sizes), max_batch=max(batch_sizes),
                preemptions=engine.stats["preemptions"], prefill_tokens=engine.stats["prefill_tokens"],
                decode_tokens=engine.stats["decode_tokens"], kv_waste=1 - used / max(allocated, 1),
                **_latency(latencies, work, order))  # fmt: skip


def against_transformers(model, prompts: list[list[int]], new_tokens: int) -> dict:
    """Greedy decoding of the same prompts by the engine and by `transformers`' generate."""
    from reference.models.hf import to_hf

    hf = to_hf(model)
    hf.config._attn_implementation = "sdpa"
    hf.generation_config.eos_token_id = None
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    engine = LLMEngine(model, num_blocks=len(prompts) * -(-(width + new_tokens) // 16), max_num_seqs=len(prompts))
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


def build_model(name: str, context: int, seed: int):
    """The benchmark's model: RANDOM_MODEL (llama-tiny's configuration, `context` positions,
    weights from `init_weights` under `seed`) or a `load_pretrained` name."""
    from reference.pretrained import load_pretrained

    if name == RANDOM_MODEL:
        from reference.models.llama import TransformerLM

        shape = dict(load_pretrained("llama-tiny")[0].config)
        shape["context_length"] = context
        torch.manual_seed(seed)
        return TransformerLM(**shape).eval()
    return load_pretrained(name)[0].eval()


def run(model_name: str = RANDOM_MODEL, requests: int = 64, budget: int = 8192, rates=(0.25, 0.5, 1.0),
        rate_requests: int = 16, seed: int = 0, hf_batch: int = 8, hf_tokens: int = 32, context: int = 2048,
        sigma: float = 1.0, max_num_seqs: int = 256, means: tuple[float, float] = SHAREGPT_MEANS) -> dict:  # fmt: skip
    device = pick_device("cpu")
    model = build_model(model_name, context, seed).to(device)
    cfg = model.config
    vocab, context = cfg["vocab_size"], model.context_length
    limit = min(1024, context // 2)
    work = workload(requests, vocab, seed, prompt_mean=means[0], output_mean=means[1], sigma=sigma, max_prompt=limit,
                    max_output=limit)
    if budget < 2 * limit:
        raise ValueError(f"--kv-budget-tokens {budget} cannot hold one request of {2 * limit} tokens")
    bytes_per_slot = 2 * cfg["num_layers"] * (cfg.get("num_kv_heads") or cfg["num_heads"]) * (cfg["d_model"] // cfg["num_heads"]) \
        * next(model.parameters()).element_size()  # fmt: skip
    run_engine(model, work[:4], budget, max_num_seqs=max_num_seqs)  # warm-up
    static = run_static(model, work, budget)
    reserved = run_engine(model, work, budget, reserve=True, max_num_seqs=max_num_seqs)
    paged = run_engine(model, work, budget, max_num_seqs=max_num_seqs)
    paged8 = run_engine(model, work, budget, block_size=8, max_num_seqs=max_num_seqs)
    sweep = []
    for rate in rates:
        w = workload(rate_requests, vocab, seed + 1 + int(10 * rate), prompt_mean=means[0], output_mean=means[1], sigma=sigma,
                     max_prompt=limit, max_output=limit)
        rng, t, arrivals = random.Random(seed + 1000 + int(10 * rate)), 0.0, []
        for _ in w:
            t += rng.expovariate(rate)
            arrivals.append(t)
        e = run_engine(model, w, budget, arrivals=arrivals, max_num_seqs=max_num_seqs)
        s = run_static(model, w, budget, arrivals=arrivals)
        sweep.append(dict(rate=rate, engine=e, static=s))
    prompts = [p[:48] for p, _ in work[:hf_batch]]
    hf = against_transformers(model, prompts, hf_tokens)
    lengths = dict(prompt_mean=statistics.mean(len(p) for p, _ in work), output_mean=statistics.mean(m for _, m in work),
                   prompt_max=max(len(p) for p, _ in work), output_max=max(m for _, m in work))  # fmt: skip
    return dict(
        command="python -m reference.serving.benchmark", seed=seed,
        config=dict(model=model_name, model_config=dict(cfg), requests=requests, kv_budget_tokens=budget,
                    kv_budget_bytes=budget * bytes_per_slot, kv_bytes_per_token=bytes_per_slot,
                    lengths=f"log-normal, means {means[0]:g} prompt and {means[1]:g} output tokens (ShareGPT's: "
                            f"{SHAREGPT_MEANS[0]:g}, {SHAREGPT_MEANS[1]:g}), clipped to [4, {limit}]",
                    prompt_mean=means[0], output_mean=means[1],
                    sigma=sigma, max_num_seqs=max_num_seqs, rates=list(rates), rate_requests=rate_requests,
                    hf_batch=hf_batch, hf_tokens=hf_tokens),
        machine=machine_info(device), workload=lengths,
        static=static, continuous_reserved=reserved, paged=paged, paged_block8=paged8,
        # torch runs one thread: CPU seconds are what a core of its own would take; wall-clock seconds on a
        # shared machine also count the other jobs' turns, which differ from one system's run to the next
        throughput_ratio=paged["tokens_per_cpu_s"] / static["tokens_per_cpu_s"],
        throughput_ratio_wall=paged["tokens_per_s"] / static["tokens_per_s"],
        throughput_ratio_over_reserved=paged["tokens_per_cpu_s"] / reserved["tokens_per_cpu_s"],
        steps_ratio=static["steps"] / paged["steps"],
        kv_waste=dict(paged=paged["kv_waste"], paged_block8=paged8["kv_waste"], static=static["kv_waste"],
                      continuous_reserved=reserved["kv_waste"]),
        rate_sweep=sweep, transformers=hf,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=RANDOM_MODEL, help=f"{RANDOM_MODEL} or a load_pretrained name")
    parser.add_argument("--context", type=int, default=2048, help=f"context of {RANDOM_MODEL}")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--kv-budget-tokens", type=int, default=8192, help="KV memory of every system, in token slots")
    parser.add_argument("--sigma", type=float, default=1.0, help="log-standard deviation of the lengths")
    parser.add_argument("--prompt-mean", type=float, default=SHAREGPT_MEANS[0], help="mean prompt tokens (ShareGPT's)")
    parser.add_argument("--output-mean", type=float, default=SHAREGPT_MEANS[1], help="mean output tokens (ShareGPT's)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="requests per second")
    parser.add_argument("--rate-requests", type=int, default=16)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--hf-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    r = run(args.model, args.requests, args.kv_budget_tokens, tuple(args.rates), args.rate_requests, args.seed,
            args.hf_batch, args.hf_tokens, args.context, args.sigma, args.max_num_seqs,
            (args.prompt_mean, args.output_mean))  # fmt: skip
    c, w, s, o, p = r["config"], r["workload"], r["static"], r["continuous_reserved"], r["paged"]
    print(f"{c['model']}, {c['requests']} requests (mean prompt {w['prompt_mean']:.0f}, mean output {w['output_mean']:.0f} tokens), "
          f"KV budget {c['kv_budget_tokens']} token slots = {c['kv_budget_bytes'] / 2**20:.1f} MiB")
    print(f"static batching (reserve prompt+max_tokens): {s['tokens_per_s']:7.1f} tok/s ({s['tokens_per_cpu_s']:6.1f} per CPU s), mean batch {s['mean_batch']:.1f}, {s['steps']} steps")
    print(f"continuous, reserving (Orca-style):          {o['tokens_per_s']:7.1f} tok/s ({o['tokens_per_cpu_s']:6.1f} per CPU s), mean batch {o['mean_batch']:.1f}, {o['steps']} steps")
    print(f"paged engine (blocks of 16):                 {p['tokens_per_s']:7.1f} tok/s ({p['tokens_per_cpu_s']:6.1f} per CPU s), mean batch {p['mean_batch']:.1f}, {p['steps']} steps, "
          f"{p['preemptions']} preemptions")
    print(f"throughput ratio paged / static {r['throughput_ratio']:.2f}x per CPU second (goal >= 2; wall clock "
          f"{r['throughput_ratio_wall']:.2f}x), paged / Orca-style {r['throughput_ratio_over_reserved']:.2f}x; "
          f"static steps / paged steps {r['steps_ratio']:.2f}")
    print(f"paged prefill tokens {p['prefill_tokens']} for prompts of {round(w['prompt_mean'] * c['requests'])} tokens in all "
          f"(the rest is recomputation after {p['preemptions']} preemptions)")
    k = r["kv_waste"]
    print(f"KV waste (time-averaged): paged blocks of 16 {k['paged']:.1%} (goal < 4%), blocks of 8 {k['paged_block8']:.1%}, "
          f"static {k['static']:.1%} ({s['kv_waste_live']:.1%} counting finished requests' states as waste), "
          f"Orca-style {k['continuous_reserved']:.1%}")
    for row in r["rate_sweep"]:
        e, st = row["engine"], row["static"]
        print(f"rate {row['rate']:4.1f} req/s: paged {e['tokens_per_s']:6.1f} tok/s, {e['normalized_latency_s_per_token']:.3f} s/token | "
              f"static {st['tokens_per_s']:6.1f} tok/s, {st['normalized_latency_s_per_token']:.3f} s/token")  # fmt: skip
    h = r["transformers"]
    print(f"engine vs transformers generate (batch {h['batch']}, {h['new_tokens']} tokens): {h['engine_tokens_per_s']:.1f} vs "
          f"{h['transformers_tokens_per_s']:.1f} tok/s ({h['engine_over_transformers']:.2f}x), same tokens: {h['same_tokens']}")
    r["command"] = " ".join(["python -m reference.serving.benchmark", *(sys.argv[1:] if argv is None else argv)])
    r["benchmark_seconds"] = time.perf_counter() - started
    path = write_json(args.out, r)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
