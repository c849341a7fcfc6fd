"""Chapter 3's chain-of-thought comparison (not graded): reference/prompting/reasoning.py.

- the word problems' answers follow from their own worked steps, one operation per level;
- answers are read as the styles promise (first number after a cue; "answer is" for few-shot CoT);
- the prompts of each style hold what they should (trigger, cue, exemplar, never a test problem);
- batched generation gives each prompt the continuation it gets alone;
- the paired difference and the standard errors are the textbook formulas;
- the command runs end to end, shrunk, on llama-tiny.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from reference.prompting import reasoning


@pytest.fixture(scope="module")
def tiny():
    from reference.pretrained import load_pretrained

    return load_pretrained("llama-tiny")


def _evaluate_steps(steps: list[str]) -> int:
    """Check every 'a op b = c' of a worked solution and return the last result."""
    value = None
    for sentence in steps:
        a, op, b, c = re.search(r"(\d+) ([+-]) (\d+) = (\d+)", sentence).groups()
        assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
        assert value is None or int(a) == value  # each step starts from the previous result
        value = int(c)
    return value


@pytest.mark.parametrize("level", reasoning.LEVELS)
def test_word_problems(level):
    problems = reasoning.word_problems(40, level, seed=3)
    assert len(problems) == 40 and len({p["question"] for p in problems}) > 30
    for p in problems:
        assert len(p["steps"]) == level and p["level"] == level
        assert _evaluate_steps(p["steps"]) == p["answer"] >= 1
        assert p["question"].count(".") == level + 1  # one sentence per fact, then the question
    assert problems == reasoning.word_problems(40, level, seed=3)
    assert problems != reasoning.word_problems(40, level, seed=4)


def test_word_problems_bad_inputs():
    with pytest.raises(ValueError, match="level"):
        reasoning.word_problems(3, 4)
    with pytest.raises(ValueError, match="n"):
        reasoning.word_problems(0, 1)


@pytest.mark.parametrize(("text", "style", "want"), [
    (" 12.\n\nThis is a 3", "direct", 12.0),  # held to the first number, not the last
    (" 1,250 coins", "few-shot direct", 1250.0),
    (" -3", "zero-shot CoT", -3.0),  # zero-shot CoT is read in its second pass, after the cue
    (" 12. So 5 more", "zero-shot CoT", 12.0),  # ... as its first number
    ("5 + 3 = 8. Giving 2 away leaves 6. The answer is 6. Then 7", "few-shot CoT", 6.0),
    ("5 + 3 = 8 and 8 - 2 = 6", "few-shot CoT", 6.0),
    (" many", "direct", None),
])
def test_reading(text, style, want):
    assert reasoning.reading(text, style) == want


def test_reading_bad_inputs():
    with pytest.raises(ValueError, match="style"):
        reasoning.reading("1", "cot")
    with pytest.raises(TypeError, match="text"):
        reasoning.reading(None, "direct")


def test_prompts_of_each_style(tiny):
    _, tok = tiny
    problem = reasoning.word_problems(1, 2, seed=0)[0]
    exemplar = reasoning.exemplar_for(2, [problem])
    assert exemplar["question"] != problem["question"]
    direct = reasoning.prompt_text(tok, problem, "direct")
    zero = reasoning.prompt_text(tok, problem, "zero-shot CoT")
    few = reasoning.prompt_text(tok, problem, "few-shot direct", [exemplar])
    few_cot = reasoning.prompt_text(tok, problem, "few-shot CoT", [exemplar])
    assert direct.endswith(problem["question"] + "\nAnswer: The answer is")
    assert zero.endswith("Let's think step by step.")
    assert few.startswith("Question: " + exemplar["question"]) and f"The answer is {exemplar['answer']}." in few
    assert " ".join(exemplar["steps"]) in few_cot and " ".join(exemplar["steps"]) not in few
    assert problem["question"] in few_cot and exemplar["question"] not in direct
    with pytest.raises(ValueError, match="exemplars"):
        reasoning.prompt_text(tok, problem, "few-shot CoT")


def test_exemplar_is_never_a_test_problem():
    first = reasoning.word_problems(64, 2, seed=1000)[0]  # what exemplar_for(seed=0) would draw first
    assert reasoning.exemplar_for(2, [], seed=0) == first
    other = reasoning.exemplar_for(2, [first], seed=0)
    assert other["question"] != first["question"] and other["level"] == 2


def test_zero_shot_cot_is_read_in_a_second_pass(tiny, monkeypatch):
    """The reasoning is generated first; the answer is the first number after "Therefore, the answer is"."""
    model, tok = tiny
    problems = reasoning.word_problems(3, 1, seed=0)
    calls = []

    def fake(model, tokenizer, prompts, budget, batch_size=48, reasons=None):
        calls.append((list(prompts), budget))
        if reasons is not None:
            reasons.extend(["length"] * len(prompts))
        return ["so 99 and 98"] * len(prompts) if len(calls) == 1 else [f" {p['answer']}. Then 7" for p in problems]

    monkeypatch.setattr(reasoning, "answer_all", fake)
    row, outputs = reasoning.measure_style(model, tok, problems, "zero-shot CoT", max_new_tokens=50, direct_tokens=4)
    assert row["accuracy"] == 1.0 and len(calls) == 2 and [c[1] for c in calls] == [50, 4]
    assert all(p2 == p1 + "so 99 and 98" + reasoning.SECOND_PASS for p1, p2 in zip(calls[0][0], calls[1][0]))
    assert reasoning.SECOND_PASS in outputs[0]["output"]


def test_chat_prompts():
    """With a chat template, the exemplar is an earlier user/assistant exchange and the cue opens the
    assistant's turn."""

    class Chat:
        chat_template = "x"

        @staticmethod
        def apply_chat_template(messages, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}</>" for m in messages) + ("<assistant>" if add_generation_prompt else "")

    problem = reasoning.word_problems(1, 1, seed=0)[0]
    exemplar = reasoning.exemplar_for(1, [problem])
    got = reasoning.prompt_text(Chat(), problem, "few-shot CoT", [exemplar])
    solution = " ".join(exemplar["steps"]) + f" The answer is {exemplar['answer']}."
    assert got == f"<user>{exemplar['question']}</><assistant>{solution}</><user>{problem['question']}</><assistant>"
    assert reasoning.prompt_text(Chat(), problem, "direct").endswith("</><assistant>The answer is")


def test_batched_answers_match_one_at_a_time(tiny):
    model, tok = tiny
    problems = reasoning.word_problems(3, 1, seed=0) + reasoning.word_problems(2, 3, seed=0)  # prompts of several lengths
    prompts = [reasoning.prompt_text(tok, p, "zero-shot CoT") for p in problems]
    reasons: list[str] = []
    batched = reasoning.answer_all(model, tok, prompts, 6, batch_size=4, reasons=reasons)
    alone = [reasoning.answer_all(model, tok, [p], 6)[0] for p in prompts]
    assert batched == alone and len(reasons) == 5 and set(reasons) <= {"eos", "length"}


def test_statistics():
    assert reasoning.standard_error(0.5, 100) == pytest.approx(0.05)
    assert reasoning.standard_error(0.0, 40) == 0.0
    a, b = [True, False, False, True, False], [True, True, False, True, True]
    mean, se = reasoning.paired_difference(a, b)
    d = [0, 1, 0, 0, 1]
    sd = math.sqrt(sum((x - 0.4) ** 2 for x in d) / 4)
    assert mean == pytest.approx(0.4) and se == pytest.approx(sd / math.sqrt(5))
    with pytest.raises(ValueError, match="equally long"):
        reasoning.paired_difference([True], [True, False])
    with pytest.raises(ValueError, match="p must be"):
        reasoning.standard_error(1.5, 10)


def test_measure_style_counts_correct_answers(tiny, monkeypatch):
    """Accuracy is the fraction of problems whose read answer equals the truth (planted outputs)."""
    model, tok = tiny
    problems = reasoning.word_problems(4, 2, seed=0)
    planted = [f" {p['answer']}." for p in problems[:3]] + [" 0."]
    monkeypatch.setattr(reasoning, "answer_all", lambda *a, **k: list(planted))
    row, outputs = reasoning.measure_style(model, tok, problems, "direct")
    assert row["accuracy"] == 0.75 and row["correct"] == [True, True, True, False]
    assert row["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4)) and outputs[3]["read"] == 0.0


def test_command_end_to_end(tmp_path):
    out = tmp_path / "cot.json"
    assert reasoning.main(["--model", "llama-tiny", "--per-level", "2", "--levels", "1", "3", "--max-new-tokens", "8",
                           "--direct-tokens", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"seed", "config", "machine", "rows", "differences", "exemplars", "samples"} <= set(result)
    assert [(r["level"], r["style"]) for r in result["rows"]] == [(lv, s) for lv in (1, 3) for s in reasoning.STYLES]
    assert all(r["n"] == 2 and 0 <= r["accuracy"] <= 1 for r in result["rows"])
    assert len(result["differences"]) == 4 and result["config"]["max_new_tokens"] == 8
    with pytest.raises(ValueError, match="per_level"):
        reasoning.run("llama-tiny", per_level=0)
