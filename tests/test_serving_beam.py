"""Chapter 16: beam search in LLMEngine: the step's candidate selection (Hugging Face's rules), the
engine's beams equal to Chapter 15's beam_search in a batch mixed with greedy and sampled requests and
under preemption, and the beams' blocks shared with copy-on-write, dropped beams freed, nothing leaked."""

from __future__ import annotations

import math
import random

import pytest
import torch

from reference.inference.beam import beam_search
from reference.inference.generate import generate
from reference.inference.sampling import SamplingParams
from reference.models.llama import TransformerLM
from reference.serving.engine import LLMEngine

EOS = (3, 5)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return TransformerLM(64, 96, 32, 2, 4, 64, num_kv_heads=2).double().eval()  # float64: no near-ties


def _brute_force(scores, logprobs, beams, new_len, penalty, eos, last):
    """Hugging Face's rule, spelled out: sort every (beam, token) pair, keep max(2, 1 + #eos) * B."""
    pairs = sorted(((scores[r] + logprobs[r][t], r, t) for r in range(len(scores)) for t in range(len(logprobs[0]))),
                   key=lambda x: -x[0])[: max(2, 1 + len(eos)) * beams]  # fmt: skip
    ends = [t in eos or last for _, _, t in pairs]
    finished = [(r, t, s / new_len**penalty) for k, (s, r, t) in enumerate(pairs[:beams]) if ends[k]]
    live = [(r, t, s) for k, (s, r, t) in enumerate(pairs) if not ends[k]][:beams]
    return live, finished


def _close(got, expected):
    assert [(r, t) for r, t, _ in got] == [(r, t) for r, t, _ in expected]
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for (_, _, a), (_, _, b) in zip(got, expected))


@pytest.mark.exercise("16.8")
@pytest.mark.points(2)
def test_beam_step_keeps_the_best_candidates_over_all_beams(impl):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        rows, beams = (1, 3) if trial % 4 == 0 else (3, 3)
        logprobs = torch.log_softmax(torch.randn(rows, 9, generator=gen, dtype=torch.float64), dim=-1)
        scores = [0.0] if rows == 1 else (-torch.rand(rows, generator=gen, dtype=torch.float64) * 3).tolist()
        penalty, new_len = [1.0, 0.5, -1.0, 2.0][trial % 4], 1 + trial % 5
        live, finished = impl.serving.beam.beam_step(scores, logprobs, beams, new_len=new_len, length_penalty=penalty,
                                                     eos_token_ids=EOS)  # fmt: skip
        expected = _brute_force(scores, logprobs.tolist(), beams, new_len, penalty, EOS, False)
        _close(live, expected[0])
        _close(finished, expected[1])


@pytest.mark.exercise("16.8")
@pytest.mark.points(2)
def test_beam_step_end_ids_only_finish_among_the_first_b_and_are_normalised(impl):
    # beam 0 prefers token 3 (an end id), beam 1 prefers 1; B = 2, three end ids: 4 * 2 = 8 candidates kept
    logprobs = torch.log(torch.tensor([[0.05, 0.1, 0.05, 0.7, 0.1], [0.05, 0.6, 0.05, 0.05, 0.25]], dtype=torch.float64))
    live, finished = impl.serving.beam.beam_step([0.0, -0.1], logprobs, 2, new_len=4, length_penalty=0.5, eos_token_ids=(3, 4, 0))
    assert [(r, t) for r, t, _ in finished] == [(0, 3)]  # (1, 4) ends too, but is 4th: it does not finish
    assert math.isclose(finished[0][2], math.log(0.7) / 4**0.5)
    assert [(r, t) for r, t, _ in live] == [(1, 1), (0, 1)]  # the best two that do not end
    assert math.isclose(live[0][2], -0.1 + math.log(0.6)) and math.isclose(live[1][2], math.log(0.1))
    # both beams' best tokens end: the next beams still come from the 2 B candidates kept
    logprobs = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.9, 0.05, 0.05]], dtype=torch.float64))
    live, finished = impl.serving.beam.beam_step([0.0, -0.5], logprobs, 2, new_len=1, eos_token_ids=(0,))
    assert [(r, t) for r, t, _ in finished] == [(0, 0), (1, 0)] and len(live) == 2
    # at the length limit every candidate among the first B finishes, none lives on
    live, finished = impl.serving.beam.beam_step([0.0, -0.5], logprobs, 2, new_len=3, length_penalty=1.0, last=True)
    assert live == [] and [(r, t) for r, t, _ in finished] == [(0, 0), (1, 0)]
    assert math.isclose(finished[1][2], (-0.5 + math.log(0.9)) / 3)


def _workload(seed=0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(64) for _ in range(rng.randint(1, 20))] for _ in range(9)]
    params = []
    for i in range(9):
        if i % 3 == 0:
            params.append(SamplingParams(use_beam_search=True, beam_width=[4, 3, 2][i // 3], n=2 if i < 6 else 1,
                                         max_tokens=rng.randint(6, 12), length_penalty=[1.0, 0.5, -1.0][i // 3]))  # fmt: skip
        elif i % 3 == 1:
            params.append(SamplingParams(temperature=0, max_tokens=rng.randint(4, 12), ignore_eos=True))
        else:
            params.append(SamplingParams(temperature=0.9, top_p=0.9, seed=i, max_tokens=rng.randint(4, 12), ignore_eos=True))
    return prompts, params


@pytest.mark.exercise("16.8")
@pytest.mark.points(4)
@pytest.mark.parametrize("mode,blocks,host", [("recompute", 300, 0), ("recompute", 34, 0), ("swap", 34, 80)])
def test_engine_beams_equal_beam_search_in_a_mixed_batch_and_under_preemption(impl, tiny_model, mode, blocks, host):
    prompts, params = _workload()
    engine = LLMEngine(tiny_model, block_size=4, num_blocks=blocks, num_host_blocks=host, preemption_mode=mode,
                       eos_token_ids=EOS, max_num_seqs=16, beam_step_fn=impl.serving.beam.beam_step)  # fmt: skip
    outs = engine.generate(prompts, params)
    for out, prompt, sp in zip(outs, prompts, params):
        got = [c.token_ids for c in out.outputs]
        if sp.use_beam_search:
            ref = beam_search(tiny_model, prompt, sp.max_tokens, num_beams=sp.beam_width, length_penalty=sp.length_penalty,
                              eos_token_id=EOS, num_return_sequences=sp.n)  # fmt: skip
            assert got == ref.sequences
            assert [c.score for c in out.outputs] == pytest.approx(ref.scores, abs=1e-5)
            assert [c.finish_reason for c in out.outputs] == ["stop" if s[-1] in EOS else "length" for s in ref.sequences]
        elif sp.greedy:
            assert got == [generate(tiny_model, [prompt], sp.max_tokens).new_tokens[0]]
        else:  # a seeded sampled request draws the same tokens as when it runs alone
            alone = LLMEngine(tiny_model, block_size=4, num_blocks=40, eos_token_ids=EOS).generate([prompt], sp)[0]
            assert got == [c.token_ids for c in alone.outputs]
    if blocks < 100:
        assert engine.stats["preemptions"] + engine.stats["swaps"] > 0, "the small pool must force preemption"
    assert engine.stats["beam_forks"] > 0
    engine.block_manager.check_invariants()
    assert engine.block_manager.num_free_blocks == blocks and not engine.block_manager.tables


@pytest.mark.exercise("16.8")
@pytest.mark.points(2)
def test_beams_share_blocks_copy_on_write_and_abort_frees_them(impl, tiny_model):
    engine = LLMEngine(tiny_model, block_size=4, num_blocks=60, eos_token_ids=(), beam_step_fn=impl.serving.beam.beam_step)
    engine.add_request(list(range(10, 30)), SamplingParams(use_beam_search=True, beam_width=4, max_tokens=30), request_id="beam")
    engine.add_request(list(range(30, 37)), SamplingParams(temperature=0, max_tokens=30), request_id="greedy")
    shared = []
    for _ in range(8):
        engine.step()
        engine.block_manager.check_invariants()
        usage = engine.block_manager.usage()
        shared.append(usage["logical_blocks"] - usage["blocks"])
        # the prompt's 5 blocks are shared by all beams (a fork shares the rest until a write copies it)
        tables = [engine.block_manager.block_table(s.seq_id) for s in engine.groups["beam"].live]
        assert len(tables) == 4 and all(t[:5] == tables[0][:5] for t in tables)
    assert min(shared) >= 15  # at least the prompt's 5 blocks, shared 4 ways, are not duplicated
    assert engine.stats["copies"] > 0 and engine.stats["beam_forks"] > 0
    assert engine.abort_request("beam")
    engine.block_manager.check_invariants()
    assert set(engine.block_manager.tables) == {s.seq_id for s in engine.groups["greedy"].live}
    assert engine.abort_request("greedy") and engine.block_manager.num_free_blocks == 60


@pytest.mark.exercise("16.8")
@pytest.mark.points(1)
def test_beam_requests_refuse_what_beam_search_would_ignore(impl, tiny_model):
    engine = LLMEngine(tiny_model, block_size=4, num_blocks=12, beam_step_fn=impl.serving.beam.beam_step)
    beam = SamplingParams(use_beam_search=True, beam_width=2, max_tokens=4)
    for bad, word in ((beam.replace(stop=["x"]), "stop"), (beam.replace(repetition_penalty=1.2), "repetition_penalty"),
                      (beam.replace(best_of=3), "best_of"), (beam.replace(max_tokens=0), "max_tokens")):  # fmt: skip
        with pytest.raises(ValueError, match=word):
            engine.add_request([1, 2, 3], bad)
    with pytest.raises(ValueError, match="beam_width=4"):  # 4 beams x 6 blocks cannot fit 12 blocks
        engine.add_request([1] * 20, SamplingParams(use_beam_search=True, beam_width=4, max_tokens=4))
    assert not engine.has_unfinished_requests()
    out = engine.generate([[1, 2, 3]], beam)[0]  # what fits is served
    assert [c.token_ids for c in out.outputs] == beam_search(tiny_model, [1, 2, 3], 4, num_beams=2, eos_token_id=engine.eos_token_ids or None).sequences


@pytest.mark.exercise("16.8")
@pytest.mark.points(1)
def test_max_num_seqs_counts_the_beams_a_request_will_fork_into(impl, tiny_model):
    engine = LLMEngine(tiny_model, block_size=4, num_blocks=80, max_num_seqs=4, eos_token_ids=(),
                       beam_step_fn=impl.serving.beam.beam_step)  # fmt: skip
    engine.add_request([1, 2, 3], SamplingParams(use_beam_search=True, beam_width=3, max_tokens=6), request_id="beam")
    engine.add_request([4, 5], SamplingParams(temperature=0, max_tokens=6), request_id="a")
    engine.add_request([6, 7], SamplingParams(temperature=0, max_tokens=6), request_id="b")
    most = 0
    while engine.has_unfinished_requests():
        engine.step()
        most = max(most, engine.scheduler.num_running_seqs(), sum(len(g.live) for g in engine.scheduler.running))
    assert most == 4  # 3 beams + "a"; "b" waits until a slot is free
