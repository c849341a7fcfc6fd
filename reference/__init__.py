"""Understanding LLMs: the course's reference implementations.

One module (or subpackage) per idea, in the order of the course's chapters; see `README.md` for
the chapter table. Submodules are imported on demand, e.g. `from reference.attention import
scaled_dot_product_attention`.
"""

__version__ = "0.1.0"


def load_pretrained(name: str):
    """The course's own pretrained model `name` ("llama-tiny" or "bert-tiny") and its tokenizer;
    see `reference.pretrained.load_pretrained`."""
    from reference.pretrained import load_pretrained as load

    return load(name)
