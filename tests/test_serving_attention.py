"""Chapter 16: paged attention against Chapter 1's contiguous attention on the gathered keys and values."""

from __future__ import annotations

import pytest
import torch

from reference.attention import causal_mask, repeat_kv, scaled_dot_product_attention


def _paged_batch(lengths, block_size=4, kv_heads=2, head_dim=8, seed=0, dtype=torch.float64):
    """Random per-sequence keys/values scattered into a shuffled block pool; returns the pool,
    the block tables and the contiguous tensors."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lengths]
    num_blocks = sum(need) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()  # physical blocks in a random order
    kc = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g, dtype=dtype)  # garbage everywhere
    vc = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=g, dtype=dtype)
    tables, ks, vs = [], [], []
    for n, nb in zip(lengths, need):
        table = [order.pop() for _ in range(nb)]
        k = torch.randn(kv_heads, n, head_dim, generator=g, dtype=dtype)
        v = torch.randn(kv_heads, n, head_dim, generator=g, dtype=dtype)
        for p in range(n):
            kc[table[p // block_size], p % block_size] = k[:, p]
            vc[table[p // block_size], p % block_size] = v[:, p]
        tables.append(table + [0] * (max(need) - nb))
        ks.append(k)
        vs.append(v)
    return kc, vc, torch.tensor(tables), torch.tensor(lengths), ks, vs


@pytest.mark.exercise("16.4")
@pytest.mark.points(3)
def test_gather_kv_reads_each_sequence_through_its_table(impl):
    lengths = [5, 1, 12, 8]
    kc, _, tables, lens, ks, _ = _paged_batch(lengths)
    out = impl.serving.paged_attention.gather_kv(kc, tables, lens)
    assert out.shape == (4, 2, tables.shape[1] * 4, 8)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, :, :n], ks[b], rtol=0, atol=0)
        assert (out[b, :, n:] == 0).all()


@pytest.mark.exercise("16.4")
@pytest.mark.points(1)
def test_gather_kv_max_len(impl):
    kc, _, tables, lens, ks, _ = _paged_batch([3, 6])
    out = impl.serving.paged_attention.gather_kv(kc, tables, lens, max_len=6)
    assert out.shape == (2, 2, 6, 8)
    torch.testing.assert_close(out[1], ks[1], rtol=0, atol=0)


def _oracle(q_b, k_b, v_b, n_q, group):
    """Chapter 1: attention of the last n_q positions over the sequence's own contiguous keys."""
    k, v = repeat_kv(k_b[None], group), repeat_kv(v_b[None], group)
    return scaled_dot_product_attention(q_b[None, :, :n_q], k, v, causal_mask(n_q, k_b.shape[1]))[0]


@pytest.mark.exercise("16.5")
@pytest.mark.points(3)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_paged_decode_equals_contiguous_attention(impl, dtype, tol):
    lengths = [7, 1, 16, 30, 4]
    kc, vc, tables, lens, ks, vs = _paged_batch(lengths, dtype=dtype, seed=1)
    q = torch.randn(5, 4, 1, 8, generator=torch.Generator().manual_seed(2), dtype=dtype)  # 4 query heads, 2 kv heads
    out = impl.serving.paged_attention.paged_attention(q, kc, vc, tables, lens)
    assert out.shape == q.shape
    for b in range(5):
        torch.testing.assert_close(out[b], _oracle(q[b], ks[b], vs[b], 1, 2), rtol=tol, atol=tol)


@pytest.mark.exercise("16.5")
@pytest.mark.points(3)
def test_paged_prefill_is_causal_per_sequence(impl):
    lengths, qlens = [9, 3, 13], [4, 3, 1]
    kc, vc, tables, lens, ks, vs = _paged_batch(lengths, kv_heads=1, seed=3, dtype=torch.float32)
    q = torch.randn(3, 2, 4, 8, generator=torch.Generator().manual_seed(4))
    out = impl.serving.paged_attention.paged_attention(q, kc, vc, tables, lens, query_lens=torch.tensor(qlens))
    for b, n_q in enumerate(qlens):
        torch.testing.assert_close(out[b, :, :n_q], _oracle(q[b], ks[b], vs[b], n_q, 2), rtol=1e-5, atol=1e-5)
        assert (out[b, :, n_q:] == 0).all()  # padding queries


@pytest.mark.exercise("16.5")
@pytest.mark.points(1)
def test_paged_attention_scale(impl):
    kc, vc, tables, lens, ks, vs = _paged_batch([6], kv_heads=1, dtype=torch.float64)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = impl.serving.paged_attention.paged_attention(q, kc, vc, tables, lens, scale=0.3)
    expected = scaled_dot_product_attention(q[0], ks[0], vs[0], scale=0.3)
    torch.testing.assert_close(out[0], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.exercise("16.5")
@pytest.mark.points(2)
def test_engine_decodes_through_paged_attention_like_the_model_cache(impl):
    """The engine's cache hook (gather through the tables, then the model's attention) and
    `paged_attention` agree on the engine's own block pool after a real prefill."""
    from reference.models.llama import TransformerLM
    from reference.serving.engine import LLMEngine
    from reference.inference.sampling import SamplingParams

    torch.manual_seed(0)
    model = TransformerLM(50, 64, 16, 1, 2, 32).double().eval()
    engine = LLMEngine(model, block_size=4, num_blocks=20)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    for p in prompts:
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    engine.step()  # prefill both
    seqs = [g.seqs[0] for g in engine.scheduler.running]
    tables = torch.tensor([(engine.block_manager.block_table(s.seq_id) + [0, 0])[:2] for s in seqs])
    lens = torch.tensor([s.num_computed for s in seqs])
    kc, vc = engine.cache.keys[0], engine.cache.values[0]
    q = torch.randn(2, 2, 1, 8, dtype=torch.float64)
    got = impl.serving.paged_attention.paged_attention(q, kc, vc, tables, lens)
    attn = model.layers[0].attn
    for b, p in enumerate(prompts):  # recompute layer 0's keys/values of the prompt contiguously
        x = model.layers[0].norm_attn(model.token_embeddings(torch.tensor([p])))
        k = attn.k_proj(x).unflatten(-1, (2, 8)).transpose(1, 2)
        v = attn.v_proj(x).unflatten(-1, (2, 8)).transpose(1, 2)
        _, k = attn.positional.rotate(k, k, torch.arange(len(p)), torch.arange(len(p)))
        want = scaled_dot_product_attention(q[b : b + 1], k, v)[0]
        torch.testing.assert_close(got[b], want, rtol=1e-10, atol=1e-10)
