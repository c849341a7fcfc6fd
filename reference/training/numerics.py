"""The numerics of a training step written out: log-softmax, cross-entropy, AdamW, the learning-rate
schedule and gradient clipping.

Survey section 2.4, "Model Training": the optimiser (AdamW, Loshchilov and Hutter, 2019, algorithm 2,
with Adam's moments from Kingma and Ba, 2015, algorithm 1), the learning-rate schedule (linear
warm-up then cosine decay, as in GPT-3, Brown et al., 2020, appendix B, and LLaMA, Touvron et al.,
2023, section 2.2) and clipping the gradient's norm (Pascanu et al., 2013, section 3.2). The loss
is section 2.3's language-modelling objective, the mean negative log-likelihood of the targets.

`softmax` is Chapter 1's (`reference.attention.softmax`), re-exported here. Each function agrees
with PyTorch's own: `torch.log_softmax`, `torch.nn.functional.cross_entropy`,
`torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from reference.attention import softmax
from reference.validation import check_int

__all__ = ["AdamW", "clip_grad_norm_", "cosine_schedule", "cross_entropy", "log_softmax", "softmax"]


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
    if not x.is_floating_point():
        raise TypeError(f"log_softmax needs a floating-point tensor, got dtype {x.dtype}")
    shifted = x - x.amax(dim=dim, keepdim=True).detach()  # the shift does not change the result
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


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
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer ids, got dtype {targets.dtype}")
    if logits.dim() < 1 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match targets of shape {tuple(targets.shape)}")
    vocab = logits.shape[-1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"targets must lie in [0, {vocab}), got values from {int(targets.min())} to {int(targets.max())}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_probs = log_softmax(logits, dim=-1)  # (..., vocab)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    if loss_mask is None:
        return nll.mean()
    if loss_mask.shape != targets.shape:
        raise ValueError(f"loss_mask of shape {tuple(loss_mask.shape)} does not match targets of shape {tuple(targets.shape)}")
    if loss_mask.is_complex():
        raise TypeError(f"loss_mask must be bool, integer or real, got dtype {loss_mask.dtype}")
    weights = loss_mask.to(nll.dtype)
    if not loss_mask.dtype == torch.bool and bool((weights < 0).any()):
        raise ValueError("loss_mask must not hold negative weights")
    total = weights.sum()
    return (nll * weights).sum() / torch.where(total == 0, torch.ones_like(total), total)


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
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss, if given."""
        loss = None if closure is None else closure()  # re-evaluates the model, with gradients
        with torch.no_grad():  # the update itself is not part of any graph
            for group in self.param_groups:
                lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p.grad.is_sparse:
                        raise TypeError("AdamW does not support sparse gradients")
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["step"] += 1
                    t, m, v, g = state["step"], state["exp_avg"], state["exp_avg_sq"], p.grad
                    p.mul_(1 - lr * weight_decay)
                    m.lerp_(g, 1 - beta1)  # m + (1 - beta1)(g - m) = beta1 m + (1 - beta1) g
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    bias_correction1 = 1 - beta1**t
                    bias_correction2_sqrt = math.sqrt(1 - beta2**t)
                    denominator = (v.sqrt() / bias_correction2_sqrt).add_(eps)
                    p.addcdiv_(m, denominator, value=-lr / bias_correction1)
        return loss


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
    check_int("it", it)
    check_int("warmup_iters", warmup_iters)
    check_int("cosine_cycle_iters", cosine_cycle_iters, warmup_iters + 1)
    if not 0 <= min_learning_rate <= max_learning_rate:
        raise ValueError(
            f"need 0 <= min_learning_rate <= max_learning_rate, got min_learning_rate={min_learning_rate!r}, "
            f"max_learning_rate={max_learning_rate!r}"
        )
    if it < warmup_iters:
        return max_learning_rate * it / warmup_iters
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)  # 0 -> 1
        return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)
    return min_learning_rate


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
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    if not max_l2_norm > 0:
        raise ValueError(f"max_l2_norm must be > 0, got {max_l2_norm!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    if total > max_l2_norm:
        scale = max_l2_norm / (total + eps)
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return total
