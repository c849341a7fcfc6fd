"""Paged engine with continuous batching against static batching, and against `transformers`' generate.

A thin wrapper of `python -m reference.serving.benchmark` (see its docstring): prints the
throughput ratio (goal >= 2x), the KV cache waste (goal < 4%) and the engine-vs-transformers
comparison, and writes chapters/results/16_serving.json.

    python benchmarks/bench_serving.py [--requests 64] [--batch 16] [--rates 4 8 16] [--out FILE]
"""

from reference.serving.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
