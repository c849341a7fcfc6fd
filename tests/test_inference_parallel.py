"""Tensor-parallel decoding (`reference.inference.parallel`) on 2 gloo processes equals single-process decoding.

Machinery (the sharded model is Chapter 9's exercise; here it is the reference's). Oracle: the dense
model's `generate` in this process: the same greedy tokens, and the same seeded samples, logits to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from reference.distributed.launch import Cluster
from reference.inference import generate
from reference.inference.parallel import tensor_parallel_generate
from reference.pretrained import load_pretrained


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(2, backend="gloo", timeout=120)
    yield c
    c.close()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_two_process_decoding_equals_one_process(cluster, temperature):
    model, tokenizer = load_pretrained("llama-tiny")
    prompts = [tokenizer.encode("Once upon a time"), tokenizer.encode("The king")]
    seed = 3 if temperature else None
    results = tensor_parallel_generate(model, prompts, 12, seed=seed, cluster=cluster, temperature=temperature)
    single = generate(model, prompts, 12, temperature=temperature, return_scores=True,
                      generator=None if seed is None else torch.Generator().manual_seed(seed))  # fmt: skip
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["new_tokens"] == single.new_tokens
        torch.testing.assert_close(r["logits"], single.logits, atol=1e-5, rtol=1e-5)
    full = 2 * model.config["num_layers"] * model.config["num_kv_heads"] * (model.config["d_model"] // model.config["num_heads"]) * 4
    assert results[0]["cache_bytes_per_token"] * 2 == full  # each rank caches half the key/value heads
