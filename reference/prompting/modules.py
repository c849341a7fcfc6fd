"""Continuous prompts that attach to any course decoder without changing its code.

Survey section 1.2(b), "automatically generated continuous templates" and "fixed-LM prompt tuning".
Three ways to steer a frozen language model with a few learned vectors:

- **Soft prompt** (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt
  Tuning"): n vectors P (n, d_model) are prepended to the input embeddings,
  x_0 = [P; E[ids]]. Initialised from a text's token embeddings, it *is* that text as a hard prompt.
- **P-tuning** (Liu et al., 2021, "GPT Understands, Too"): the n prompt vectors come out of a small
  prompt encoder, P = MLP(BiLSTM(H)) (or an MLP alone) over n free embeddings H; the encoder
  couples the vectors and makes them easier to optimise. Same layout as `peft.PromptEncoder`.
- **Prefix tuning** (Li & Liang, 2021, "Prefix-Tuning"): every layer's attention gets n extra
  keys and values, K_l' = [K_l^prefix; K_l], V_l' = [V_l^prefix; V_l], that every real token attends
  to. Optionally reparameterised, [K; V] = MLP(P') with a two-layer tanh MLP over n embeddings P'
  (the MLP is dropped after training: `PrefixTuning.materialize`). Without it, per-layer prefixes
  are P-tuning v2 (Liu et al., 2022). The flat parameter layout is peft's `PrefixTuning`'s:
  (n, num_layers * 2 * kv_heads * head_dim), i.e. (n, layer, key|value, kv_head, head_dim).

API (stable: Chapter 11 builds on it)
-------------------------------------
``SoftPrompt(num_tokens, d_model)``, ``SoftPrompt.from_text(model, token_ids)``;
    ``soft(batch) -> (batch, n, d_model)``.
``PromptEncoder(num_tokens, d_model, hidden_size=None, kind="lstm" | "mlp")``;
    ``encoder(batch) -> (batch, n, d_model)``.
``PrefixTuning(num_layers, num_kv_heads, head_dim, num_tokens, reparameterize=False, d_model=None,
    hidden_size=512)``, ``PrefixTuning.for_model(model, num_tokens, ...)``,
    ``PrefixTuning.from_text(model, token_ids)`` (the keys and values the model computes for a text),
    ``prefix.flat() -> (n, L * 2 * H * D)`` (peft's layout), ``prefix.load_flat(w)``,
    ``prefix.key_values(batch) -> [(k, v)] * L`` with k, v (batch, kv_heads, n, head_dim),
    ``prefix.materialize() -> PrefixTuning`` (reparameterisation folded away).
``PromptedLM(model, prompt=None, prefix=None, freeze_model=True)``;
    ``wrapped(token_ids, **model_kwargs) -> (batch, seq, vocab)``: the logits of the real tokens
    only (soft-prompt positions are dropped), in the base model's own forward.
``freeze(module) -> module``: every parameter's requires_grad set to False.
``count_parameters(module, trainable_only=False) -> int`` (shared tensors counted once).
``attention_layers(model) -> list[MultiHeadAttention]``: the self-attentions a prefix attaches to.
``prepend_prompt(embeddings, prompt, attention_mask=None) -> (embeddings', mask')`` and
``prefix_key_values(flat, num_layers, num_kv_heads, head_dim, batch) -> [(k, v)] * L``: the two
    tensor operations underneath (Exercises 3.1 and 3.2).

How they attach. The base model's forward runs unchanged; two kinds of PyTorch hooks, registered
only for the duration of one call, do the rest:
- a forward hook on `model.token_embeddings` overwrites the first n positions (placeholder ids 0)
  with the soft prompt;
- a forward pre-hook on each layer's self-attention (`layers[i].attn`, a
  `reference.attention.MultiHeadAttention`) hands it a key/value "cache" whose `update(k, v)` returns
  [prefix; k], [prefix; v], and widens the attention mask by n always-visible columns.
Positions: real tokens follow the prefix, as in Hugging Face with `past_key_values` (and peft):
with a prefix of n_p and a soft prompt of n_s, the soft prompt sits at n_p .. n_p + n_s - 1 and the
text after it. Rotary models (`TransformerLM`) get `positions=`; models with a learned
`position_embeddings` table (GPT-2, BERT) get their positions shifted by n_p through a pre-hook.
Works for `reference.models.llama.TransformerLM`, `reference.models.gpt.GPT2` and
`reference.models.encoder.BertForMaskedLM` (the MLM also takes `attention_mask=`, widened for the
soft prompt). Batches are padded on the right (causal models need no mask then).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from reference.attention import MultiHeadAttention
from reference.validation import check_bool, check_int

__all__ = [
    "SoftPrompt", "PromptEncoder", "PrefixTuning", "PromptedLM", "freeze", "count_parameters", "attention_layers",
    "prepend_prompt", "prefix_key_values",
]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def freeze(module: nn.Module) -> nn.Module:
    """Set requires_grad=False on every parameter of `module` (in place); returns it."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalars in `module`'s parameters (a tied weight counted once); only those with
    requires_grad when `trainable_only`."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    check_bool("trainable_only", trainable_only)
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    """The self-attention of every layer of a course model (`model.layers[i].attn`), in order."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(isinstance(getattr(b, "attn", None), MultiHeadAttention) for b in layers):
        raise ValueError(f"{type(model).__name__} has no `layers` of blocks with a MultiHeadAttention `attn`: "
                         "prefixes attach to the course's TransformerLM, GPT2 and BertForMaskedLM")
    return [b.attn for b in layers]


def _model_dims(model: nn.Module) -> tuple[int, int, int, int]:
    """(num_layers, num_kv_heads, head_dim, d_model) of a course model."""
    attns = attention_layers(model)
    a = attns[0]
    return len(attns), a.num_kv_heads, a.head_dim, a.d_model


def _check_batch(batch: object) -> int:
    return check_int("batch", batch, 1)


def prepend_prompt(embeddings: Tensor, prompt: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Put a soft prompt in front of a batch of input embeddings: x_0 = [P; E[ids]] (Lester et al., 2021).

    Args:
        embeddings: the text's embeddings, (batch, seq, d_model).
        prompt: the prompt, (n, d_model) shared by every row, or (batch, n, d_model) per row.
        attention_mask: None, or (batch, seq) with 1/True at real tokens and 0/False at padding.

    Returns:
        (batch, n + seq, d_model) embeddings (the prompt cast to the embeddings' dtype), and the mask
        widened to (batch, n + seq) with the prompt's positions real (None stays None), in the
        mask's dtype.
    """
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 3 or not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a floating (batch, seq, d_model) tensor, got {getattr(embeddings, 'shape', type(embeddings).__name__)}")
    if not isinstance(prompt, Tensor) or prompt.dim() not in (2, 3) or prompt.shape[-1] != embeddings.shape[-1]:
        raise ValueError(f"prompt must be (n, d_model={embeddings.shape[-1]}) or (batch, n, d_model), got {getattr(prompt, 'shape', type(prompt).__name__)}")
    batch = embeddings.shape[0]
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(batch, -1, -1)
    elif prompt.shape[0] != batch:
        raise ValueError(f"prompt has batch {prompt.shape[0]}, the embeddings {batch}")
    x = torch.cat([prompt.to(embeddings.dtype), embeddings], dim=1)
    if attention_mask is None:
        return x, None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != embeddings.shape[:2]:
        raise ValueError(f"attention_mask must be (batch, seq) = {tuple(embeddings.shape[:2])}, got {getattr(attention_mask, 'shape', attention_mask)}")
    return x, torch.cat([attention_mask.new_ones(batch, prompt.shape[1]), attention_mask], dim=1)


def prefix_key_values(flat: Tensor, num_layers: int, num_kv_heads: int, head_dim: int, batch: int) -> list[tuple[Tensor, Tensor]]:
    """Cut a flat prefix into every layer's keys and values (peft's `PrefixTuning` layout).

    Row t of `flat` is virtual token t's keys and values at every layer, laid out as
    (num_layers, 2, num_kv_heads, head_dim): index [l, 0] is its key at layer l, [l, 1] its value.

    Args:
        flat: (n, num_layers * 2 * num_kv_heads * head_dim).
        num_layers, num_kv_heads, head_dim: the model's attention shape.
        batch: rows to broadcast to (>= 1).

    Returns:
        num_layers pairs (keys, values), each (batch, num_kv_heads, n, head_dim): the layout that
        attention's key/value cache holds, the same prefix in every row.
    """
    num_layers, num_kv_heads = check_int("num_layers", num_layers, 1), check_int("num_kv_heads", num_kv_heads, 1)
    head_dim, batch = check_int("head_dim", head_dim, 1), _check_batch(batch)
    width = num_layers * 2 * num_kv_heads * head_dim
    if not isinstance(flat, Tensor) or flat.dim() != 2 or flat.shape[1] != width:
        raise ValueError(f"flat must be (n, num_layers * 2 * num_kv_heads * head_dim = {width}), got {getattr(flat, 'shape', type(flat).__name__)}")
    n = flat.shape[0]
    kv = flat.view(n, num_layers, 2, num_kv_heads, head_dim)
    kv = kv.permute(1, 2, 3, 0, 4).unsqueeze(2).expand(-1, -1, batch, -1, -1, -1)  # (L, 2, batch, H, n, D)
    return [(kv[layer, 0], kv[layer, 1]) for layer in range(num_layers)]


# ----------------------------------------------------------------------------------------------
# Input-level prompts: soft prompt and P-tuning's prompt encoder
# ----------------------------------------------------------------------------------------------


class SoftPrompt(nn.Module):
    """n learned input vectors, prepended to the token embeddings (Lester et al., 2021).

    Args:
        num_tokens: n, the prompt's length (>= 1).
        d_model: the model's embedding width.
        std: the initial vectors ~ N(0, std^2) (Lester et al. find a vocabulary initialisation
            better: `from_text`, or copy embeddings into `.weight`).

    Parameter: `weight` (n, d_model). forward(batch) -> (batch, n, d_model).
    """

    def __init__(self, num_tokens: int, d_model: int, std: float = 0.02) -> None:
        super().__init__()
        self.num_tokens, self.d_model = check_int("num_tokens", num_tokens, 1), check_int("d_model", d_model, 1)
        self.weight = nn.Parameter(torch.randn(num_tokens, d_model) * std)

    @classmethod
    def from_text(cls, model: nn.Module, token_ids: Sequence[int] | Tensor) -> SoftPrompt:
        """A soft prompt that starts as the model's own embeddings of `token_ids` (n ids): scoring with
        it equals scoring with that text as a hard prompt, until it is trained."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().cpu()
        if ids.numel() == 0:
            raise ValueError("token_ids must hold at least one id")
        table = model.token_embeddings.weight
        if int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]:
            raise ValueError(f"token_ids must lie in [0, {table.shape[0]}), got {ids.tolist()}")
        soft = cls(ids.numel(), table.shape[1])
        with torch.no_grad():
            soft.weight.copy_(table.detach()[ids.to(table.device)].float())
        return soft.to(table.device)

    def forward(self, batch: int) -> Tensor:
        """The prompt for `batch` rows, (batch, n, d_model) (a broadcast view of `weight`)."""
        return self.weight.unsqueeze(0).expand(_check_batch(batch), -1, -1)


class PromptEncoder(nn.Module):
    """P-tuning's prompt encoder (Liu et al., 2021): n free embeddings H -> the prompt vectors.

    kind="lstm": P = MLP(BiLSTM(H)), a two-layer bidirectional LSTM of width `hidden_size` followed
    by Linear(2 * hidden, 2 * hidden) -> ReLU -> Linear(2 * hidden, d_model) (eq. 3 of the paper, and
    peft's `PromptEncoder` layout: `embedding`, `lstm_head`, `mlp_head`).
    kind="mlp": P = Linear -> ReLU -> Linear -> ReLU -> Linear over H (peft's MLP variant).

    Args:
        num_tokens: n.
        d_model: the model's embedding width (also the width of H).
        hidden_size: the encoder's width; default d_model.
        kind: "lstm" or "mlp".

    forward(batch) -> (batch, n, d_model). After training the encoder can be dropped: the prompt is
    `encoder(1)[0]`, a plain `SoftPrompt`'s weight.
    """

    KINDS = ("lstm", "mlp")

    def __init__(self, num_tokens: int, d_model: int, hidden_size: int | None = None, kind: str = "lstm") -> None:
        super().__init__()
        self.num_tokens, self.d_model = check_int("num_tokens", num_tokens, 1), check_int("d_model", d_model, 1)
        hidden = d_model if hidden_size is None else check_int("hidden_size", hidden_size, 1)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.hidden_size = kind, hidden
        self.embedding = nn.Embedding(num_tokens, d_model)
        if kind == "lstm":
            self.lstm_head = nn.LSTM(d_model, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, d_model))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, d_model))

    def prompt(self) -> Tensor:
        """The n prompt vectors, (n, d_model)."""
        h = self.embedding.weight.unsqueeze(0)  # (1, n, d_model)
        if self.kind == "lstm":
            h = self.lstm_head(h)[0]  # (1, n, 2 * hidden): both directions at every slot
        return self.mlp_head(h)[0]

    def forward(self, batch: int) -> Tensor:
        """(batch, n, d_model): the same prompt for every row."""
        return self.prompt().unsqueeze(0).expand(_check_batch(batch), -1, -1)


# ----------------------------------------------------------------------------------------------
# Prefix tuning: learned keys and values at every layer
# ----------------------------------------------------------------------------------------------


class PrefixTuning(nn.Module):
    """n learned keys and values for every attention layer (Li & Liang, 2021; P-tuning v2).

    Flat layout (peft's): a (n, num_layers * 2 * kv_heads * head_dim) matrix whose row t, viewed as
    (num_layers, 2, kv_heads, head_dim), holds virtual token t's key ([l, 0]) and value ([l, 1]) at
    layer l. Keys are used as given: a rotary model does not rotate them (as with a cache).

    Args:
        num_layers, num_kv_heads, head_dim: the model's attention shape (`for_model` reads them).
        num_tokens: n, the prefix length (0 is allowed: the base model exactly).
        reparameterize: learn n embeddings P' (n, d_model) and a two-layer MLP
            Linear(d_model, hidden_size) -> tanh -> Linear(hidden_size, flat width) that maps them to
            the keys and values (Li & Liang's stabilising trick, peft's `prefix_projection`);
            otherwise the flat matrix itself is the parameter (`prefix`).
        d_model: P's width, needed with reparameterize.
        hidden_size: the MLP's width.
        std: initial scale of the direct parameter or of P'.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_tokens: int,
        *,
        reparameterize: bool = False,
        d_model: int | None = None,
        hidden_size: int = 512,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.num_kv_heads = check_int("num_kv_heads", num_kv_heads, 1)
        self.head_dim = check_int("head_dim", head_dim, 1)
        self.num_tokens = check_int("num_tokens", num_tokens, 0)
        self.reparameterize = check_bool("reparameterize", reparameterize)
        width = num_layers * 2 * num_kv_heads * head_dim
        if reparameterize:
            if d_model is None:
                raise ValueError("reparameterize=True needs d_model (the width of the prefix embeddings)")
            check_int("d_model", d_model, 1)
            self.embedding = nn.Parameter(torch.randn(num_tokens, d_model) * std)
            self.mlp = nn.Sequential(nn.Linear(d_model, check_int("hidden_size", hidden_size, 1)), nn.Tanh(),
                                     nn.Linear(hidden_size, width))
        else:
            self.prefix = nn.Parameter(torch.randn(num_tokens, width) * std)

    @classmethod
    def for_model(cls, model: nn.Module, num_tokens: int, **kwargs: Any) -> PrefixTuning:
        """A prefix shaped for a course model (its layers, key/value heads, head width and, with
        reparameterize, d_model), on the model's device."""
        num_layers, kv_heads, head_dim, d_model = _model_dims(model)
        if kwargs.get("reparameterize"):
            kwargs.setdefault("d_model", d_model)
        return cls(num_layers, kv_heads, head_dim, num_tokens, **kwargs).to(next(model.parameters()).device)

    @classmethod
    @torch.no_grad()
    def from_text(cls, model: nn.Module, token_ids: Sequence[int] | Tensor) -> PrefixTuning:
        """The keys and values that `model` computes for a text (at positions 0 .. n - 1), as a
        direct prefix: running the text after it equals running the text after those tokens.
        Needs a model that accepts a `reference.inference.KVCache` (TransformerLM)."""
        from reference.inference.generate import KVCache

        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        if ids.numel() == 0:
            raise ValueError("token_ids must hold at least one id")
        num_layers, kv_heads, head_dim, _ = _model_dims(model)
        device = next(model.parameters()).device
        cache = KVCache(num_layers, 1, kv_heads, head_dim, ids.numel(), device=device, dtype=next(model.parameters()).dtype)
        try:
            model(ids[None].to(device), cache=cache)
        except TypeError as error:
            raise ValueError(f"{type(model).__name__} does not take a key/value cache: from_text needs one") from error
        kv = torch.stack([cache.keys, cache.values], dim=1)[:, :, 0]  # (layers, 2, kv_heads, n, head_dim)
        prefix = cls(num_layers, kv_heads, head_dim, ids.numel()).to(device)
        prefix.load_flat(kv.permute(3, 0, 1, 2, 4).reshape(ids.numel(), -1).float())
        return prefix

    @property
    def width(self) -> int:
        """num_layers * 2 * kv_heads * head_dim: one virtual token's keys and values, flattened."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def flat(self) -> Tensor:
        """The keys and values as peft lays them out, (n, num_layers * 2 * kv_heads * head_dim)."""
        if self.reparameterize:
            return self.mlp(self.embedding)
        return self.prefix

    @torch.no_grad()
    def load_flat(self, weight: Tensor) -> None:
        """Set a direct prefix from a flat (n, width) matrix, e.g. peft's
        `prompt_encoder.embedding.weight` (refused for a reparameterised one: P' and the MLP
        cannot be recovered from their output)."""
        if self.reparameterize:
            raise ValueError("load_flat sets a direct prefix; call materialize() first")
        if not isinstance(weight, Tensor) or weight.shape != self.prefix.shape:
            raise ValueError(f"weight must be a tensor of shape {tuple(self.prefix.shape)}, got {getattr(weight, 'shape', type(weight).__name__)}")
        self.prefix.copy_(weight)

    @torch.no_grad()
    def materialize(self) -> PrefixTuning:
        """A direct (non-reparameterised) prefix holding this one's current keys and values."""
        out = PrefixTuning(self.num_layers, self.num_kv_heads, self.head_dim, self.num_tokens)
        out = out.to(self.flat().device)
        out.load_flat(self.flat().detach())
        return out

    def key_values(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the prefix's keys and values, each (batch, kv_heads, n, head_dim)."""
        return prefix_key_values(self.flat(), self.num_layers, self.num_kv_heads, self.head_dim, batch)

    def forward(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """Same as `key_values`."""
        return self.key_values(batch)


class _PrefixedCache:
    """What one attention layer sees as its cache: [prefix; new] keys and values (and the real
    cache's, when the model is decoding with one: prefix, then cached, then new)."""

    def __init__(self, k: Tensor, v: Tensor, inner: Any | None) -> None:
        self.k, self.v, self.inner = k, v, inner

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.inner is not None:
            k, v = self.inner.update(k, v)
        if self.k.shape[0] != k.shape[0]:
            raise ValueError(f"the prefix was made for batch {self.k.shape[0]}, the input has batch {k.shape[0]}")
        return torch.cat([self.k.to(k.dtype), k], dim=2), torch.cat([self.v.to(v.dtype), v], dim=2)


def _widen_mask(mask: Tensor | None, n: int) -> Tensor | None:
    """Prepend n key columns that every query may see to a mask (..., seq_q, seq_k)."""
    if mask is None or n == 0:
        return mask
    shape = list(mask.shape)  # a causal (seq_q, seq_k) or a key-padding (batch, 1, 1, seq_k) mask alike
    shape[-1] = n
    extra = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool else \
        torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([extra, mask], dim=-1)


# ----------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------


class PromptedLM(nn.Module):
    """A course model run with a soft prompt (or P-tuning encoder) and/or a prefix; see the module docstring.

    Args:
        model: a `TransformerLM`, `GPT2` or `BertForMaskedLM` (anything with `token_embeddings` and
            `layers[i].attn`); its code is not changed.
        prompt: a `SoftPrompt` or `PromptEncoder` (anything with `num_tokens` whose call
            `prompt(batch)` returns (batch, n, d_model)), or None.
        prefix: a `PrefixTuning`, or None.
        freeze_model: freeze the base model's parameters (fixed-LM prompt tuning); False trains
            both (prompt + LM tuning).

    forward(token_ids, **model_kwargs) -> (batch, seq, vocab): logits at the real tokens, the soft
    prompt's positions removed. `model_kwargs` go to the model (`last_only=True`, or
    `attention_mask=` for the MLM, widened for the soft prompt).
    """

    def __init__(self, model: nn.Module, prompt: nn.Module | None = None, prefix: PrefixTuning | None = None,
                 freeze_model: bool = True) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not isinstance(getattr(model, "token_embeddings", None), nn.Embedding):
            raise TypeError(f"model must be a course model with a `token_embeddings` nn.Embedding, got {type(model).__name__}")
        if prompt is not None and not (isinstance(prompt, nn.Module) and hasattr(prompt, "num_tokens")):
            raise TypeError(f"prompt must be a SoftPrompt or PromptEncoder, got {type(prompt).__name__}")
        if prefix is not None:
            if not isinstance(prefix, PrefixTuning):
                raise TypeError(f"prefix must be a PrefixTuning, got {type(prefix).__name__}")
            layers, kv_heads, head_dim, _ = _model_dims(model)
            if (prefix.num_layers, prefix.num_kv_heads, prefix.head_dim) != (layers, kv_heads, head_dim):
                raise ValueError(f"prefix is shaped (layers, kv_heads, head_dim) = {(prefix.num_layers, prefix.num_kv_heads, prefix.head_dim)}, "
                                 f"the model has {(layers, kv_heads, head_dim)}")
        self.model, self.prompt, self.prefix = model, prompt, prefix
        if check_bool("freeze_model", freeze_model):
            freeze(model)

    @property
    def num_prompt_tokens(self) -> int:
        """Length of the soft prompt (0 without one)."""
        return 0 if self.prompt is None else int(self.prompt.num_tokens)

    @property
    def num_prefix_tokens(self) -> int:
        """Length of the prefix (0 without one)."""
        return 0 if self.prefix is None else self.prefix.num_tokens

    def forward(self, token_ids: Tensor, **model_kwargs: Any) -> Tensor:
        if not isinstance(token_ids, Tensor) or token_ids.dim() != 2:
            raise ValueError(f"token_ids must be a (batch, seq) tensor, got {getattr(token_ids, 'shape', type(token_ids).__name__)}")
        model, batch = self.model, token_ids.shape[0]
        n_soft, n_prefix = self.num_prompt_tokens, self.num_prefix_tokens
        ids = token_ids
        with ExitStack() as stack:
            if self.prompt is not None:
                soft = self.prompt(batch)  # (batch, n_soft, d_model)
                ids = torch.cat([token_ids.new_zeros(batch, n_soft), token_ids], dim=1)  # placeholders, replaced below

                def put_prompt(module: nn.Module, args: Any, out: Tensor) -> Tensor:
                    return prepend_prompt(out[:, n_soft:], soft)[0]

                stack.enter_context(_hook(model.token_embeddings.register_forward_hook(put_prompt)))
                mask = model_kwargs.get("attention_mask")
                if mask is not None:
                    model_kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n_soft), mask], dim=1)
            if self.prefix is not None:  # also a zero-length one: the same hooks, nothing added
                self._attach_prefix(stack, batch, ids.shape[1], model_kwargs)
            logits = model(ids, **model_kwargs)
        if model_kwargs.get("last_only"):
            return logits
        return logits[:, n_soft:]

    def _attach_prefix(self, stack: ExitStack, batch: int, seq: int, model_kwargs: dict[str, Any]) -> None:
        n = self.num_prefix_tokens
        for attn, (k, v) in zip(attention_layers(self.model), self.prefix(batch)):
            if attn.positional is not None and not hasattr(attn.positional, "rotate"):
                raise ValueError("a prefix needs the keys' positions for a bias scheme (ALiBi, T5); only RoPE or absolute positions are supported")

            def widen(module: nn.Module, args: tuple, kwargs: dict, k: Tensor = k, v: Tensor = v) -> tuple[tuple, dict]:
                if len(args) != 1:
                    raise ValueError("a prefix needs the attention's mask and cache passed by keyword (as Block does)")
                kwargs = dict(kwargs)
                kwargs["mask"] = _widen_mask(kwargs.get("mask"), n)
                kwargs["cache"] = _PrefixedCache(k, v, kwargs.get("cache"))
                return args, kwargs

            stack.enter_context(_hook(attn.register_forward_pre_hook(widen, with_kwargs=True)))
        # the real tokens come after the prefix: positions n .. n + seq - 1 (as with past_key_values)
        table = getattr(self.model, "position_embeddings", None)
        if table is not None:
            def shift(module: nn.Module, args: tuple) -> tuple:
                return (args[0] + n,)

            stack.enter_context(_hook(table.register_forward_pre_hook(shift)))
        elif "positions" not in model_kwargs and "cache" not in model_kwargs:
            model_kwargs["positions"] = torch.arange(n, n + seq, device=self.model.token_embeddings.weight.device)


class _hook:
    """Context manager that removes a hook handle on exit."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __enter__(self) -> Any:
        return self.handle

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()
