"""Inference (Chapter 15, survey sections 3.2-3.4 and 5): decoding with a key/value cache and sampling.

    from reference.inference import generate, stream, KVCache
    out = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=20, temperature=0.7, top_p=0.9)

Modules: `generate` (the cache and the decoding loop), `sampling` (SamplingParams and the logits
processors), `beam` (beam search), `flash` (FlashAttention in PyTorch), `speculative` (speculative
decoding), `offload` (layer-by-layer execution under a memory budget), `parallel` (tensor-parallel
decoding), `measure` (the chapter's measurements command), `chat` (chat sessions).
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
