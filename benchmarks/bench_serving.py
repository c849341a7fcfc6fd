"""The paged engine against static batching in one KV memory budget, and against `transformers`' generate.

A thin wrapper of `python -m reference.serving.benchmark` (see its docstring): in one process, on one
workload (ShareGPT-mean log-normal lengths, EOS ignored) and one budget of KV slots, it runs static
batching and Orca-style continuous batching (both reserving prompt + max_tokens per request) and the
paged engine (blocks of 16 and of 8), and prints the throughput ratios against static batching
(goal >= 2x), the KV memory waste averaged over steps (goal < 4% with blocks of 16), latency against
request rate, and the engine-vs-transformers comparison; writes chapters/results/16_serving.json.

    python benchmarks/bench_serving.py [--requests 64] [--kv-budget-tokens 8192] [--out FILE]
"""

from reference.serving.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
