"""Chapter 15's measurements, written to chapters/results/15_efficient_inference.json.

    python -m reference.inference.measure            # the chapter's numbers (a few minutes on 2 cores)
    python -m reference.inference.measure --quick --out /tmp/15.json   # the shrunk run the tests use

What it measures, each on this machine (`machine` in the JSON):
  - time per generated token with and without the KV cache as the sequence grows (llama-tiny);
  - KV cache bytes per token: the formula against the allocated buffers (llama-tiny, SmolLM2-135M);
  - peak tensor memory of FlashAttention against standard attention as the sequence grows;
  - latency of the layer-by-layer offloaded model against its resident-bytes budget;
  - speculative decoding: acceptance rate, target forwards per token and wall-clock speed-up against
    plain greedy decoding (prompt-lookup and truncated drafts).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from reference import runtime
from reference.inference.flash import flash_attention, peak_tensor_bytes, standard_attention
from reference.inference.generate import KVCache, generate, kv_cache_bytes_per_token
from reference.inference.offload import OffloadedLM
from reference.inference.speculative import PromptLookupDraft, TruncatedDraft, speculative_generate

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "chapters" / "results" / "15_efficient_inference.json"
SEED = 0


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cache_timing(model, lengths, repeats: int) -> list[dict]:
    """Seconds per token of the last 8 tokens of a `length`-token generation, cached and uncached."""
    rows = []
    generate(model, [[1, 2, 3]], 4)  # warm-up
    for length in lengths:
        prompt = [[(7 * i) % 200 + 10 for i in range(length - 8)]]
        row = {"length": length}
        for use_cache in (True, False):
            seconds = _best(lambda: generate(model, prompt, 8, use_cache=use_cache), repeats)
            row["cached" if use_cache else "uncached"] = seconds / 8
        rows.append(row)
    return rows


def kv_memory(models: dict) -> list[dict]:
    rows = []
    for name, model in models.items():
        cfg = model.config
        head_dim = cfg["d_model"] // cfg["num_heads"]
        formula = kv_cache_bytes_per_token(cfg["num_layers"], cfg["num_kv_heads"], head_dim, torch.float32)
        cache = KVCache.for_model(model, batch=1, max_len=256)
        rows.append({"model": name, "layers": cfg["num_layers"], "kv_heads": cfg["num_kv_heads"], "head_dim": head_dim,
                     "formula_bytes_per_token": formula, "measured_bytes_per_token": cache.nbytes / 256})  # fmt: skip
    return rows


def flash_memory(lengths, head_dim: int = 64, block: int = 64) -> list[dict]:
    rows = []
    for n in lengths:
        q = torch.randn(1, 1, n, head_dim)
        with torch.no_grad():
            flash = peak_tensor_bytes(lambda: flash_attention(q, q, q, block_q=block, block_k=block))
            plain = peak_tensor_bytes(lambda: standard_attention(q, q, q))
        rows.append({"seq": n, "flash_bytes": flash, "standard_bytes": plain})
    return rows


def offload_latency(model, budgets_in_blocks, repeats: int) -> list[dict]:
    block = sum(p.numel() * p.element_size() for p in model.layers[0].parameters())
    ids = torch.tensor([[(5 * i) % 300 + 3 for i in range(32)]])
    with torch.no_grad():
        resident = _best(lambda: model(ids), repeats)
    rows = [{"budget_blocks": len(model.layers), "budget_bytes": None, "seconds": resident, "prefetch": None,
             "peak_resident_bytes": len(model.layers) * block, "resident": True}]  # fmt: skip
    for blocks in budgets_in_blocks:
        for prefetch in (False, True):
            off = OffloadedLM(copy.deepcopy(model), blocks * block, prefetch=prefetch)
            try:
                with torch.no_grad():
                    seconds = _best(lambda: off(ids), repeats)
                    assert torch.equal(off(ids), model(ids))
            finally:
                off.close()
            rows.append({"budget_blocks": blocks, "budget_bytes": blocks * block, "seconds": seconds, "prefetch": prefetch,
                         "peak_resident_bytes": off.peak_resident_bytes, "resident": False})  # fmt: skip
    return rows


def offload_gguf(model, path, budgets_in_blocks) -> list[dict]:
    """Forward latency of SmolLM2 with its blocks read from the GGUF file and dequantised on arrival."""
    from reference.inference.offload import GGUFLayerSource

    block = sum(p.numel() * p.element_size() for p in model.layers[0].parameters())
    ids = torch.tensor([[1, 504, 3458, 314, 253, 2355, 28, 411]])
    with torch.no_grad():
        expected = model(ids)
    rows = []
    source = GGUFLayerSource(path)
    for blocks in budgets_in_blocks:
        for prefetch in (False, True):
            off = OffloadedLM(copy.deepcopy(model), blocks * block, source=source, prefetch=prefetch)
            try:
                with torch.no_grad():
                    off(ids)  # first pass: every block is fetched once whatever the budget
                    start = time.perf_counter()
                    out = off(ids)
                    seconds = time.perf_counter() - start
            finally:
                off.close()
            rows.append({"budget_blocks": blocks, "budget_bytes": blocks * block, "prefetch": prefetch, "seconds": seconds,
                         "peak_resident_bytes": off.peak_resident_bytes, "max_abs_diff": (out - expected).abs().max().item()})  # fmt: skip
    return rows


def speculative(model, tokenizer, new_tokens: int, k: int) -> list[dict]:
    text = ("The cat sat on the mat. The dog sat on the rug. The cat sat on the mat. The dog sat on the")
    prompt = tokenizer.encode(text)
    start = time.perf_counter()
    baseline = generate(model, [prompt], new_tokens).new_tokens[0]
    base_seconds = time.perf_counter() - start
    rows = []
    drafts = {"prompt lookup": PromptLookupDraft(3), "truncated (1 of %d layers)" % len(model.layers): TruncatedDraft(model, 1)}
    for name, draft in drafts.items():
        start = time.perf_counter()
        result = speculative_generate(model, draft, prompt, new_tokens, k=k)
        seconds = time.perf_counter() - start
        rows.append({"draft": name, "k": k, "tokens": len(result.tokens), "same_as_greedy": result.tokens == baseline,
                     "acceptance_rate": result.acceptance_rate, "tokens_per_target_forward": result.tokens_per_forward,
                     "seconds": seconds, "greedy_seconds": base_seconds, "speedup": base_seconds / seconds})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the end-to-end test")
    args = parser.parse_args(argv)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    from reference.pretrained import load_pretrained

    tiny, tokenizer = load_pretrained("llama-tiny")
    quick = args.quick
    models = {"llama-tiny": tiny}
    if not quick:
        models["smollm2-135m-instruct"] = load_pretrained("smollm2-135m-instruct")[0]
    config = {
        "cache_lengths": [16, 32] if quick else [16, 64, 128, 192, 256],
        "flash_lengths": [64, 128] if quick else [128, 256, 512, 1024, 2048],
        "offload_budgets_in_blocks": [1, 2] if quick else [1, 2, 3, len(tiny.layers)],
        "speculative_new_tokens": 8 if quick else 48, "speculative_k": 4, "repeats": 1 if quick else 3,
    }  # fmt: skip
    lengths = [n for n in config["cache_lengths"] if n <= tiny.context_length]
    payload = {
        "seed": SEED,
        "config": config,
        "machine": runtime.machine_info("cpu"),
        "command": "python -m reference.inference.measure" + (" --quick" if quick else ""),
        "cache_timing": cache_timing(tiny, lengths, config["repeats"]),
        "kv_memory": kv_memory(models),
        "flash_memory": flash_memory(config["flash_lengths"]),
        "offload": offload_latency(tiny, config["offload_budgets_in_blocks"], config["repeats"]),
        "speculative": speculative(tiny, tokenizer, config["speculative_new_tokens"], config["speculative_k"]),
    }
    if not quick:
        from reference.pretrained import gguf_path

        smol = models["smollm2-135m-instruct"]
        config["offload_gguf_budgets_in_blocks"] = [2, 10, 20, len(smol.layers)]
        payload["offload_gguf"] = offload_gguf(smol, gguf_path("smollm2-135m-instruct"), config["offload_gguf_budgets_in_blocks"])
    return runtime.write_json(args.out, payload)


if __name__ == "__main__":
    print(main())
