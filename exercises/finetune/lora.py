"""Exercises for Chapter 11: the exercises of `reference/finetune/lora.py`.

Fill in each body that raises NotImplementedError; the docstrings say what to do. The helpers
of the module are exact copies of the reference's, so they run on your code. Grade with
`llm-course grade 11`. Mirrors `reference/finetune/lora.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from reference.runtime import atomic_write
from reference.validation import check_float, check_int

ADAPTER_FORMAT = "understanding-llms/lora-adapter/1"


class LoRALinear(nn.Module):
    """A frozen linear layer plus one or more low-rank adapters, one of them active.

        y = base(x) + (alpha / r) * dropout(x) A^T B^T      (Hu et al., 2021, eq. 3)

    A (r, d_in) is drawn Kaiming-uniform with a = sqrt(5) (what `nn.Linear` and `peft` do) and
    B (d_out, r) is zero, so a new adapter leaves the output unchanged. The base's parameters are
    frozen (requires_grad False); only A and B of each adapter train.

    Args:
        base: the layer to adapt: `nn.Linear`, or any module with `in_features`, `out_features`
            and a forward (x (..., d_in) -> (..., d_out)); a quantized base cannot be merged.
        r: rank of the update (>= 1).
        alpha: the update is scaled by alpha / r.
        dropout: dropout probability on the adapter's input, in [0, 1).
        adapter: the first adapter's name.
        generator: the random source of A's initialisation (None: torch's global one).

    Attributes:
        lora_A, lora_B: `nn.ParameterDict`s {adapter name: A (r, d_in)} and {name: B (d_out, r)}.
        scaling: {name: alpha / r}.
        active_adapter: the adapter the forward adds (None: the base alone).
        merged_adapter: the adapter currently added into the base's weight, or None.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        adapter: str = "default",
        generator: torch.Generator | None = None,
    ) -> None:
        # Hint: freeze the base's parameters, keep its in/out features, make the per-adapter dicts, then add the first adapter.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")

    @property
    def weight(self) -> Tensor:
        """The base's weight (W0, or W0 + BA while merged): what code that reads `layer.weight` expects."""
        return self.base.weight

    def add_adapter(
        self, name: str, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, generator: torch.Generator | None = None
    ) -> None:
        """Add a fresh adapter (A random, B zero) called `name` and make it the active one."""
        # Hint: A is (r, d_in) uniform in +-1/sqrt(d_in) drawn with `generator`; B is (d_out, r) zeros; record alpha / r.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")

    def set_adapter(self, name: str | None) -> None:
        """Make adapter `name` the one the forward adds; None runs the base alone. Refused while merged."""
        # Hint: refuse unknown names, and switching while another adapter is merged.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")

    def delta_weight(self, name: str | None = None) -> Tensor:
        """The update (alpha / r) * B A of adapter `name` (default: the active one), (d_out, d_in)."""
        # Hint: the update has the base weight's shape (d_out, d_in); do not forget the scale.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d_in) -> (..., d_out): the base's output plus the active adapter's, unless it is merged."""
        # Hint: the base's output, plus the scaled low-rank path on the dropped-out input unless it is merged.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")

    @torch.no_grad()
    def merge(self) -> None:
        """Add the active adapter into the base's weight: W <- W + (alpha / r) B A; the forward then skips it."""
        # Hint: change the base weight in place, without autograd; remember what is merged.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapter from the base's weight again: W <- W - (alpha / r) B A."""
        # Hint: the exact inverse of merge.
        raise NotImplementedError("Exercise 11.1: LoRA linear layer")


def _weight_like(base: nn.Module) -> Tensor:
    """A tensor with the dtype and device the adapter should have: the base's weight, or its compute dtype."""
    weight = getattr(base, "weight", None)
    if isinstance(weight, Tensor) and weight.is_floating_point() and not weight.is_meta:
        return weight
    dtype = getattr(base, "compute_dtype", torch.float32)
    device = next((t.device for t in base.buffers()), torch.device("cpu"))
    return torch.empty(0, dtype=dtype, device=device)


def _mergeable_weight(base: nn.Module) -> Tensor:
    weight = getattr(base, "weight", None)
    if not isinstance(base, nn.Linear) or not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise ValueError(f"cannot merge into a {type(base).__name__}: only a floating-point nn.Linear holds W0 + BA exactly "
                         "(dequantize a quantized base first)")
    return weight


# ----------------------------------------------------------------------------------------------
# Whole models: injection by name, switching, merging, adapter files
# ----------------------------------------------------------------------------------------------


def _matches(name: str, targets: str | Sequence[str]) -> bool:
    if isinstance(targets, str):  # a regular expression over the full dotted name
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)  # peft's convention: name suffixes


def inject_lora(
    model: nn.Module,
    targets: str | Sequence[str],
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    adapter: str = "default",
    seed: int = 0,
) -> list[str]:
    """Wrap every sub-module of `model` whose name matches `targets` in a `LoRALinear`, in place.

    Every parameter of the model is frozen first, so afterwards only the adapters train. A
    matching module that is a `LoRALinear` already gets one more adapter `adapter` (several
    adapters on one base); a matching module that is neither linear-like nor a `LoRALinear` is
    refused. The adapters' A matrices are drawn from one generator seeded with `seed`, in the
    order of `model.named_modules()`, so the same call gives the same adapters.

    Args:
        model: e.g. a `reference.models.TransformerLM`.
        targets: a regular expression matched against the whole dotted module name
            (r"layers\\.\\d+\\.attn\\.(q|v)_proj"), or a sequence of name endings as in `peft`
            (["q_proj", "v_proj"]: a name equal to one or ending in "." + one).
        r, alpha, dropout: the adapter's rank, scale numerator and input dropout (`LoRALinear`).
        adapter: the adapter's name; it becomes the active one.
        seed: seed of the initialisation of the A matrices.

    Returns:
        The names of the wrapped modules, in order. ValueError if none matches.
    """
    # Hint: freeze everything first; walk named_modules() once (a snapshot), skip what lies inside a LoRA layer, replace the child on its parent.
    raise NotImplementedError("Exercise 11.2: inject LoRA by name pattern")


def _inside_lora(model: nn.Module, name: str) -> bool:
    """Whether `name` lies inside a LoRALinear (its base, its A and B), which is never wrapped again."""
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:k])), LoRALinear) for k in range(1, len(parts)))


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{name: LoRALinear} of the model, in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _layers_or_raise(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers: call inject_lora first")
    return layers


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Switch every LoRA layer to adapter `name` (None: the base model alone)."""
    for layer in _layers_or_raise(model).values():
        layer.set_adapter(name)


def merge_lora(model: nn.Module) -> None:
    """Merge the active adapter into every LoRA layer's base weight (`LoRALinear.merge`)."""
    for layer in _layers_or_raise(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora` in every LoRA layer."""
    for layer in _layers_or_raise(model).values():
        layer.unmerge()


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Bake the active adapter into each base and put the plain base layers back, in place.

    Afterwards the model holds no LoRA module: it has exactly the base's architecture and speed,
    with W = W0 + (alpha / r) B A (what `peft`'s `merge_and_unload()` returns). The other
    adapters are dropped. Returns the model.
    """
    # Hint: merge each LoRA layer that is not merged yet, then put its base back where the wrapper was.
    raise NotImplementedError("Exercise 11.3: merge and unload")


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, Tensor]:
    """Adapter `name`'s weights only: {"<layer>.lora_A": A, "<layer>.lora_B": B} for every LoRA layer."""
    state = {}
    for layer_name, layer in _layers_or_raise(model).items():
        if name not in layer.lora_A:
            raise ValueError(f"layer {layer_name} has no adapter {name!r}")
        state[f"{layer_name}.lora_A"] = layer.lora_A[name].detach()
        state[f"{layer_name}.lora_B"] = layer.lora_B[name].detach()
    return state


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter `name` (its A and B of every layer, and each layer's r and alpha) to a
    safetensors file, atomically; returns the path. The base model is not written."""
    from safetensors.torch import save

    layers = _layers_or_raise(model)
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    config = {layer_name: {"r": layer.rank[name], "alpha": layer.alpha[name]} for layer_name, layer in layers.items()}
    metadata = {"format": ADAPTER_FORMAT, "adapter": name, "layers": json.dumps(config)}
    data = save(state, metadata=metadata)
    with atomic_write(path, "wb") as file:
        file.write(data)
    return Path(path)


def read_adapter_file(path: str | os.PathLike) -> tuple[str, dict[str, dict[str, Any]], dict[str, Tensor]]:
    """The contents of an adapter file written by `save_adapter`: (adapter name, {layer: {"r", "alpha"}},
    {"<layer>.lora_A": A of shape (r, in), "<layer>.lora_B": B of shape (out, r)}).

    FileNotFoundError if there is no file; ValueError if it is not this course's adapter format or
    its tensors do not match its layer list.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}")
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != ADAPTER_FORMAT:
            raise ValueError(f"{path} is not a LoRA adapter file of this course (format {metadata.get('format')!r})")
        config = json.loads(metadata["layers"])
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    expected = {f"{layer}.lora_{m}" for layer in config for m in "AB"}
    if set(tensors) != expected:
        raise ValueError(f"{path}: tensors {sorted(set(tensors) ^ expected)[:3]} do not match its layer list")
    return metadata["adapter"], config, tensors


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str | None = None) -> str:
    """Load an adapter file written by `save_adapter` into `model` as adapter `name` (default: the
    name it was saved under) and make it active; returns the name.

    Layers the model does not wrap yet are wrapped (the base frozen); every layer of the file must
    exist in the model as a linear layer with the file's shapes, else ValueError naming it.
    """
    saved_name, config, tensors = read_adapter_file(path)
    name = saved_name if name is None else name
    modules = dict(model.named_modules())
    for layer_name, spec in config.items():
        module = modules.get(layer_name)
        if module is None:
            raise ValueError(f"{path} adapts {layer_name!r}, which {type(model).__name__} does not have")
        a, b = tensors[f"{layer_name}.lora_A"], tensors[f"{layer_name}.lora_B"]
        if not isinstance(module, LoRALinear):
            if not (hasattr(module, "in_features") and hasattr(module, "out_features")):
                raise ValueError(f"{path} adapts {layer_name!r}, a {type(module).__name__}, not a linear layer")
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            parent, _, child = layer_name.rpartition(".")
            module = LoRALinear(module, r=spec["r"], alpha=spec["alpha"], adapter=name)
            setattr(model.get_submodule(parent) if parent else model, child, module)
        else:
            module.add_adapter(name, r=spec["r"], alpha=spec["alpha"])
        if a.shape != module.lora_A[name].shape or b.shape != module.lora_B[name].shape:
            raise ValueError(f"{path}: {layer_name} has A {tuple(a.shape)}, B {tuple(b.shape)}; the model's layer needs "
                             f"{tuple(module.lora_A[name].shape)}, {tuple(module.lora_B[name].shape)}")
        with torch.no_grad():
            module.lora_A[name].copy_(a)
            module.lora_B[name].copy_(b)
        module.set_adapter(name)
    return name


def lora_config(model: nn.Module) -> dict[str, Any]:
    """{layer name: {adapter: {"r", "alpha"}}} of every LoRA layer: what the model carries."""
    return {n: {a: {"r": m.rank[a], "alpha": m.alpha[a]} for a in m.lora_A} for n, m in _layers_or_raise(model).items()}
