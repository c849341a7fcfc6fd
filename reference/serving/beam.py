"""One step of beam search over a request's live beams, as the serving engine runs it.

Survey section 3.4; Kwon et al., 2023 (vLLM), section 4.4: in beam search the B beams of a request
share their prompt and, often, long runs of generated tokens. `LLMEngine` keeps each beam as a
sequence of one `SequenceGroup`: the beams' blocks are shared through reference counts, a beam
that several candidates continue is *forked* (its blocks shared, copied on write when a child
writes into the last, partial one), and a beam that no candidate continues is freed at once. The
choice of the candidates is this module's `beam_step`, with Hugging Face's rules (those of
Chapter 15's `reference.inference.beam.beam_search`, so that the engine's beams equal it):

    total[b, v] = s_b + log p(v | beam b),      s_b = the beam's sum of log-probabilities,

the top K = max(2, 1 + #end ids) * B of all (beam, token) pairs, best first; of the first B
candidates, those that end (an end id, or the length limit) become finished hypotheses scored

    score = total / new_len ** length_penalty        (new_len: new tokens, the end id included);

the next beams are the best B candidates that do not end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.validation import check_float, check_int


def beam_step(
    beam_scores: Sequence[float],
    logprobs: Tensor,
    num_beams: int,
    *,
    new_len: int,
    length_penalty: float = 1.0,
    eos_token_ids: Sequence[int] = (),
    last: bool = False,
) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]]]:
    """Choose the next beams and the newly finished hypotheses from every beam's next-token log-probabilities.

    Args:
        beam_scores: (rows,) each live beam's sum of log-probabilities so far (0 before the first token).
        logprobs: (rows, vocab) log-softmax of each beam's next-token logits.
        num_beams: B, the beams kept (>= 1).
        new_len: the new tokens a candidate has, its own included (>= 1).
        length_penalty: exponent of new_len in a finished hypothesis's score.
        eos_token_ids: ids that end a hypothesis.
        last: this step reaches the length limit: every candidate ends.

    Returns:
        (live, finished): live is up to B (beam row, token, sum of log-probabilities) of the
        candidates that do not end, best first (fewer than B only when `last` or the candidates run
        out); finished is (beam row, token, length-normalised score) of those among the first B
        candidates that end, in candidate order.
    """
    num_beams = check_int("num_beams", num_beams, 1)
    new_len = check_int("new_len", new_len, 1)
    length_penalty = check_float("length_penalty", length_penalty)
    if not isinstance(logprobs, Tensor) or logprobs.dim() != 2 or logprobs.shape[0] != len(beam_scores):
        raise ValueError(f"logprobs must be (rows, vocab) with rows = len(beam_scores) = {len(beam_scores)}, "
                         f"got {tuple(getattr(logprobs, 'shape', ()))}")  # fmt: skip
    eos = set(eos_token_ids)
    keep = max(2, 1 + len(eos)) * num_beams
    scores = torch.tensor(list(beam_scores), dtype=logprobs.dtype, device=logprobs.device)
    total = scores[:, None] + logprobs  # (rows, vocab)
    vocab = total.shape[-1]
    top_scores, top_index = total.flatten().topk(min(keep, total.numel()))
    rows, tokens, values = (top_index // vocab).tolist(), (top_index % vocab).tolist(), top_scores.tolist()
    ends = [t in eos or last for t in tokens]
    finished = [(rows[k], tokens[k], values[k] / new_len**length_penalty)
                for k in range(min(num_beams, len(tokens))) if ends[k]]  # fmt: skip
    live = [(rows[k], tokens[k], values[k]) for k in range(len(tokens)) if not ends[k]][:num_beams]
    return live, finished
