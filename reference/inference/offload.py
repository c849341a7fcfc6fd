"""Memory scheduling: run a model layer by layer with its weights off the compute device (BMInf-style).

Survey section 3.2. When a model does not fit in the accelerator's memory, its blocks can live
elsewhere (host memory, or the model file on disk, memory-mapped and dequantised when needed) and
be brought in one at a time: BMInf (Han et al., 2022) runs 10-billion-parameter models on a consumer
GPU this way, overlapping the transfer of block i + 1 with the computation of block i. The price
is bandwidth: every forward moves every block's weights once, unless the budget keeps some resident.

`OffloadedLM` wraps a `TransformerLM`: the embedding, the final norm and the head stay resident;
each block's weights are fetched from a `source` (host copies, or `GGUFLayerSource`: the GGUF file)
just before the block runs, while a side thread fetches the next block (a side CUDA stream on a
GPU would do the copy; on a CPU the thread dequantises). Resident blocks never hold more than
`budget_bytes`: before a block is loaded, the most recently used others are evicted until it fits
(the right choice for the cyclic sweep of a forward),
and the prefetch is skipped when it would not fit. `peak_resident_bytes` records the most ever held.
It is a `nn.Module` whose forward is the model's, so `reference.inference.generate` runs on it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn

from reference.validation import check_int

LayerSource = Callable[[int], dict[str, Tensor]]  # block index -> {parameter name within the block: tensor}


class HostLayerSource:
    """Every block's weights as host copies (detached clones), fetched by copying to the device."""

    def __init__(self, model: nn.Module) -> None:
        self.weights = [{n: p.detach().clone().cpu() for n, p in block.named_parameters()} for block in model.layers]

    def __call__(self, i: int) -> dict[str, Tensor]:
        return self.weights[i]


class GGUFLayerSource:
    """Blocks read from a GGUF file (memory-mapped by `reference.models.gguf.GGUFFile`) and dequantised on arrival."""

    def __init__(self, path: Any) -> None:
        from reference.models import gguf

        self.file = path if isinstance(path, gguf.GGUFFile) else gguf.GGUFFile(path)
        config = gguf.llama_config(self.file)
        self.heads, self.kv = config["num_heads"], config["num_kv_heads"]
        self.names = {pattern: ours.split("}.", 1)[1] for pattern, ours in gguf.LLAMA_TENSOR_NAMES.items() if "{i}" in pattern}
        self._gguf = gguf

    def __call__(self, i: int) -> dict[str, Tensor]:
        out = {}
        for pattern, ours in self.names.items():
            weight = torch.from_numpy(self.file.dequantize(pattern.format(i=i)))
            heads = self.heads if "attn_q" in pattern else self.kv if "attn_k" in pattern else None
            out[ours] = self._gguf.unpermute_rope_rows(weight, heads) if heads else weight
        return out


def _block_bytes(block: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in block.parameters())


class OffloadedLM(nn.Module):
    """A TransformerLM whose blocks are fetched on demand under a memory budget (see the module docstring).

    Args:
        model: the model; its blocks' weights are released (replaced by empty tensors) at once.
        budget_bytes: the most bytes the resident blocks may hold (at least one block's).
        source: where block weights come from (default: host copies of `model`'s weights).
        prefetch: fetch block i + 1 on a side thread while block i runs (when the budget allows).
    """

    def __init__(self, model: nn.Module, budget_bytes: int, *, source: LayerSource | None = None, prefetch: bool = True) -> None:
        super().__init__()
        check_int("budget_bytes", budget_bytes, 1)
        self.block_bytes = [_block_bytes(b) for b in model.layers]
        if budget_bytes < max(self.block_bytes):
            raise ValueError(f"budget_bytes={budget_bytes} is less than one block ({max(self.block_bytes)} bytes)")
        self.source = HostLayerSource(model) if source is None else source
        self.model, self.budget, self.prefetch = model, budget_bytes, prefetch
        self.config, self.context_length = model.config, model.context_length
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.resident: OrderedDict[int, int] = OrderedDict()  # block -> bytes, in order of use (most recent last)
        self.resident_bytes = self.peak_resident_bytes = 0
        self.loads = self.prefetched = 0
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        for i, block in enumerate(model.layers):
            self._release(block)
            block.register_forward_pre_hook(self._hook(i))

    # -- moving weights ---------------------------------------------------------------------------

    def _release(self, block: nn.Module) -> None:
        for p in block.parameters():
            p.data = torch.empty(0, device=self.device, dtype=p.dtype)

    def _fetch(self, i: int) -> dict[str, Tensor]:
        """Read block i from the source and move it to the device (runs on the side thread when prefetching)."""
        return {n: t.to(self.device, self.dtype, copy=True) for n, t in self.source(i).items()}

    def _make_room(self, need: int, keep: set[int]) -> bool:
        """Evict the most recently used blocks (not in `keep`) until `need` more bytes fit; False if they cannot.

        A forward sweeps the blocks in order, a cyclic pattern for which evicting the least recently
        used is the worst choice (each block is evicted just before it is needed again); evicting the
        most recently used keeps a fixed set of blocks resident and re-fetches only the others.
        """
        while self.resident_bytes + need > self.budget:
            victim = next((j for j in reversed(self.resident) if j not in keep and j not in self._pending), None)
            if victim is None:
                return False
            self._release(self.model.layers[victim])
            self.resident_bytes -= self.resident.pop(victim)
        return True

    def _reserve(self, i: int, keep: set[int]) -> bool:
        with self._lock:
            if i in self.resident or i in self._pending:
                return True
            if not self._make_room(self.block_bytes[i], keep):
                return False
            self.resident[i] = self.block_bytes[i]  # reserved: counted from now on
            self.resident_bytes += self.block_bytes[i]
            self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)
            return True

    def _install(self, i: int, weights: dict[str, Tensor]) -> None:
        params = dict(self.model.layers[i].named_parameters())
        for name, tensor in weights.items():
            if name not in params or params[name].dtype != tensor.dtype:
                raise ValueError(f"block {i}: weight {name!r} does not fit the model")
            params[name].data = tensor

    def ensure(self, i: int) -> None:
        """Make block i resident (waiting for its prefetch if one is under way), then prefetch block i + 1."""
        if i in self._pending:
            self._install(i, self._pending.pop(i).result())
        elif i not in self.resident:
            if not self._reserve(i, keep={i}):
                raise RuntimeError(f"block {i} does not fit the budget")  # cannot happen: checked at construction
            self._install(i, self._fetch(i))
            self.loads += 1
        self.resident.move_to_end(i)
        nxt = (i + 1) % len(self.model.layers)
        if self.prefetch and nxt != i and nxt not in self.resident and self._reserve(nxt, keep={i, nxt}):
            self._pending[nxt] = self._pool.submit(self._fetch, nxt)
            self.loads += 1
            self.prefetched += 1

    def _hook(self, i: int):
        def hook(module, args, kwargs=None):
            self.ensure(i)

        return hook

    # -- the model's interface ---------------------------------------------------------------------

    def forward(self, *args, **kwargs) -> Tensor:
        """The wrapped model's forward (blocks fetched as they run)."""
        return self.model(*args, **kwargs)

    def parameters(self, recurse: bool = True):  # the resident ones: what generate reads device and dtype from
        return self.model.parameters(recurse)

    def close(self) -> None:
        """Stop the prefetch thread."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
