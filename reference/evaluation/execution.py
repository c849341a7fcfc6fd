"""Functional correctness of generated code: HumanEval-style problems written for the course, run
against unit tests in a subprocess with a time limit, scored by the unbiased pass@k.

Survey section 2.6(a), static test sets (HumanEval, MBPP). Chen et al., 2021, "Evaluating large
language models trained on code" (sec. 2.1: n samples per problem at temperature > 0, c of them
pass every test, pass@k = 1 - C(n - c, k) / C(n, k) averaged over problems; sec. 2.3: stop
sequences; sec. 2.4 / appendix: run untrusted code in a sandbox).

The prompt is a function's signature and docstring; a base model writes the body (its completion
is cut at the first stop sequence and appended to the prompt), an instruction-tuned model is asked
in a chat turn and writes the whole function in a code block (extracted up to the closing fence).
The program, that code followed by the tests, runs in a fresh `python -I -S` process (isolated
mode, no site-packages: the standard library only) in an empty temporary folder, with the socket
module disabled, a CPU-time and address-space limit, and a wall-clock timeout after which the
whole process group is killed. That is a guard against
accidents (an infinite loop, a stray `rm`, a download), not a security boundary: the course's
problems are harmless and the models small, but a real evaluation of untrusted code runs it in a
container or VM without a network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reference.evaluation.harness import mean_stderr, pass_at_k

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")  # Chen et al., 2021, sec. 2.3
OUTCOMES = ("passed", "failed", "error", "timeout")

# Run before the candidate: no network (a guard, not a sandbox), and the limits of the process.
_PRELUDE = """\
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the course's code sandbox")
socket.socket = socket.create_connection = socket.getaddrinfo = _no_network
del resource, socket, sys, _no_network
"""


@dataclass(frozen=True)
class Problem:
    """One function-completion problem: `prompt` (signature and docstring) is what the model sees;
    `tests` are assert statements run after the completed function; `solution` is a body that
    passes them (the tests are checked against it)."""

    name: str
    prompt: str
    solution: str
    tests: str


def run_program(program: str, timeout: float = 3.0, memory_mb: int = 512) -> dict[str, Any]:
    """Run a Python program in a fresh isolated subprocess; never raises for the program's faults.

    Args:
        program: the source text.
        timeout: wall-clock seconds before the process group is killed (CPU time is capped at the
            next whole second above it too).
        memory_mb: address-space limit of the child.

    Returns:
        {"outcome": "passed" (exit 0) | "failed" (an AssertionError) | "error" (any other
        exception or exit status) | "timeout", "returncode", "stderr" (its last 500 characters),
        "seconds"}.
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be a str, got {type(program).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    prelude = _PRELUDE.format(cpu=int(timeout) + 1, memory=memory_mb * 2**20)
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}  # no proxies, no tokens
    with tempfile.TemporaryDirectory(prefix="course-sandbox-") as folder:
        path = os.path.join(folder, "candidate.py")
        with open(path, "w") as f:
            f.write(prelude + program)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-I", "-S", path], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            _, err = proc.communicate(timeout=timeout)
            outcome = None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
            _, err = proc.communicate()
            outcome = "timeout"
        seconds = time.perf_counter() - start
    text = err.decode(errors="replace")
    if outcome is None:
        if proc.returncode == 0:
            outcome = "passed"
        elif proc.returncode < 0 and -proc.returncode in (signal.SIGXCPU, signal.SIGKILL):
            outcome = "timeout"  # the CPU limit
        else:
            last = text.strip().splitlines()[-1] if text.strip() else ""
            outcome = "failed" if last.startswith("AssertionError") else "error"
    return {"outcome": outcome, "returncode": proc.returncode, "stderr": text[-500:], "seconds": seconds}


def truncate(completion: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to the first stop sequence (the function body the model wrote)."""
    cut = min([i for i in (completion.find(s) for s in stops) if i >= 0], default=len(completion))
    return completion[:cut]


def program_for(problem: Problem, completion: str, chat: bool = False) -> str:
    """The program that is run: for a base model the prompt, the body it wrote (cut at the stop
    sequences) and the tests; for a chat model the code block it wrote (up to the closing fence,
    the answer extraction of an instruction-tuned model) and the tests."""
    code = completion.split("```")[0] if chat else problem.prompt + truncate(completion)
    return code + "\n\n" + problem.tests + "\n"


def check_completion(problem: Problem, completion: str, timeout: float = 3.0, chat: bool = False) -> dict[str, Any]:
    """Run `program_for(problem, completion, chat)`; `run_program`'s result."""
    return run_program(program_for(problem, completion, chat), timeout=timeout)


def _problem(name: str, signature: str, doc: str, solution: str, tests: str) -> Problem:
    prompt = f'{signature}\n    """{doc}"""\n'
    return Problem(name, prompt, solution, tests)


PROBLEMS: tuple[Problem, ...] = (
    _problem("add", "def add(a: int, b: int) -> int:", "Return the sum of a and b.",
             "    return a + b\n", "assert add(2, 3) == 5\nassert add(-4, 4) == 0"),
    _problem("is_even", "def is_even(n: int) -> bool:", "Return True if n is even, else False.",
             "    return n % 2 == 0\n", "assert is_even(4) is True\nassert is_even(7) is False\nassert is_even(0) is True"),
    _problem("maximum", "def maximum(values: list) -> int:", "Return the largest number in a non-empty list.",
             "    return max(values)\n", "assert maximum([3, 9, 2]) == 9\nassert maximum([-5, -2]) == -2"),
    _problem("reverse_string", "def reverse_string(s: str) -> str:", "Return the string s reversed.",
             "    return s[::-1]\n", "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''"),
    _problem("count_vowels", "def count_vowels(text: str) -> int:", "Count the vowels (a, e, i, o, u) in a lower-case text.",
             "    return sum(ch in 'aeiou' for ch in text)\n", "assert count_vowels('hello world') == 3\nassert count_vowels('xyz') == 0"),
    _problem("factorial", "def factorial(n: int) -> int:", "Return n! for n >= 0.",
             "    out = 1\n    for i in range(2, n + 1):\n        out *= i\n    return out\n",
             "assert factorial(0) == 1\nassert factorial(5) == 120"),
    _problem("square_all", "def square_all(values: list) -> list:", "Return a new list with every number squared.",
             "    return [v * v for v in values]\n", "assert square_all([1, 2, 3]) == [1, 4, 9]\nassert square_all([]) == []"),
    _problem("first_word", "def first_word(sentence: str) -> str:", "Return the first word of a sentence of words separated by spaces.",
             "    return sentence.split()[0]\n", "assert first_word('to be or not') == 'to'\nassert first_word('Hamlet') == 'Hamlet'"),
    _problem("is_palindrome", "def is_palindrome(s: str) -> bool:", "Return True if s reads the same forwards and backwards.",
             "    return s == s[::-1]\n", "assert is_palindrome('level') is True\nassert is_palindrome('hamlet') is False"),
    _problem("sum_of_evens", "def sum_of_evens(values: list) -> int:", "Return the sum of the even numbers in the list.",
             "    return sum(v for v in values if v % 2 == 0)\n", "assert sum_of_evens([1, 2, 3, 4]) == 6\nassert sum_of_evens([1, 3]) == 0"),
    _problem("fizzbuzz", "def fizzbuzz(n: int) -> str:",
             "Return 'Fizz' if n is divisible by 3, 'Buzz' if by 5, 'FizzBuzz' if by both, else str(n).",
             "    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n"
             "    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)\n",
             "assert fizzbuzz(9) == 'Fizz'\nassert fizzbuzz(10) == 'Buzz'\nassert fizzbuzz(30) == 'FizzBuzz'\nassert fizzbuzz(7) == '7'"),
    _problem("word_lengths", "def word_lengths(sentence: str) -> dict:",
             "Map each distinct word of a space-separated sentence to its length.",
             "    return {w: len(w) for w in sentence.split()}\n",
             "assert word_lengths('a bb a') == {'a': 1, 'bb': 2}\nassert word_lengths('') == {}"),
    # harder: an edge case or two that a quick guess misses
    _problem("second_largest", "def second_largest(values: list) -> int:",
             "Return the second largest distinct number of a list that holds at least two distinct numbers.",
             "    return sorted(set(values))[-2]\n",
             "assert second_largest([4, 1, 4, 3]) == 3\nassert second_largest([-1, -7]) == -7\nassert second_largest([5, 5, 2]) == 2"),
    _problem("run_length", "def run_length(s: str) -> list:",
             "Run-length encode s as a list of (character, count) tuples, e.g. 'aab' -> [('a', 2), ('b', 1)].",
             "    out = []\n    for ch in s:\n        if out and out[-1][0] == ch:\n            out[-1] = (ch, out[-1][1] + 1)\n"
             "        else:\n            out.append((ch, 1))\n    return out\n",
             "assert run_length('aab') == [('a', 2), ('b', 1)]\nassert run_length('') == []\n"
             "assert run_length('abba') == [('a', 1), ('b', 2), ('a', 1)]"),
    _problem("caesar", "def caesar(text: str, shift: int) -> str:",
             "Shift every lower-case letter of text by shift places in the alphabet (wrapping around); keep other characters.",
             "    return ''.join(chr((ord(c) - 97 + shift) % 26 + 97) if 'a' <= c <= 'z' else c for c in text)\n",
             "assert caesar('abc', 1) == 'bcd'\nassert caesar('xyz', 3) == 'abc'\nassert caesar('a b!', 27) == 'b c!'"),
    _problem("is_prime", "def is_prime(n: int) -> bool:", "Return True if n is a prime number (n may be any integer).",
             "    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))\n",
             "assert is_prime(2) and is_prime(13) and is_prime(97)\nassert not is_prime(1) and not is_prime(0) and not is_prime(-7)\n"
             "assert not is_prime(91) and not is_prime(49)"),
    _problem("balanced", "def balanced(s: str) -> bool:", "Return True if the brackets (), [] and {} in s are balanced and properly nested.",
             "    pairs, stack = {')': '(', ']': '[', '}': '{'}, []\n    for ch in s:\n        if ch in '([{':\n"
             "            stack.append(ch)\n        elif ch in pairs:\n            if not stack or stack.pop() != pairs[ch]:\n"
             "                return False\n    return not stack\n",
             "assert balanced('([]{})') and balanced('a(b)c')\nassert not balanced('(]') and not balanced('((') and not balanced(')(')"),
    _problem("flatten", "def flatten(nested: list) -> list:", "Flatten a list that may contain lists nested to any depth.",
             "    out = []\n    for x in nested:\n        out.extend(flatten(x) if isinstance(x, list) else [x])\n    return out\n",
             "assert flatten([1, [2, [3, [4]]], 5]) == [1, 2, 3, 4, 5]\nassert flatten([]) == []\nassert flatten([[[]]]) == []"),
    _problem("to_roman", "def to_roman(n: int) -> str:", "Write 1 <= n <= 3999 in Roman numerals, e.g. 1994 -> 'MCMXCIV'.",
             "    values = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'), (50, 'L'), (40, 'XL'),\n"
             "              (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n    out = ''\n    for v, r in values:\n"
             "        while n >= v:\n            out, n = out + r, n - v\n    return out\n",
             "assert to_roman(1994) == 'MCMXCIV'\nassert to_roman(4) == 'IV'\nassert to_roman(3999) == 'MMMCMXCIX'"),
    _problem("merge_sorted", "def merge_sorted(a: list, b: list) -> list:",
             "Merge two sorted lists into one sorted list in linear time, without calling sort or sorted.",
             "    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
             "            out.append(a[i])\n            i += 1\n        else:\n            out.append(b[j])\n            j += 1\n"
             "    return out + a[i:] + b[j:]\n",
             "assert merge_sorted([1, 4, 9], [2, 3, 10, 11]) == [1, 2, 3, 4, 9, 10, 11]\nassert merge_sorted([], [1]) == [1]\n"
             "assert merge_sorted([2, 2], [2]) == [2, 2, 2]"),
)  # fmt: skip


CHAT_INSTRUCTION = "Write this Python function. Reply with the code only.\n\n```python\n{prompt}```"


def code_context(lm: Any, problem: Problem, chat: bool) -> str:
    """What the model continues: the bare prompt (a base model completes the body), or for an
    instruction-tuned model a user turn that shows the signature and docstring and an assistant
    reply that opens a code block, in which the model writes the whole function."""
    if not chat:
        return problem.prompt
    return lm.chat_prompt(CHAT_INSTRUCTION.format(prompt=problem.prompt)) + "```python\n"


def evaluate_code(lm: Any, problems: Sequence[Problem] = PROBLEMS, n: int = 5, ks: Sequence[int] = (1, 5),
                  temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 128, seed: int = 0,
                  timeout: float = 3.0, chat: bool = False, batch_problems: int = 4) -> dict[str, Any]:  # fmt: skip
    """pass@k of `lm` (a `HarnessLM`, or anything with its `sample` method) on the problems.

    The n completions of `batch_problems` problems at a time are drawn as one batch (`lm.sample`,
    one seeded generator per batch), each is cut at the stop sequences and run against the tests
    (`check_completion`), and pass@k (Chen et al.'s unbiased estimator) is computed per problem;
    the task's pass@k is its mean over problems, with the standard error over problems.

    Returns:
        `evaluate_task`'s layout: {"task": "course_code", "kind": "code", "n": problems,
        "num_fewshot": 0, "metrics": {"pass@k": {"value", "stderr"}}, "per_item": {"pass@k": [...]},
        "samples": n, "temperature", "top_p", "chat", "outcomes": {outcome: count}, "completions":
        per problem, the first sample's body and every sample's outcome}.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for pass@k sampling, got {temperature!r}")
    bad = [k for k in ks if not isinstance(k, int) or not 1 <= k <= n]
    if bad or not ks:
        raise ValueError(f"ks must be ints in 1..n={n}, got {list(ks)!r}")
    if not isinstance(batch_problems, int) or batch_problems < 1:
        raise ValueError(f"batch_problems must be a positive int, got {batch_problems!r}")
    stops = ("```",) if chat else STOP_SEQUENCES
    per_item: dict[str, list[float]] = {f"pass@{k}": [] for k in ks}
    outcomes = dict.fromkeys(OUTCOMES, 0)
    completions = []
    for start in range(0, len(problems), batch_problems):
        chunk = list(problems[start : start + batch_problems])
        samples = lm.sample([code_context(lm, p, chat) for p in chunk], n, max_new_tokens, temperature=temperature,
                            top_p=top_p, stop=stops, seed=seed * 1000 + start)  # fmt: skip
        for problem, texts in zip(chunk, samples):
            results = [check_completion(problem, text, timeout, chat)["outcome"] for text in texts]
            for outcome in results:
                outcomes[outcome] += 1
            correct = results.count("passed")
            for k in ks:
                per_item[f"pass@{k}"].append(pass_at_k(n, correct, k))
            completions.append({"problem": problem.name, "first_sample": texts[0] if chat else truncate(texts[0]), "outcomes": results})
    metrics = {}
    for name, values in per_item.items():
        mean, stderr = mean_stderr(values)
        metrics[name] = {"value": mean, "stderr": stderr}
    return {"task": "course_code", "kind": "code", "n": len(problems), "num_fewshot": 0, "metrics": metrics,
            "per_item": per_item, "samples": n, "temperature": temperature, "top_p": top_p, "chat": chat,
            "outcomes": outcomes, "completions": completions}  # fmt: skip
