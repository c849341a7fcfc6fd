"""Chapter 3's strategies and scoring helpers (not graded): reference/prompting/core.py and strategies.py.

- the verbalizer's scores match a direct computation from the logits (multi-token words too);
- a cloze verbalizer on the course's bert-tiny scores one [MASK] per token of the word;
- the AutoPrompt search lowers its objective on a planted task;
- each trained strategy changes only what it should (the rest bit-identical after training);
- AutoPrompt as a strategy gives a hard prompt (real, non-special tokens whose accuracy it reports);
- the results command runs end to end, shrunk, on llama-tiny (AutoPrompt and the CoT check included).
Chain of thought's task, prompts, answer reading and command: tests/test_prompting_reasoning.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from reference.models.llama import TransformerLM
from reference.prompting import core, strategies
from reference.prompting.modules import PromptedLM, SoftPrompt


@pytest.fixture(scope="module")
def tiny():
    from reference.pretrained import load_pretrained

    return load_pretrained("llama-tiny")


def test_score_words_matches_logits(tiny):
    model, tok = tiny
    prompt, words = "Message: you fool\nThis message is", [" rude", " extraordinarily polite"]
    got = core.score_words(model, tok, [prompt], words)
    p = tok.encode(prompt)
    for j, w in enumerate(words):
        ids = tok.encode(prompt + w)
        assert ids[: len(p)] == p
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
        want = sum(lp[t - 1, ids[t]].item() for t in range(len(p), len(ids)))
        assert abs(got[0, j].item() - want) < 1e-4
    assert len(tok.encode(words[1])) > 1  # a multi-token word really is tested


def test_class_log_probs_and_classify(tiny):
    model, tok = tiny
    v = core.Verbalizer("v", (("polite", "kind"), ("rude",)))
    lp = core.classify(model, tok, strategies.TEMPLATES[0], v, ["you fool", "thank you"])
    assert lp.shape == (2, 2)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2))
    word_lp = torch.log(torch.tensor([[0.1, 0.2, 0.3]]))
    torch.testing.assert_close(core.class_log_probs(word_lp, [0, 0, 1], 2).exp(), torch.tensor([[0.5, 0.5]]))


def test_cloze_on_bert_tiny():
    from reference.pretrained import load_pretrained

    bert, tok = load_pretrained("bert-tiny")
    lp = core.score_cloze(bert, tok, ["you fool. This message is [MASK]."], [" rude", " polite"])
    assert lp.shape == (1, 2) and (lp < 0).all()
    with pytest.raises(ValueError, match="MASK"):
        core.Template("bad", "{x} is", kind="cloze")


def test_autoprompt_improves_a_planted_objective(tiny):
    model, tok = tiny
    x = torch.tensor([tok.encode(" and the king said that the")])
    target = tok.encode(" castle")[0]  # planted: make an unlikely next word likely

    def loss_fn(prompted):
        return -torch.log_softmax(prompted(x)[0, -1].float(), -1)[target]

    start = tok.encode(" the the the")
    result = core.autoprompt_search(model, loss_fn, start, steps=6, k=8, exclude=[0])
    assert result.losses[-1] < result.losses[0] - 0.5
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:]))
    assert not any(p.requires_grad for p in model.parameters()) or all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        hard = -torch.log_softmax(model(torch.cat([torch.tensor([result.triggers]), x], 1))[0, -1].float(), -1)[target]
    assert abs(hard.item() - result.losses[-1]) < 1e-3


@pytest.mark.parametrize("strategy", strategies.TRAINED)
def test_only_the_intended_parameters_change(tiny, strategy):
    model, tok = tiny
    task = strategies.tone_task(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = strategies.train_strategy(strategy, model, tok, task["train"][:8], task["test"][:4], steps=2, batch_size=4)
    net = r["net"]
    base = net.model.state_dict()
    same = all(torch.equal(before[k], base[k]) for k in before)
    assert same == (strategy in ("soft-prompt", "prefix", "p-tuning", "autoprompt"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is never trained
    assert (r["trainable_parameters"] > 0) == (strategy != "autoprompt") and 0 <= r["accuracy"] <= 1


def test_autoprompt_strategy_is_a_hard_prompt(tiny):
    """AutoPrompt's result is real tokens: the prompt it scores with is their embedding rows, and the
    test accuracy it reports is the hard prompt's (the trigger text before the template)."""
    model, tok = tiny
    task = strategies.tone_task(0)
    train, test = strategies.few_shot_sample(task["train"], 16, seed=0), task["test"][:12]
    r = strategies.train_strategy("autoprompt", model, tok, train, test, steps=4, batch_size=8, candidates=4)
    ids = r["trigger_ids"]
    assert len(ids) == 8 and r["swaps"] >= 1 and len(r["triggers"]) == 8
    torch.testing.assert_close(r["net"].prompt.weight, model.token_embeddings.weight[ids], rtol=0, atol=0)
    t, v = strategies.TRAIN_TEMPLATE, strategies.MAIN_VERBALIZER
    word_ids = [tok.encode(t.word(w[0]))[0] for w in v.words]
    hits = 0
    with torch.no_grad():
        for x, y in test:
            row = torch.tensor([ids + tok.encode(t.render(x))])
            hits += int(model(row)[0, -1, word_ids].argmax()) == y
    assert abs(hits / len(test) - r["accuracy"]) < 1e-6
    special = {tok.token_to_id(s) for s in tok.special_tokens}
    assert not special & set(ids)


def test_autoprompt_strategy_never_keeps_a_worse_trigger(tiny):
    """With one training example every batch is the same, so the loss after each step cannot rise."""
    model, tok = tiny
    task = strategies.tone_task(0)
    r = strategies.train_strategy("autoprompt", model, tok, task["train"][:1], task["test"][:2], steps=5, batch_size=4,
                                  candidates=6)
    assert r["swaps"] >= 1 and r["last_loss"] <= r["first_loss"] + 1e-6


def test_autoprompt_strategy_excludes_special_tokens(tiny, monkeypatch):
    model, tok = tiny
    seen = []
    real = core.autoprompt_candidates
    monkeypatch.setattr(core, "autoprompt_candidates", lambda g, e, k, exclude=(): seen.append(list(exclude)) or real(g, e, k, exclude))
    task = strategies.tone_task(0)
    strategies.train_strategy("autoprompt", model, tok, task["train"][:8], task["test"][:2], steps=2, batch_size=4)
    assert len(seen) == 2 and all(set(x) == {tok.token_to_id(s) for s in tok.special_tokens} for x in seen)


def test_train_strategy_bad_inputs(tiny):
    model, tok = tiny
    task = strategies.tone_task(0)
    with pytest.raises(ValueError, match="strategy"):
        strategies.train_strategy("lora", model, tok, task["train"][:4], task["test"][:2], steps=1)
    with pytest.raises(ValueError, match="candidates"):
        strategies.train_strategy("autoprompt", model, tok, task["train"][:4], task["test"][:2], steps=1, candidates=0)
    with pytest.raises(ValueError, match="steps"):
        strategies.train_strategy("pet", model, tok, task["train"][:4], task["test"][:2], steps=-1)
    with pytest.raises(ValueError, match="non-empty"):
        strategies.train_strategy("pet", model, tok, [], task["test"][:2], steps=1)


def test_command_end_to_end(tmp_path):
    out = tmp_path / "03.json"
    assert strategies.main(["--model", "llama-tiny", "--quick", "--regimes", "8", "--seeds", "0", "1", "--steps", "2",
                            "--strategies", "soft-prompt", "pet", "autoprompt", "--candidates", "2", "--cot-problems", "2",
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"seed", "config", "machine", "zero_shot", "few_shot", "trained", "soft_prompt_neighbours"} <= set(result)
    assert {r["strategy"] for r in result["trained"]} == {"soft-prompt", "pet", "autoprompt"}
    assert sorted(r["seed"] for r in result["trained"] if r["strategy"] == "autoprompt") == [0, 1]
    auto = [r for r in result["trained"] if r["strategy"] == "autoprompt"]
    assert all(len(r["trigger_ids"]) == 8 and r["trainable_parameters"] == 0 for r in auto)
    assert result["config"]["autoprompt_candidates"] == 2
    cot = result["chain_of_thought"]
    assert cot["n"] == 2 and {"direct", "cot"} <= set(cot) and 0 <= cot["cot"]["accuracy"] <= 1
    assert len(result["zero_shot"]) == 3 * 2 and all("calibrated" in r for r in result["zero_shot"])




def test_command_trained_only(tmp_path):
    out = tmp_path / "03t.json"
    assert strategies.main(["--model", "llama-tiny", "--trained-only", "--test-size", "4", "--regimes", "8", "--seeds", "0",
                            "--steps", "1", "--strategies", "head", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["zero_shot"] == [] and result["few_shot"] == [] and len(result["trained"]) == 1
    assert result["config"]["test_size"] == 4
