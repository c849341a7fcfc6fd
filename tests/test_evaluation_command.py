"""Chapter 13's commands and tools, end to end at a tiny size (not graded: no exercise here).

`llm-course evaluate` writes the harness JSON the notebook reads (seed, configuration, machine, a
row per model and task, perplexity per source, bias); `python -m reference.evaluation.run canary`
writes the exposure JSON; the rating sheet round-trips through CSV; the retrieval, perturbation
and extraction tools behave on cases whose answer is known; 13a tokenisation equals sacreBLEU's.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from reference.course import cli
from reference.evaluation import bleu, harness, human, qa, run, security


def test_llm_course_evaluate_writes_json(tmp_path, capsys):
    out = tmp_path / "13_harness.json"
    argv = ["evaluate", "llama-tiny", "uniform-guess", "--tasks", "python_docs_cloze", "arithmetic", "--limit", "3",
            "--ppl-tokens", "40", "--device", "cpu", "--json", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["seed"] == 0 and result["config"]["limit"] == 3 and result["machine"]["device"] == "cpu"
    assert result["command"].startswith("llm-course evaluate llama-tiny uniform-guess --tasks python_docs_cloze")
    rows = {(r["model"], r["task"]): r for r in result["results"]}
    assert set(rows) == {(m, t) for m in ("llama-tiny", "uniform-guess") for t in ("python_docs_cloze", "arithmetic")}
    assert set(rows["llama-tiny", "python_docs_cloze"]["metrics"]) == {"acc", "acc_norm"}
    assert rows["uniform-guess", "arithmetic"]["n"] == 3
    assert set(result["perplexity"]["llama-tiny"]) == {"books", "prose", "code"}
    for scores in result["perplexity"]["llama-tiny"].values():
        assert scores["perplexity"] == pytest.approx(math.exp(scores["nll_per_token"]))
        assert scores["bits_per_byte"] == pytest.approx(scores["nll_per_token"] * scores["tokens"] / math.log(2) / scores["bytes"])
    assert result["bias"]["llama-tiny"]["all"]["n"] == len(security.bias_pairs()) == 30
    assert "llama-tiny" in capsys.readouterr().out
    assert cli.main(["evaluate", "gpt-9", "--json", str(out)]) == 2


def test_canary_command_writes_json(tmp_path):
    out = tmp_path / "13_canary.json"
    assert run.main(["canary", "--steps", "2", "--seeds", "2", "--digits", "2", "--text-bytes", "4000", "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1] and result["config"]["steps"] == 2 and "machine" in result
    assert result["max_exposure"] == pytest.approx(math.log2(100))
    assert set(result["summary"]) == {"0", "1", "2", "4", "8", "16", "32"}
    for row in result["summary"].values():
        assert len(row["values"]) == 2 and all(0 <= v <= result["max_exposure"] for v in row["values"])


def test_secret_losses_rank_a_planted_secret_first():
    """A model that has memorised nothing but a planted bias: exposure is maximal for the planted digits."""
    import torch

    from reference.pretrained import load_pretrained

    _, tokenizer = load_pretrained("llama-tiny")
    favoured = set(tokenizer.encode(" 7")) | set(tokenizer.encode("7"))

    class Biased(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            logits = torch.zeros(*x.shape, len(tokenizer.vocab))
            logits[..., sorted(favoured)] = 5.0
            return logits + self.w

    losses = security.secret_losses(Biased(), tokenizer, 2)
    assert losses.shape == (100,)
    assert security.exposure(float(losses[77]), losses.tolist()) == pytest.approx(math.log2(100))


def test_rating_sheet_round_trip_and_agreement(tmp_path):
    path, swapped = human.rating_sheet(tmp_path / "sheet.csv", ["p1", "p2", "p3", "p4"], ["a1", "a2", "a3", "a4"],
                                       ["b1", "b2", "b3", "b4"], raters=["ann", "bob"], seed=1)  # fmt: skip
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 8 and tuple(rows[0]) == human.SHEET_COLUMNS
    truth = {"ann": ["1", "1", "2", "tie"], "bob": ["1", "2", "2", "tie"]}
    for row in rows:  # fill the sheet as the raters would, seeing only A and B
        system = truth[row["rater"]][int(row["item"])]
        row["preference"] = "tie" if system == "tie" else ("A" if (system == "1") != swapped[int(row["item"])] else "B")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=human.SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    assert human.read_preferences(path, swapped) == truth
    assert human.cohen_kappa(truth["ann"], truth["bob"]) == pytest.approx((0.75 - (2 * 1 + 1 * 2 + 1 * 1) / 16) / (1 - 5 / 16))
    table = human.counts_table(list(zip(truth["ann"], truth["bob"])), ["1", "2", "tie"])
    assert table == [[2, 0, 0], [1, 1, 0], [0, 2, 0], [0, 0, 2]]
    rows[0]["preference"] = "maybe"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=human.SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match="line 2"):
        human.read_preferences(path, swapped)


def test_tokenize_13a_matches_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    oracle = Tokenizer13a()
    for line in ["Hello, world! It's 3.5 km (or 1,000 m) &amp; more.", "a-b 5-6 x.y <skipped> -\nnext", "e.g. U.S.A. $5"]:
        assert bleu.tokenize_13a(line) == oracle(line)


def test_bm25_retrieves_the_passage_and_open_domain_qa_scores_it():
    passages = ["Hamlet is the prince of Denmark and speaks to a skull.", "Python lists are mutable sequences.",
                "The tempest wrecks a ship near the island of Prospero."]  # fmt: skip
    items = [qa.QAItem("Fill in the blank: Hamlet is the prince of ___.", ("Denmark",), 0),
             qa.QAItem("Fill in the blank: the island of ___ holds a wreck.", ("Prospero",), 2)]  # fmt: skip
    index = qa.BM25(passages)
    oracle = qa.open_domain_qa(items, index, passages, lambda q, ctx: "Denmark" if "Denmark" in ctx else "the sea", k=1)
    assert oracle == {"exact_match": 0.5, "f1": 0.5, "recall_at_k": 1.0, "n": 2}
    built = qa.qa_items([p * 2 for p in passages], n=2, seed=0)
    assert built and all("___" in item.question and item.answers[0] in passages[item.passage] for item in built)


def test_perturbations_and_attack_success():
    text = "the quick brown fox jumps over the lazy dog"
    assert security.perturb_characters(text, 0.0) == text and security.perturb_words(text, 0.0) == text
    noisy = security.perturb_characters(text, 0.3, seed=1)
    assert noisy != text and sorted(noisy.replace(" ", "")) != [] and noisy.count(" ") == text.count(" ")
    assert security.perturb_words(text, 1.0, seed=0).split() != text.split()

    class KnowsTheQuery:  # right when the query is intact, a coin flip otherwise
        name = "oracle"

        def loglikelihood(self, context, continuation):
            intact = context.endswith("alpha beta gamma delta")
            return (0.0 if continuation == " yes" else -1.0) if intact else (-1.0 if continuation == " yes" else 0.0), False

    docs = [harness.Doc("alpha beta gamma delta", ("yes", "no"), 0) for _ in range(10)]
    task = harness.Task("t", "multiple_choice", docs)
    result = security.attack_success_rate(KnowsTheQuery(), task, "word", 1.0)
    assert result["clean_acc"] == 1.0 and result["perturbed_acc"] == 0.0 and result["success_rate"] == 1.0
    with pytest.raises(ValueError):
        security.attack_success_rate(KnowsTheQuery(), task, "emoji", 0.1)


def test_extraction_rate_of_a_repeating_model():
    import torch

    class Repeat(torch.nn.Module):  # predicts the token two positions back: continues any period-2 pattern
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.context_length = 64

        def forward(self, x):
            prev = torch.roll(x, 1, dims=1)
            return torch.nn.functional.one_hot(prev, 10).float() * 10 + self.w

    periodic = [[1, 2, 1, 2, 1, 2, 1, 2], [3, 4, 3, 4, 3, 4, 3, 4]]
    assert security.extraction_rate(Repeat(), periodic, 4, 4) == 1.0
    assert security.extraction_rate(Repeat(), [[1, 2, 1, 2, 5, 5, 5, 5]], 4, 4) == 0.0


def test_few_shot_prompt_layout_and_answer_extraction():
    shots = [harness.Doc("Q: 1+1?\nA:", answers=("2",)), harness.Doc("Q: 2+2?\nA:", answers=("4",))]
    prompt = harness.few_shot_prompt("Sums.\n\n", shots, "Q: 3+3?\nA:")
    assert prompt == "Sums.\n\nQ: 1+1?\nA: 2\n\nQ: 2+2?\nA: 4\n\nQ: 3+3?\nA:"
    assert harness.extract_answer(" 42 apples") == "42" and harness.extract_answer("none") == harness.INVALID
    assert harness.mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.5, math.sqrt(1 / 3 / 4)))
    table = harness.results_table([{"model": "m", "task": "t", "n": 4, "num_fewshot": 0,
                                    "metrics": {"acc": {"value": 0.5, "stderr": 0.25}}}], ["m", "other"])  # fmt: skip
    assert "50.0 ± 25.0" in table and "—" in table


def test_bad_input_gets_a_clear_error():
    import torch

    from reference.evaluation import bertscore, perplexity, rouge

    with pytest.raises(ValueError, match="reference stream"):
        bleu.corpus_bleu(["a b", "c"], [["a b"]])
    with pytest.raises(TypeError, match="references"):
        bleu.sentence_bleu("a b", "a b")
    with pytest.raises(ValueError, match="smooth_method"):
        bleu.corpus_bleu(["a"], [["a"]], smooth_method="laplace")
    with pytest.raises(ValueError, match="unknown ROUGE type"):
        rouge.rouge("a", "a", ["rougeX"])
    with pytest.raises(ValueError, match="pair up"):
        bertscore.bertscore(["a"], ["a", "b"], model=torch.nn.Linear(1, 1), tokenizer=object())
    with pytest.raises(ValueError, match="golds"):
        qa.token_f1("a", "a")
    with pytest.raises(ValueError, match="same items"):
        human.cohen_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="unknown task"):
        harness.get_task("mmlu")
    with pytest.raises(ValueError, match="kind"):
        harness.Task("t", "ranking", [])
    with pytest.raises(ValueError, match="window"):
        perplexity.sliding_window_nll(torch.nn.Linear(1, 1), [1, 2, 3], 1, 1)
