"""Inference (Chapter 15, survey section 5): decoding with a key/value cache and sampling.

    from reference.inference import generate, stream, KVCache
    out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=20, temperature=0.7, top_p=0.9)
"""

from reference.inference.generate import (
    Generation,
    KVCache,
    LayerKVCache,
    Step,
    check_sampling,
    generate,
    next_token_probs,
    sample,
    stream,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "Generation", "KVCache", "LayerKVCache", "Step", "check_sampling", "generate", "next_token_probs", "sample",
    "stream", "top_k_filter", "top_p_filter",
]  # fmt: skip
