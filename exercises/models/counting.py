"""Exercise for Chapter 5: counting a LLaMA-style model's parameters in closed form.

Fill in the body that raises NotImplementedError. Grade with `llm-course grade 5`. Mirrors
`reference/models/counting.py`.
"""

from __future__ import annotations


def llama_parameter_count(
    vocab_size: int, d_model: int, num_layers: int, num_heads: int, d_ff: int,
    num_kv_heads: int | None = None, tie_embeddings: bool = False,
) -> dict[str, int]:
    """Closed-form parameter count of `TransformerLM`, by component.

    Per layer: attention d * h * d_h (q) + 2 * d * kv * d_h (k, v) + h * d_h * d (output), with
    d_h = d / h; SwiGLU 3 * d * d_ff; two RMSNorm scales 2 * d. Plus the token table V * d, the final
    norm d, and an untied output layer V * d.

    Returns:
        {"embeddings", "attention", "feed_forward", "norms", "head"} -> number of parameters.
    """
    # Hint: count one layer (attention with its smaller key/value projections under GQA, three SwiGLU matrices,
    # two norm scales), multiply by the layers, then add what sits outside them; a tied head adds nothing.
    raise NotImplementedError("Exercise 5.8: closed-form parameter count")

