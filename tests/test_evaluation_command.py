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
import torch

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
    never = result["never_inserted"]
    assert never["n"] == sum(run["never_inserted"]["n"] for run in result["runs"]) >= 2 * 94  # 100 less <= 6 inserted
    assert never["expected"] == pytest.approx(math.log2(100) - math.log2(math.factorial(100)) / 100)


def test_random_exposure_baseline():
    """The expected exposure of a uniformly ranked secret is the mean over all ranks (not 1), -> log2 e."""
    import torch

    for size in (1, 10, 1000):
        brute = sum(math.log2(size) - math.log2(rank) for rank in range(1, size + 1)) / size
        assert security.expected_random_exposure(size) == pytest.approx(brute, rel=1e-9)
    assert security.expected_random_exposure(10**6) == pytest.approx(1 / math.log(2), abs=1e-4)
    losses = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0])
    assert security.exposures_of([0, 1, 2, 3, 4], losses).tolist() == pytest.approx(
        [security.exposure(float(v), losses.tolist()) for v in losses])
    with pytest.raises(ValueError, match="size"):
        security.expected_random_exposure(0)


def test_fit_context_keeps_the_top_passage_within_the_budget():
    from reference.pretrained import load_pretrained

    _, tokenizer = load_pretrained("llama-tiny")
    filler = " ".join(f"Sentence {i} talks about nothing in particular at all." for i in range(30))
    top = filler + " The lost ring lies under the old oak bridge. " + filler
    second, third = "Short second passage.", "Third passage " * 40
    question = "Fill in the blank: The lost ring lies under the old oak ___."
    context = qa.fit_context([top, second, third], question, tokenizer, budget=60)
    assert len(tokenizer.encode(context)) <= 60
    assert "The lost ring lies under the old oak bridge." in context  # the question's sentence survives
    assert context.endswith("\n" + second) and "Third" not in context  # lower passages only while they fit
    whole = qa.fit_context([second, third], question, tokenizer, budget=500)
    assert whole == second + "\n" + third.strip() or whole.startswith(second + "\n")
    assert qa.fit_context(["one two three four five six"], "q", tokenizer, budget=2).split() == ["one"]
    with pytest.raises(ValueError, match="budget"):
        qa.fit_context([top], question, tokenizer, budget=0)


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
    # every suffix token must match up to length n, not only the n-th: [5, 2, 1, 2] misses the first
    assert security.extraction_rates(Repeat(), [[1, 2, 1, 2, 5, 2, 1, 2]], 4, (1, 2, 4)) == {1: 0.0, 2: 0.0, 4: 0.0}
    assert security.extraction_rates(Repeat(), [[1, 2, 1, 2, 1, 2, 5, 2]], 4, (1, 2, 4)) == {1: 1.0, 2: 1.0, 4: 0.0}


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


def test_llm_course_evaluate_fine_tuned_model_and_code_task(tmp_path):
    """The shrunk command with the Chapter 11 fine-tuned model, an instruction task and pass@k."""
    out = tmp_path / "13_harness.json"
    argv = ["evaluate", "llama-tiny+lora-sft", "uniform-guess", "--tasks", "instruction_speaker", "course_code",
            "--limit", "3", "--ppl-tokens", "40", "--code-samples", "2", "--code-problems", "2", "--sft-steps", "3",
            "--device", "cpu", "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    rows = {(r["model"], r["task"]): r for r in result["results"]}
    assert set(rows) == {("llama-tiny+lora-sft", "instruction_speaker"), ("llama-tiny+lora-sft", "course_code"),
                         ("uniform-guess", "instruction_speaker")}  # fmt: skip
    code = rows["llama-tiny+lora-sft", "course_code"]
    assert code["n"] == 2 and code["samples"] == 2 and set(code["metrics"]) == {"pass@1", "pass@2"}
    assert sum(code["outcomes"].values()) == 4
    sft = result["sft"]["llama-tiny+lora-sft"]
    assert sft["steps"] == 3 and sft["method"] == "lora" and sft["train_examples"] > 0
    assert "pass@1" in result["table"] and result["config"]["code"]["samples"] == 2
    assert cli.main(["evaluate", "llama-tiny", "--tasks", "no_such_task", "--json", str(out)]) == 2


@pytest.mark.parametrize(("program", "outcome"), [
    ("x = 1 + 1\nassert x == 2\n", "passed"),
    ("assert 1 + 1 == 3, 'wrong sum'\n", "failed"),
    ("raise KeyError('boom')\n", "error"),
    ("def f(:\n", "error"),  # a syntax error
    ("while True:\n    pass\n", "timeout"),
    ("import socket\nsocket.create_connection(('example.com', 80))\n", "error"),  # no network
])  # fmt: skip
def test_sandbox_outcomes(program, outcome):
    from reference.evaluation import execution

    result = execution.run_program(program, timeout=1.0)
    assert result["outcome"] == outcome, result["stderr"]
    if outcome == "timeout":
        assert result["seconds"] < 5.0  # killed, not waited for


def test_sandbox_kills_the_process_group_and_runs_isolated(tmp_path):
    """A child the candidate starts dies with it; the candidate runs in an empty folder with no PYTHONPATH."""
    from reference.evaluation import execution

    marker = tmp_path / "late.txt"
    child = f"import time; time.sleep(2); open({str(marker)!r}, 'w').write('x')"
    program = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\nwhile True:\n    pass\n"
    assert execution.run_program(program, timeout=0.5)["outcome"] == "timeout"
    probe = "import os, sys\nassert os.listdir('.') == ['candidate.py'], os.listdir('.')\nassert 'reference' not in sys.modules\n"
    assert execution.run_program(probe + "import reference\n")["outcome"] == "error"  # no site-packages: neither the course nor torch
    assert execution.run_program(probe)["outcome"] == "passed"
    import time

    time.sleep(2.5)
    assert not marker.exists()


def test_course_code_problems_and_pass_at_k_pipeline():
    """Each reference solution passes its tests and an empty body fails them; with a scripted model
    that writes c correct bodies of n, every problem's pass@k is the closed form."""
    from reference.evaluation import execution

    problems = execution.PROBLEMS
    assert len({p.name for p in problems}) == len(problems) >= 10
    for p in problems:
        assert execution.check_completion(p, p.solution)["outcome"] == "passed", p.name
        assert execution.check_completion(p, "    pass\n")["outcome"] == "failed", p.name
    correct = [0, 1, 3, 4]

    class Scripted:
        def sample(self, prompts, n, max_new_tokens, **kwargs):
            out = []
            for prompt in prompts:
                p = next(q for q in problems if q.prompt == prompt)
                c = correct[problems.index(p)]
                out.append([p.solution + "\ndef unused():\n    pass\n"] * c + ["    return None\n"] * (n - c))
            return out

    result = execution.evaluate_code(Scripted(), problems[:4], n=4, ks=(1, 2, 4), batch_problems=3)
    for k in (1, 2, 4):
        expected = [1 - math.comb(4 - c, k) / math.comb(4, k) for c in correct]
        assert result["per_item"][f"pass@{k}"] == pytest.approx(expected)
        assert result["metrics"][f"pass@{k}"]["value"] == pytest.approx(sum(expected) / 4)
    assert result["outcomes"] == {"passed": 8, "failed": 8, "error": 0, "timeout": 0}
    with pytest.raises(ValueError, match="temperature"):
        execution.evaluate_code(Scripted(), problems[:1], temperature=0.0)
    with pytest.raises(ValueError, match="ks"):
        execution.evaluate_code(Scripted(), problems[:1], n=2, ks=(5,))


def test_instruction_tasks_hold_out_the_sft_training_data():
    """The instruction tasks use only test / held-out examples, and no line they quote is in the SFT training split."""
    from reference.evaluation import instruction_tasks as it

    data = it.instruction_data()
    train_prompts = {e.prompt for e in data["train"]}
    lines = it.training_lines(data)
    for name, split in (("instruction_speaker", "test"), ("instruction_play", "held_out")):
        task = harness.get_task(name, n=100)
        assert len(task.docs) >= 60 and task.chat and task.kind == "multiple_choice"
        allowed = {e.prompt: e.response for e in data[split]}
        for doc in task.docs:
            assert doc.query not in train_prompts and it.quoted_line(doc.query) not in lines
            assert allowed[doc.query] == doc.choices[doc.gold] and len(set(doc.choices)) == 4
    assert not {e.task for e in data["train"]} & {"play"}  # the play task type is held out of training


def test_batched_choice_loglikelihoods_equal_one_at_a_time():
    from reference.pretrained import load_pretrained

    model, tokenizer = load_pretrained("llama-tiny")
    lm = harness.HarnessLM(model, tokenizer)
    context = lm.chat_prompt('In Hamlet, who says: "To be, or not to be"')
    choices = ["Hamlet", "Ophelia", "First Gravedigger", "Polonius"]
    assert lm.loglikelihoods(context, choices) == pytest.approx([lm.loglikelihood(context, c)[0] for c in choices], abs=1e-4)
    assert context.startswith("<|im_start|>user\n") and context.endswith("<|im_start|>assistant\n")


def test_extraction_rates_equal_one_decode_per_length():
    from reference.pretrained import load_pretrained

    model, tokenizer = load_pretrained("llama-tiny")
    ids = tokenizer.encode("ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun. " * 3)
    seqs = [ids[s : s + 20] for s in range(0, 40, 4)]
    rates = security.extraction_rates(model, seqs, 12, (1, 3, 8))

    def by_hand(n):  # one sequence at a time, n greedy tokens, all of them equal to the text's
        hits = 0
        with torch.no_grad():
            for s in seqs:
                x = list(s[:12])
                for _ in range(n):
                    x.append(int(model(torch.tensor([x]))[0, -1].argmax()))
                hits += x[12:] == list(s[12 : 12 + n])
        return hits / len(seqs)

    assert rates == {n: pytest.approx(by_hand(n)) for n in (1, 3, 8)}
    assert security.extraction_rate(model, seqs, 12, 3) == rates[3]
    for bad in ((), (0, 2), (1.5,)):
        with pytest.raises(ValueError, match="suffix lengths must be positive integers"):
            security.extraction_rates(model, seqs, 12, bad)
    with pytest.raises(ValueError, match="no sequence has"):
        security.extraction_rates(model, seqs, 12, (9,))
