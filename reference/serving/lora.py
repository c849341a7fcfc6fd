"""Many LoRA adapters in one batch over one base model (S-LoRA, Punica).

Survey section 4 (fine-tuned local deployment) and 2.5(c); Sheng et al., 2023, "S-LoRA: Serving
Thousands of Concurrent LoRA Adapters"; Chen et al., 2023, "Punica: Multi-Tenant LoRA Serving".
A LoRA adapter (Chapter 11, `reference.finetune.lora`) changes a frozen linear layer W0 by
(alpha / r) B A. Merging it into W0 gives one model per adapter: serving k adapters would hold k
copies of the weights and could batch only requests of the same adapter. Keeping the adapters
apart costs little, because the update is a sum:

    y_b = W0 x_b + (alpha_i / r_i) B_i A_i x_b,          i = i(b), the adapter of row b,

so the base matmul W0 X is shared by every row of the batch, whatever its adapter, and each row
then adds its own low-rank term. `MultiLoRALinear` stacks the adapters of one layer into
A: (slots, r_max, d_in), B: (slots, d_out, r_max) (slot 0 is "no adapter", zeros; ranks below
r_max padded with zeros, which changes nothing) and *gathers* each row's pair by its slot index,
Punica's BGMV ("batched gather matrix-vector") in PyTorch: two batched products of size r.

`LoRARegistry` reads adapters in Chapter 11's format (a `save_adapter` file, a model carrying
`LoRALinear` layers, or an `adapter_state_dict` with its alpha), wraps the layers they adapt in
the served model (in place; the base weights are untouched) and sets each forward's row slots.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from reference.finetune.lora import LoRALinear, lora_layers, read_adapter_file
from reference.validation import check_float

AdapterWeights = dict[str, tuple[Tensor, Tensor, float]]  # layer name -> (A (r, d_in), B (d_out, r), alpha / r)


def read_adapter(source, *, alpha: float | None = None, adapter: str | None = None) -> AdapterWeights:
    """One adapter's weights, {layer name: (A, B, alpha / r)}, from Chapter 11's formats.

    Args:
        source: a path to a file written by `reference.finetune.lora.save_adapter`; or a model
            with `LoRALinear` layers (its adapter `adapter`, default each layer's active one); or a
            state dict {"<layer>.lora_A": A, "<layer>.lora_B": B} (`adapter_state_dict`), with `alpha`.
        alpha: the scale numerator, for a state dict only (r is A's first dimension).
        adapter: which adapter of a model to read.
    """
    if isinstance(source, (str, os.PathLike)):
        _, config, tensors = read_adapter_file(source)
        return {layer: (tensors[f"{layer}.lora_A"], tensors[f"{layer}.lora_B"], spec["alpha"] / spec["r"])
                for layer, spec in config.items()}  # fmt: skip
    if isinstance(source, nn.Module):
        layers = lora_layers(source)
        if not layers:
            raise ValueError(f"{type(source).__name__} has no LoRA layers to read an adapter from")
        weights = {}
        for layer_name, layer in layers.items():
            name = layer.active_adapter if adapter is None else adapter
            if name not in layer.lora_A:
                raise ValueError(f"layer {layer_name} has no adapter {name!r}; it has {list(layer.lora_A)}")
            weights[layer_name] = (layer.lora_A[name].detach(), layer.lora_B[name].detach(), layer.scaling[name])
        return weights
    if isinstance(source, Mapping):
        if alpha is None:
            raise ValueError("an adapter state dict carries no alpha: pass alpha= (the scale is alpha / r)")
        alpha = check_float("alpha", alpha, positive=True)
        layers = sorted({key.rsplit(".", 1)[0] for key in source})
        weights = {}
        for layer in layers:
            a, b = source.get(f"{layer}.lora_A"), source.get(f"{layer}.lora_B")
            if not isinstance(a, Tensor) or not isinstance(b, Tensor):
                raise ValueError(f"adapter state dict: {layer} needs both {layer}.lora_A and {layer}.lora_B tensors")
            weights[layer] = (a.detach(), b.detach(), alpha / a.shape[0])
        return weights
    raise TypeError(f"an adapter must be a file path, a model with LoRA layers or a state dict, got {type(source).__name__}")


def lora_delta(x: Tensor, row_slots: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: Tensor) -> Tensor:
    """Each row's own low-rank update, scaling[s_b] * B[s_b] A[s_b] x[b], s_b = row_slots[b].

    S-LoRA / Punica's gathered product (BGMV): the rows of one batch use different adapters, so each
    row's A and B are gathered from the stacks by its slot, then two batched products of size r
    follow. Slot 0 is the base model (its A and B are zeros); ranks below r are zero-padded.

    Args:
        x: (batch, ..., d_in), the layer's input.
        row_slots: (batch,) integer slot of each row's adapter.
        lora_A: (slots, r, d_in) stacked A matrices.
        lora_B: (slots, d_out, r) stacked B matrices.
        scaling: (slots,) alpha / r of each slot.

    Returns:
        (batch, ..., d_out) in lora_A's dtype: what row b adds to the base layer's output.
    """
    a, b = lora_A[row_slots], lora_B[row_slots]  # gathered per row: (batch, r, d_in), (batch, d_out, r)
    h = torch.einsum("b...i,bri->b...r", x.to(a.dtype), a)  # (batch, ..., r)
    scale = scaling[row_slots].view(-1, *[1] * (x.dim() - 1))
    return torch.einsum("b...r,bor->b...o", h, b) * scale


class MultiLoRALinear(nn.Module):
    """A frozen linear layer and a stack of LoRA adapters, each row of the batch with its own.

        y[b] = base(x[b]) + scaling[s_b] * B[s_b] A[s_b] x[b],     s_b = row_slots[b] (0: base only)

    Args:
        base: the layer to wrap (nn.Linear-like).
        delta_fn: the per-row update (`lora_delta`, or a learner's).

    Attributes:
        base: the wrapped layer (its weight is not changed).
        lora_A: (slots, r_max, d_in); lora_B: (slots, d_out, r_max); scaling: (slots,). Slot 0 is zeros.
        row_slots: (batch,) slot of each row of the next forward, or None (every row: the base).
    """

    def __init__(self, base: nn.Module, delta_fn=lora_delta) -> None:
        super().__init__()
        self.delta_fn = delta_fn
        if isinstance(base, LoRALinear) or not (hasattr(base, "in_features") and hasattr(base, "out_features")):
            raise TypeError(f"MultiLoRALinear wraps a plain linear layer, got {type(base).__name__}")
        self.base = base
        self.in_features, self.out_features = int(base.in_features), int(base.out_features)
        weight = base.weight
        self.register_buffer("lora_A", torch.zeros(1, 1, self.in_features, dtype=weight.dtype, device=weight.device))
        self.register_buffer("lora_B", torch.zeros(1, self.out_features, 1, dtype=weight.dtype, device=weight.device))
        self.register_buffer("scaling", torch.zeros(1, dtype=weight.dtype, device=weight.device))
        self.row_slots: Tensor | None = None

    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @torch.no_grad()
    def set_slot(self, slot: int, a: Tensor | None, b: Tensor | None, scaling: float = 0.0) -> None:
        """Put an adapter's A (r, d_in), B (d_out, r) into `slot` (None: clear it), growing the stack as needed."""
        r = 0 if a is None else a.shape[0]
        if a is not None and (a.shape != (r, self.in_features) or b.shape != (self.out_features, r)):
            raise ValueError(f"A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a layer of "
                             f"{self.in_features} -> {self.out_features} features")  # fmt: skip
        slots, r_max = max(self.lora_A.shape[0], slot + 1), max(self.lora_A.shape[1], r)
        if (slots, r_max) != tuple(self.lora_A.shape[:2]):
            old_a, old_b, old_s = self.lora_A, self.lora_B, self.scaling
            self.lora_A = old_a.new_zeros(slots, r_max, self.in_features)
            self.lora_B = old_b.new_zeros(slots, self.out_features, r_max)
            self.scaling = old_s.new_zeros(slots)
            self.lora_A[: old_a.shape[0], : old_a.shape[1]] = old_a
            self.lora_B[: old_b.shape[0], :, : old_b.shape[2]] = old_b
            self.scaling[: old_s.shape[0]] = old_s
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scaling[slot] = scaling if a is not None else 0.0
        if a is not None:
            self.lora_A[slot, :r] = a.to(self.lora_A)
            self.lora_B[slot, :, :r] = b.to(self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, ..., d_in) -> (batch, ..., d_out): the shared base product, then each row's own adapter."""
        y = self.base(x)
        slots = self.row_slots
        if slots is None or not bool((slots > 0).any()):
            return y
        if slots.shape[0] != x.shape[0]:
            raise ValueError(f"row_slots has {slots.shape[0]} rows, the input {x.shape[0]}")
        return y + self.delta_fn(x, slots, self.lora_A, self.lora_B, self.scaling).to(y.dtype)


class LoRARegistry:
    """The adapters a served model can run, by name, and the layers they live in.

    `add(name, source)` reads an adapter (`read_adapter`), wraps the layers it adapts in
    `MultiLoRALinear` (in place) and gives it a slot; `slot(name)` is ValueError for an unknown
    name; `rows(slots)` sets every wrapped layer's row slots for one forward pass.
    """

    def __init__(self, model: nn.Module, delta_fn=lora_delta) -> None:
        self.model, self.delta_fn = model, delta_fn
        self.slots: dict[str, int] = {}
        self.layers: dict[str, MultiLoRALinear] = {}
        self.ranks: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def add(self, name: str, source, *, alpha: float | None = None, adapter: str | None = None) -> None:
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"an adapter name must be a non-empty string without ':', got {name!r}")
        if name in self.slots:
            raise ValueError(f"adapter {name!r} is registered already (remove it first)")
        weights = read_adapter(source, alpha=alpha, adapter=adapter)
        modules = dict(self.model.named_modules())
        for layer_name, (a, b, _) in weights.items():  # check everything before changing anything
            module = modules.get(layer_name)
            if module is None:
                raise ValueError(f"adapter {name!r} adapts {layer_name!r}, which {type(self.model).__name__} does not have")
            if not isinstance(module, MultiLoRALinear) and not (hasattr(module, "in_features") and hasattr(module, "weight")):
                raise ValueError(f"adapter {name!r} adapts {layer_name!r}, a {type(module).__name__}, not a linear layer")
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != module.in_features or b.shape != (module.out_features, a.shape[0]):
                raise ValueError(f"adapter {name!r}: {layer_name} has A {tuple(a.shape)}, B {tuple(b.shape)}; the layer is "
                                 f"{module.in_features} -> {module.out_features}")  # fmt: skip
        slot = 1 + max(self.slots.values(), default=0)
        for layer_name, (a, b, scaling) in weights.items():
            layer = self.layers.get(layer_name)
            if layer is None:
                layer = MultiLoRALinear(modules[layer_name], self.delta_fn)
                parent, _, child = layer_name.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
                self.layers[layer_name] = layer
            layer.set_slot(slot, a, b, scaling)
        for layer in self.layers.values():
            if layer.lora_A.shape[0] <= slot:
                layer.set_slot(slot, None, None)  # layers this adapter leaves alone: zeros
        self.slots[name] = slot
        self.ranks[name] = max(a.shape[0] for a, _, _ in weights.values())

    def remove(self, name: str) -> None:
        slot = self.slot(name)
        for layer in self.layers.values():
            layer.set_slot(slot, None, None)
        del self.slots[name], self.ranks[name]

    def slot(self, name: str | None) -> int:
        """The slot of adapter `name` (None: 0, the base model); ValueError naming an unknown adapter."""
        if name is None:
            return 0
        if name not in self.slots:
            known = ", ".join(repr(n) for n in self.slots) or "none"
            raise ValueError(f"unknown LoRA adapter {name!r}; registered adapters: {known}")
        return self.slots[name]

    @contextmanager
    def rows(self, slots: Sequence[int], device=None):
        """Run the forward inside with row b using adapter slot slots[b]."""
        index = torch.tensor(list(slots), device=device)
        for layer in self.layers.values():
            layer.row_slots = index
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.row_slots = None
