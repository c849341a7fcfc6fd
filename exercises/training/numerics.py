"""Exercises for Chapter 6, the numerics of a training step: stable log-softmax, cross-entropy, AdamW,
the cosine learning-rate schedule, gradient clipping.

Fill in each body that raises NotImplementedError; the docstrings say what to return. Grade with
`llm-course grade 6`. Mirrors `reference/training/numerics.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from reference.validation import check_int


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log softmax(x) = x - logsumexp(x), computed stably as (x - max) - log(sum(exp(x - max))).

    Subtracting the slice's maximum keeps every exponent <= 0, so nothing overflows however large
    the logits (1e4 in float32 is fine), and the log never sees an underflowed zero sum.

    Args:
        x: floating-point logits of any shape.
        dim: the dimension to normalise over.

    Returns:
        Log-probabilities of the same shape and dtype as `x`.
    """
    # Hint: the log-sum-exp identity with c = the max over `dim`: every exponent is then <= 0. Which gradient does the
    # shift need (it does not change the result)?
    raise NotImplementedError("Exercise 6.6: stable log-softmax")


def cross_entropy(logits: Tensor, targets: Tensor, loss_mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood of `targets` under softmax(`logits`): -mean log p(target).

    Every leading dimension is averaged over (batch and sequence alike). With `loss_mask`, the
    result is the weighted mean sum(w * nll) / sum(w): a bool or 0/1 mask averages over the
    positions it selects, float weights (>= 0) weigh each position; weights that sum to 0 give 0.
    Float16 and bfloat16 logits are computed in float32.

    Args:
        logits: (..., vocab) unnormalised scores.
        targets: (...) integer ids in [0, vocab).
        loss_mask: optional (...) bool, 0/1 or float weights (>= 0): which positions count, and how much.

    Returns:
        A scalar tensor, differentiable with respect to `logits`.
    """
    # Hint: your log_softmax, then pick each position's target entry (torch.gather). The mask may hold fractional
    # weights: the mean is weighted, so divide by the total weight, not by a count.
    raise NotImplementedError("Exercise 6.7: cross-entropy")


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, step for step the same as `torch.optim.AdamW`.

    Loshchilov and Hutter, 2019, algorithm 2. For each parameter p with gradient g, at step t:

        p <- p - lr * weight_decay * p                   (decay, decoupled from the gradient)
        m <- beta1 * m + (1 - beta1) * g                 (first moment)
        v <- beta2 * v + (1 - beta2) * g^2               (second moment)
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The state of each parameter is {"step": int, "exp_avg": m, "exp_avg_sq": v}. Parameter groups
    may override lr, betas, eps and weight_decay; set `group["lr"]` to schedule the learning rate.

    Args:
        params: parameters, or dicts of parameter groups.
        lr: learning rate (>= 0).
        betas: decay rates of the two moments, each in [0, 1).
        eps: added to the denominator (>= 0).
        weight_decay: decoupled weight decay (>= 0).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        """Check the hyper-parameters; they become the defaults of every parameter group."""
        # Hint: validate each hyper-parameter (ValueError naming it); the defaults go to torch.optim.Optimizer's constructor.
        raise NotImplementedError("Exercise 6.8: AdamW")

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss, if given."""
        # Hint: the per-parameter state must survive state_dict()/load_state_dict() under torch.optim.AdamW's names; follow
        # the update of Loshchilov & Hutter (2019) in its order: decoupled decay, both moments, bias correction, the step.
        raise NotImplementedError("Exercise 6.8: AdamW")


def cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    """The learning rate at iteration `it`: linear warm-up from 0, cosine decay to the minimum, then flat.

        it < warmup_iters:                       max_lr * it / warmup_iters
        warmup_iters <= it <= cosine_cycle_iters: min_lr + (1 + cos(pi * (it - warmup) / (cycle - warmup))) / 2 * (max_lr - min_lr)
        it > cosine_cycle_iters:                 min_lr

    Args:
        it: the iteration (>= 0), counted from 0.
        max_learning_rate: the rate reached at the end of warm-up.
        min_learning_rate: the rate the cosine decays to (<= max_learning_rate).
        warmup_iters: length of the warm-up (>= 0).
        cosine_cycle_iters: the iteration at which the decay ends (> warmup_iters).

    Returns:
        The learning rate, a float.
    """
    # Hint: the three cases of the formula in Chapter 6; check the boundaries (the first and last iteration of each
    # case) against the formulas of the docstring.
    raise NotImplementedError("Exercise 6.9: cosine schedule with warm-up")


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_l2_norm: float, eps: float = 1e-6) -> Tensor:
    """Scale all gradients together, in place, so that their joint L2 norm is at most `max_l2_norm`.

    The norm is taken over every gradient at once, as if they were one long vector:
    ||g|| = sqrt(sum_p sum_i g_{p,i}^2). When ||g|| > max_l2_norm, each gradient is multiplied by
    max_l2_norm / (||g|| + eps); otherwise nothing changes. Parameters without a gradient are
    skipped. The same as `torch.nn.utils.clip_grad_norm_` (which also uses eps = 1e-6).

    Args:
        parameters: parameters (or one tensor) whose `.grad` is clipped.
        max_l2_norm: the largest norm allowed (> 0).
        eps: keeps the division finite.

    Returns:
        The total norm before clipping, a scalar float32 tensor (on the gradients' device).
    """
    # Hint: one global norm for all gradients together (not one per tensor); every gradient is scaled by the same factor,
    # with the epsilon of the formula, and only when the norm exceeds the threshold. Return the norm before clipping.
    raise NotImplementedError("Exercise 6.10: gradient clipping")
