"""`LLMEngine`: a paged KV cache, the continuous-batching scheduler and a `TransformerLM`, stepped.

Survey section 3.5 (inference frameworks: vLLM, and the systems like it). One `step()`:
1. asks the `Scheduler` for the step's work (admit, keep, preempt, swap);
2. performs the block copies it asks for (swap out, swap in, copy-on-write), in that order;
3. runs the model once over the decoding sequences (one token each) and once over the prefills
   (their uncached tokens, left-padded), reading and writing keys and values through each
   sequence's block table (`PagedKVCache`);
4. samples each sequence's next token with Chapter 15's `SamplingParams` and logits processors
   (`reference.inference.sampling.choose_next`), forks the n samples of a request after its
   prefill (their prompt blocks shared, copied on write), and retires finished sequences, whose
   blocks go back to the pool at once.

The model is not changed: `PagedKVCache` has the interface of Chapter 15's `KVCache`
(`length`, `attention_mask(new)`, `layer(i).update(k, v)`, `advance(new)`), so a `TransformerLM`
decodes through it as it does through the contiguous cache. `update` writes the new keys and
values into their slots of the block pool and returns each sequence's keys and values gathered
through its block table (`reference.serving.paged_attention.gather_kv`'s slot arithmetic, done once
per forward pass by `prepare`); the mask it gives the model is causal per sequence and blind to
the padding and to the positions past each length.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from reference.inference.sampling import SamplingParams, TokenHistory, choose_next, processors_for
from reference.serving.beam import beam_step
from reference.serving.blocks import BlockManager, blocks_needed
from reference.serving.lora import LoRARegistry, lora_delta
from reference.serving.paged_attention import gather_kv
from reference.serving.scheduler import Scheduler, SchedulerOutput
from reference.serving.scheduler import Sequence as Seq
from reference.serving.scheduler import SequenceGroup
from reference.validation import check_int


# ----------------------------------------------------------------------------------------------
# The paged cache, with the model's cache interface
# ----------------------------------------------------------------------------------------------


class _LayerView:
    def __init__(self, cache: PagedKVCache, layer: int) -> None:
        self.cache, self.layer = cache, layer

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new keys/values (batch, kv_heads, new, head_dim) into their slots; return
        each row's keys/values through its block table, (batch, kv_heads, max_len, head_dim).

        Position p < max_len of row b is read from slot table[p // B] * B + p % B of the pool
        (`gather_kv`'s arithmetic, done once per forward pass in `prepare`, not once per layer);
        positions past a row's end hold whatever their slot holds: the mask hides them."""
        c = self.cache
        keys, values = c.keys[self.layer], c.values[self.layer]  # (num_blocks, B, kv_heads, head_dim)
        flat_k, flat_v = keys.view(-1, *keys.shape[2:]), values.view(-1, *values.shape[2:])  # views of the pool
        flat_k.index_copy_(0, c._write_slots, k.transpose(1, 2)[c._write_real])  # (new tokens, kv_heads, head_dim)
        flat_v.index_copy_(0, c._write_slots, v.transpose(1, 2)[c._write_real])
        shape = (c._read_slots.shape[0], c._read_slots.shape[1], *keys.shape[2:])
        read = c._read_slots.flatten()
        return (flat_k.index_select(0, read).view(shape).transpose(1, 2),
                flat_v.index_select(0, read).view(shape).transpose(1, 2))  # fmt: skip


class PagedKVCache:
    """The block pools of every layer, (num_layers, num_blocks, block_size, kv_heads, head_dim) for
    keys and values, on the model's device, and a host pool of `num_host_blocks` for swapping.

    `prepare(block_tables, starts, ends, width)` sets up one forward pass over a batch of rows:
    row b runs positions starts[b] .. ends[b] - 1, left-padded to `width` columns; the model then
    calls `attention_mask`, `layer(i).update` and `advance` as it does with `KVCache`.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, *,
                 num_host_blocks: int = 0, device=None, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        host_shape = (num_layers, num_host_blocks, block_size, num_kv_heads, head_dim)
        pin = torch.cuda.is_available() and torch.device(device or "cpu").type == "cuda"
        self.host_keys = torch.zeros(host_shape, dtype=dtype, pin_memory=pin)
        self.host_values = torch.zeros(host_shape, dtype=dtype, pin_memory=pin)
        self.block_size, self.length = block_size, 0

    def bytes_per_block(self) -> int:
        """Device bytes of one block, keys and values of every layer."""
        return 2 * self.keys[:, 0].numel() * self.keys.element_size()

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: device block src -> device block dst."""
        if pairs:
            src, dst = (torch.tensor(x, device=self.keys.device) for x in zip(*pairs))
            self.keys[:, dst] = self.keys[:, src]
            self.values[:, dst] = self.values[:, src]

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        for dev, host in pairs:
            self.host_keys[:, host].copy_(self.keys[:, dev])
            self.host_values[:, host].copy_(self.values[:, dev])

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        for host, dev in pairs:
            self.keys[:, dev].copy_(self.host_keys[:, host], non_blocking=True)
            self.values[:, dev].copy_(self.host_values[:, host], non_blocking=True)

    def prepare(self, block_tables: Sequence[Sequence[int]], starts: Sequence[int], ends: Sequence[int], width: int) -> None:
        """Index tensors for one forward pass, built with whole-tensor arithmetic on the host and
        moved to the device once (no loop over tokens): the slots every layer reads
        (batch, max_len), the slots it writes (one per new token, row by row) with their places
        in the (batch, width) input, the attention mask and the RoPE positions."""
        device, size = self.keys.device, self.block_size
        self._max_len = max(ends)
        most = blocks_needed(self._max_len, size)
        tables = torch.tensor([list(t[:most]) + [0] * (most - len(t[:most])) for t in block_tables], dtype=torch.long)
        starts_t, ends_t = torch.tensor(list(starts)), torch.tensor(list(ends))
        key = torch.arange(self._max_len)  # (max_len,): key positions
        read = tables[:, key // size] * size + key % size  # (batch, max_len): slot of each position
        col = torch.arange(width)[None, :]  # (1, width)
        pad = (width - (ends_t - starts_t))[:, None]  # (batch, 1)
        query_pos = starts_t[:, None] + col - pad  # (batch, width); < start at padding columns
        real = col >= pad  # (batch, width): columns holding a new token
        write = read.gather(1, query_pos.clamp(min=0))[real]  # (new tokens,) row-major, positions ascending
        mask = torch.where(real[:, :, None], key <= query_pos[:, :, None], key == 0)[:, None]  # (batch, 1, width, max_len)
        self._tables, self._lens = tables.to(device), ends_t.to(device)
        self._read_slots, self._write_slots, self._write_real = read.to(device), write.to(device), real.to(device)
        self._mask = mask.to(device)
        self.positions = query_pos.clamp(min=0).to(device)
        self.length = self._max_len - width  # so that length + width is the longest row's end

    def attention_mask(self, new: int) -> Tensor:
        return self._mask

    def layer(self, i: int) -> _LayerView:
        return _LayerView(self, i)

    def advance(self, new: int) -> None:
        pass  # the engine keeps each sequence's length


# ----------------------------------------------------------------------------------------------
# Requests and their outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class CompletionOutput:
    """One of a request's n outputs: its new ids, text, finish reason and sum of log-probabilities
    (and, for beam search, the length-normalised score it was ranked by)."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    cumulative_logprob: float
    score: float | None = None  # beam search: the finished hypothesis's length-normalised score


@dataclass
class RequestOutput:
    """A request's state after a step: its outputs so far and whether it has finished.

    `metrics`: arrival, first_token and finished times (time.perf_counter seconds)."""

    request_id: Hashable
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict = field(default_factory=dict)


class LLMEngine:
    """Serve many requests at once from one causal language model.

    Args:
        model: a `reference.models.llama.TransformerLM` (or a model with its forward and config).
        tokenizer: `encode`/`decode` for text prompts and outputs, or None (ids only).
        block_size: token slots per KV block.
        num_blocks: device blocks; default enough for max_num_seqs full contexts.
        num_host_blocks: host blocks for preemption by swapping.
        max_num_seqs: the most sequences per step.
        max_num_batched_tokens: the most tokens per step; default max(2048, context_length).
        preemption_mode: "recompute" or "swap".
        prefix_sharing: share full prompt blocks between requests (and skip their computation).
        eos_token_ids: ids that end a sequence (unless `ignore_eos`); default the tokenizer's stop ids.
        scheduler_cls: the scheduler class (`Scheduler`, or a learner's).
        beam_step_fn: the beam-search step (`reference.serving.beam.beam_step`, or a learner's).
        lora_delta_fn: the per-row LoRA update (`reference.serving.lora.lora_delta`, or a learner's).

    Beam search (`SamplingParams(use_beam_search=True, beam_width=B, length_penalty=...)`): the
    request's beams are sequences of one group; after each step `beam_step_fn` picks the best B
    candidates over all beams x vocabulary, a beam continued by several candidates is forked (its
    blocks shared, copied on write by the next `append_slots`) and a beam continued by none is
    freed (vLLM section 4.4). The n best finished hypotheses are returned, with their scores; they
    equal Chapter 15's `reference.inference.beam.beam_search` (Hugging Face's rules).

    LoRA adapters (Chapter 11): `add_lora(name, adapter)` registers one (a `save_adapter` file, a
    model with LoRA layers, or a state dict and its alpha) and `add_request(..., lora=name)` serves
    a request with it. Requests of different adapters and of the base model run in one batch: the
    base matmul is shared and each row adds its own adapter's (alpha / r) B A x
    (`reference.serving.lora.MultiLoRALinear`, S-LoRA / Punica). The adapted layers of `model` are
    wrapped in place; prefix sharing keys blocks by adapter too.
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, block_size: int = 16, num_blocks: int | None = None,
                 num_host_blocks: int = 0, max_num_seqs: int = 32, max_num_batched_tokens: int | None = None,
                 preemption_mode: str = "recompute", prefix_sharing: bool = True,
                 eos_token_ids: Sequence[int] | None = None, scheduler_cls=Scheduler,
                 beam_step_fn=beam_step, lora_delta_fn=lora_delta) -> None:  # fmt: skip
        cfg = model.config
        self.model, self.tokenizer = model.eval(), tokenizer
        self.context_length = model.context_length
        block_size = check_int("block_size", block_size, 1)
        max_num_seqs = check_int("max_num_seqs", max_num_seqs, 1)
        if num_blocks is None:
            num_blocks = max_num_seqs * blocks_needed(self.context_length, block_size)
        weight = next(model.parameters())
        kv_heads = cfg.get("num_kv_heads") or cfg["num_heads"]
        self.cache = PagedKVCache(cfg["num_layers"], check_int("num_blocks", num_blocks, 1), block_size, kv_heads,
                                  cfg["d_model"] // cfg["num_heads"], num_host_blocks=num_host_blocks,
                                  device=weight.device, dtype=weight.dtype)  # fmt: skip
        self.block_manager = BlockManager(num_blocks, block_size, num_host_blocks=num_host_blocks, prefix_sharing=prefix_sharing)
        self.scheduler = scheduler_cls(self.block_manager, max_num_seqs=max_num_seqs, preemption_mode=preemption_mode,
                                       max_num_batched_tokens=max_num_batched_tokens or max(2048, self.context_length))  # fmt: skip
        if eos_token_ids is None and tokenizer is not None:
            from reference.inference.chat import stop_ids

            eos_token_ids = stop_ids(tokenizer)
        self.eos_token_ids = tuple(eos_token_ids or ())
        self.device = weight.device
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()
        self.groups: dict[Hashable, SequenceGroup] = {}
        self.stats = dict(steps=0, prefill_tokens=0, decode_tokens=0, preemptions=0, swaps=0, copies=0, beam_forks=0)
        self.beam_step_fn = beam_step_fn
        self.lora: LoRARegistry | None = None  # made by the first add_lora
        self.lora_delta_fn = lora_delta_fn

    # -- requests --------------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer: pass LLMEngine(model, tokenizer) or token ids")
            return list(self.tokenizer.encode(prompt))
        if isinstance(prompt, Tensor):
            prompt = prompt.tolist()
        ids = list(prompt)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise TypeError("prompt must be a string or a list of int token ids")
        vocab = self.model.config["vocab_size"]
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        return ids

    def add_lora(self, name: str, adapter, *, alpha: float | None = None, adapter_name: str | None = None) -> None:
        """Register LoRA adapter `name` (see `reference.serving.lora.read_adapter` for `adapter`)."""
        if self.lora is None:
            self.lora = LoRARegistry(self.model, self.lora_delta_fn)
        self.lora.add(name, adapter, alpha=alpha, adapter=adapter_name)

    def remove_lora(self, name: str) -> None:
        """Forget adapter `name`; ValueError while a request uses it."""
        self._lora_slot(name)
        if any(g.data.get("lora") == name for g in self.groups.values()):
            raise ValueError(f"LoRA adapter {name!r} is in use by a request")
        self.lora.remove(name)

    @property
    def lora_adapters(self) -> list[str]:
        """The registered adapters' names."""
        return [] if self.lora is None else self.lora.names

    def _lora_slot(self, name: str | None) -> int:
        if name is None:
            return 0
        if not isinstance(name, str):
            raise TypeError(f"lora must be an adapter name (str) or None, got {type(name).__name__}")
        if self.lora is None:
            raise ValueError(f"unknown LoRA adapter {name!r}; registered adapters: none")
        return self.lora.slot(name)

    def add_request(self, prompt: str | Sequence[int], sampling_params: SamplingParams | None = None,
                    request_id: Hashable | None = None, *, lora: str | None = None) -> Hashable:  # fmt: skip
        """Queue a request, served with LoRA adapter `lora` (None: the base model); returns its id.
        ValueError for an unknown adapter or a prompt that could never be served (empty, as long as
        the context or longer, or more than the token budget or the KV pool)."""
        self._lora_slot(lora)
        params = SamplingParams() if sampling_params is None else sampling_params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        if params.use_beam_search:
            self._check_beam_params(params)
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.context_length:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context is {self.context_length} "
                             "(the prompt must leave room for at least one new token)")  # fmt: skip
        if len(ids) > self.scheduler.max_num_batched_tokens:
            raise ValueError(f"the prompt has {len(ids)} tokens, more than max_num_batched_tokens="
                             f"{self.scheduler.max_num_batched_tokens}")  # fmt: skip
        longest = min(len(ids) + params.max_tokens, self.context_length)
        if blocks_needed(longest, self.block_manager.block_size) > self.block_manager.device.num_blocks:
            raise ValueError(f"a sequence of {longest} tokens needs more than the KV cache's "
                             f"{self.block_manager.device.num_blocks} blocks")  # fmt: skip
        worst = params.beam_width * blocks_needed(longest, self.block_manager.block_size)
        if params.use_beam_search and worst > self.block_manager.device.num_blocks:
            raise ValueError(f"beam search with beam_width={params.beam_width} over {longest} tokens needs up to {worst} "
                             "blocks (a beam group recomputed after preemption shares none); the KV cache has "
                             f"{self.block_manager.device.num_blocks}")  # fmt: skip
        request_id = f"req-{next(self._request_ids)}" if request_id is None else request_id
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        seq = Seq(next(self._seq_ids), ids)
        group = SequenceGroup(request_id, [seq], params,
                              max_seqs=params.beam_width if params.use_beam_search else params.sequences_to_sample)
        group.data.update(arrival=time.perf_counter(), generator=params.generator(self.device), lora=lora)
        if lora is not None:  # its blocks are shared only with requests of the same adapter
            self.block_manager.namespaces[seq.seq_id] = ("lora", lora)
        if params.use_beam_search:  # the length limit of beam.py: max_new_tokens within the context
            group.data.update(beam_finished=[], max_new=min(params.max_tokens, self.context_length - len(ids)))
        self.groups[request_id] = group
        self.scheduler.add(group)
        return request_id

    @staticmethod
    def _check_beam_params(params: SamplingParams) -> None:
        """Beam search scores raw log-probabilities with Hugging Face's rules; refuse what it would ignore."""
        if params.max_tokens < 1:
            raise ValueError(f"beam search needs max_tokens >= 1, got {params.max_tokens}")
        unsupported = dict(best_of=params.best_of is not None, stop=bool(params.stop), min_tokens=params.min_tokens > 0,
                           repetition_penalty=params.repetition_penalty != 1.0,
                           frequency_penalty=params.frequency_penalty != 0.0,
                           presence_penalty=params.presence_penalty != 0.0)  # fmt: skip
        bad = [name for name, used in unsupported.items() if used]
        if bad:
            raise ValueError(f"LLMEngine's beam search does not support {', '.join(bad)} (beam_width beams are "
                             "kept and scored by their log-probabilities alone, as Hugging Face's generate does)")  # fmt: skip

    def abort_request(self, request_id: Hashable) -> bool:
        """Stop a request and free its blocks at once; False if it is unknown or already done."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return False
        self.scheduler.abort(request_id)
        self._forget(group)
        return True

    def _forget(self, group: SequenceGroup) -> None:
        for seq in group.seqs:
            self.block_manager.namespaces.pop(seq.seq_id, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- one iteration ---------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once over the step's sequences, sample; returns the outputs of
        the requests that advanced (finished ones with finished=True, then forgotten)."""
        out: SchedulerOutput = self.scheduler.schedule()
        self.cache.swap_out(out.blocks_to_swap_out)
        self.cache.swap_in(out.blocks_to_swap_in)
        self.cache.copy_blocks(out.blocks_to_copy)
        self.stats["preemptions"] += len(out.preempted)
        self.stats["swaps"] += len(out.swapped_out)
        self.stats["copies"] += len(out.blocks_to_copy)
        if out.empty:
            if self.scheduler.has_unfinished() and not (out.preempted or out.swapped_out):
                raise RuntimeError("the scheduler can make no progress: no request fits the KV cache")
            return []
        self.stats["steps"] += 1
        decode_rows = [(g, s) for g in out.decodes for s in g.live]
        prefill_rows = [(g, s) for g in out.prefills for s in g.live]
        self.stats["decode_tokens"] += len(decode_rows)
        self.stats["prefill_tokens"] += sum(len(s) - s.num_computed for _, s in prefill_rows)
        advanced: dict[Hashable, SequenceGroup] = {}
        for rows in (decode_rows, prefill_rows):
            if rows:
                logits = self._forward([s for _, s in rows], [g.data.get("lora") for g, _ in rows])  # (rows, vocab) float32
                self._sample(rows, logits)
                for g, _ in rows:
                    advanced[g.request_id] = g
        outputs = [self._output(g) for g in advanced.values()]
        for group in self.scheduler.finish_done():
            group.data["finished"] = time.perf_counter()
            self.groups.pop(group.request_id, None)
            self._forget(group)
        return outputs

    def _forward(self, seqs: list[Seq], loras: Sequence[str | None] | None = None) -> Tensor:
        """Run each sequence's uncached tokens (row b with adapter loras[b]); returns the last
        position's logits, (rows, vocab)."""
        starts = [s.num_computed for s in seqs]
        ends = [len(s) for s in seqs]
        width = max(e - b for b, e in zip(starts, ends))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, (s, b, e) in enumerate(zip(seqs, starts, ends)):
            ids[r, width - (e - b):] = torch.tensor(s.tokens[b:e])
        tables = [self.block_manager.block_table(s.seq_id) for s in seqs]
        self.cache.prepare(tables, starts, ends, width)
        if self.lora is not None and loras is not None and any(name is not None for name in loras):
            with self.lora.rows([self.lora.slot(name) for name in loras], device=self.device):
                logits = self.model(ids.to(self.device), positions=self.cache.positions, cache=self.cache, last_only=True)[:, -1]
        else:
            logits = self.model(ids.to(self.device), positions=self.cache.positions, cache=self.cache, last_only=True)[:, -1]
        for s, e in zip(seqs, ends):
            s.num_computed = e
            self.block_manager.commit(s.seq_id, s.tokens, e)
        return logits.float()

    def _sample(self, rows: list[tuple[SequenceGroup, Seq]], logits: Tensor) -> None:
        by_group: dict[Hashable, list[int]] = {}
        for r, (g, _) in enumerate(rows):
            by_group.setdefault(g.request_id, []).append(r)
        plain = [r for index in by_group.values() if self._plain_greedy(rows[index[0]][0]) for r in index]
        if plain:  # one argmax and one log-softmax for every plain greedy row of the batch
            self._greedy_rows([rows[r] for r in plain], logits[torch.tensor(plain, device=logits.device)])
        for request_id, index in by_group.items():
            if self._plain_greedy(rows[index[0]][0]):
                continue
            group = rows[index[0]][0]
            params: SamplingParams = group.params
            seqs = [rows[r][1] for r in index]
            if params.use_beam_search:
                group.forked = True
                self._beam_step(group, seqs, logits[torch.tensor(index, device=logits.device)])
                continue
            if not group.forked:
                group.forked = True
                wanted = params.sequences_to_sample
                if wanted > 1:  # parallel sampling: n copies of the one prompt, its blocks shared
                    parent = seqs[0]
                    for i in range(1, wanted):
                        child = Seq(next(self._seq_ids), list(parent.prompt), list(parent.output), parent.num_computed, index=i)
                        self.block_manager.fork(parent.seq_id, child.seq_id)
                        group.seqs.append(child)
                        seqs.append(child)
                    index = index + [index[0]] * (wanted - 1)
            rows_logits = logits[torch.tensor(index, device=logits.device)]
            history = TokenHistory([s.prompt for s in seqs], [s.output for s in seqs])
            eos = () if params.ignore_eos else self.eos_token_ids
            tokens, logprobs = choose_next(rows_logits, history, params, generator=group.data.get("generator"),
                                           eos_token_ids=eos)  # fmt: skip
            chosen = tokens.tolist()
            picked = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
            if "first_token" not in group.data:
                group.data["first_token"] = time.perf_counter()
            for seq, token, lp in zip(seqs, chosen, picked):
                seq.output.append(token)
                seq.cumulative_logprob += lp
                self._check_stop(seq, params, eos)
                if seq.finished:
                    self.block_manager.free(seq.seq_id)

    def _plain_greedy(self, group: SequenceGroup) -> bool:
        """Whether the group decodes one sequence by the argmax of the raw logits (no processor, no
        beams): `choose_next` would then return argmax and log-softmax, which batch across groups."""
        if "plain_greedy" not in group.data:
            params: SamplingParams = group.params
            eos = () if params.ignore_eos else self.eos_token_ids
            group.data["plain_greedy"] = (params.greedy and not params.use_beam_search
                                          and params.sequences_to_sample == 1 and not processors_for(params, eos))  # fmt: skip
        return group.data["plain_greedy"]

    def _greedy_rows(self, rows: list[tuple[SequenceGroup, Seq]], logits: Tensor) -> None:
        """Append each row's argmax token, as `choose_next` chooses it for plain greedy parameters."""
        tokens = logits.argmax(dim=-1)
        picked = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0].tolist()
        now = time.perf_counter()
        for (group, seq), token, lp in zip(rows, tokens.tolist(), picked):
            group.forked = True
            group.data.setdefault("first_token", now)
            seq.output.append(token)
            seq.cumulative_logprob += lp
            self._check_stop(seq, group.params, () if group.params.ignore_eos else self.eos_token_ids)
            if seq.finished:
                self.block_manager.free(seq.seq_id)

    def _beam_step(self, group: SequenceGroup, beams: list[Seq], logits: Tensor) -> None:
        """Advance a beam-search group by one token: choose the candidates, record the finished
        hypotheses, fork beams continued by several candidates, free beams continued by none."""
        params: SamplingParams = group.params
        width, penalty = params.beam_width, params.length_penalty
        eos = sorted(set(() if params.ignore_eos else self.eos_token_ids) | set(params.stop_token_ids))
        new_len = len(beams[0].output) + 1
        logprobs = torch.log_softmax(logits, dim=-1)  # (beams, vocab)
        live, done = self.beam_step_fn([s.cumulative_logprob for s in beams], logprobs, width, new_len=new_len,
                                       length_penalty=penalty, eos_token_ids=eos,
                                       last=new_len >= group.data["max_new"])  # fmt: skip
        finished = group.data["beam_finished"]  # (normalised score, tokens, sum of log-probabilities), best first
        finished += [(score, beams[r].output + [token], beams[r].cumulative_logprob + logprobs[r, token].item())
                     for r, token, score in done]  # fmt: skip
        finished[:] = sorted(finished, key=lambda h: -h[0])[:width]
        if "first_token" not in group.data:
            group.data["first_token"] = time.perf_counter()
        if len(live) < width:  # the length limit: nothing left to extend
            self._end_beams(group)
            return
        plan, continued = [], set()
        for r, token, total in live:  # forks first, from the parents as they were
            parent = beams[r]
            if r in continued:
                child = Seq(next(self._seq_ids), list(parent.prompt), list(parent.output), parent.num_computed)
                self.block_manager.fork(parent.seq_id, child.seq_id)
                self.stats["beam_forks"] += 1
            else:
                continued.add(r)
                child = parent
            plan.append((child, token, total))
        for r, beam in enumerate(beams):
            if r not in continued:  # no candidate continues this beam: its blocks go back at once
                self.block_manager.free(beam.seq_id)
                self.block_manager.namespaces.pop(beam.seq_id, None)
        for child, token, total in plan:
            child.output.append(token)
            child.cumulative_logprob = total
        group.seqs = [child for child, _, _ in plan]  # in candidate order, as beam.py keeps its rows
        best = max(total for _, _, total in plan)
        if len(finished) == width and best / new_len**penalty <= finished[-1][0]:
            self._end_beams(group)  # no running beam can beat the worst finished hypothesis

    def _end_beams(self, group: SequenceGroup) -> None:
        for seq in group.seqs:
            seq.finish_reason = seq.finish_reason or "beam_done"
            self.block_manager.free(seq.seq_id)

    def _check_stop(self, seq: Seq, params: SamplingParams, eos: Sequence[int]) -> None:
        token, n = seq.output[-1], len(seq.output)
        if n >= params.min_tokens and (token in eos or token in params.stop_token_ids):
            seq.finish_reason = "stop"
        elif params.stop and self.tokenizer is not None and n >= params.min_tokens:
            text = self.tokenizer.decode(seq.output)
            if any(s in text for s in params.stop):
                seq.finish_reason = "stop"
        if seq.finish_reason is None and (n >= params.max_tokens or len(seq) >= self.context_length):
            seq.finish_reason = "length"

    def _output(self, group: SequenceGroup) -> RequestOutput:
        params: SamplingParams = group.params
        if params.use_beam_search:
            return self._beam_output(group)
        seqs = list(group.seqs)
        if group.finished and params.sequences_to_sample > params.n:  # best_of: keep the n most probable
            seqs = sorted(seqs, key=lambda s: -s.cumulative_logprob)[: params.n]
        outputs = [CompletionOutput(i if len(seqs) < len(group.seqs) else s.index, list(s.output), self._text(s, params),
                                    s.finish_reason, s.cumulative_logprob) for i, s in enumerate(seqs)]  # fmt: skip
        metrics = {k: group.data[k] for k in ("arrival", "first_token") if k in group.data}
        return RequestOutput(group.request_id, list(group.seqs[0].prompt), outputs, group.finished, metrics)

    def _beam_output(self, group: SequenceGroup) -> RequestOutput:
        """Finished: the n best hypotheses with their scores; running: the n best live beams."""
        params: SamplingParams = group.params
        prompt = list(group.seqs[0].prompt)
        eos = set(() if params.ignore_eos else self.eos_token_ids) | set(params.stop_token_ids)
        outputs = []
        if group.finished:
            for i, (score, tokens, total) in enumerate(group.data["beam_finished"][: params.n]):
                seq = Seq(-1, prompt, list(tokens), finish_reason="stop" if tokens[-1] in eos else "length")
                outputs.append(CompletionOutput(i, list(tokens), self._text(seq, params), seq.finish_reason, total, score))
        else:
            for i, seq in enumerate(sorted(group.seqs, key=lambda s: -s.cumulative_logprob)[: params.n]):
                outputs.append(CompletionOutput(i, list(seq.output), self._text(seq, params), None, seq.cumulative_logprob))
        metrics = {k: group.data[k] for k in ("arrival", "first_token") if k in group.data}
        return RequestOutput(group.request_id, prompt, outputs, group.finished, metrics)

    def _text(self, seq: Seq, params: SamplingParams) -> str:
        if self.tokenizer is None:
            return ""
        ids = [t for t in seq.output if not (seq.finish_reason == "stop" and t in self.eos_token_ids + params.stop_token_ids)]
        text = self.tokenizer.decode(ids)
        for s in params.stop:  # the text up to, not including, a stop string
            if s in text:
                text = text[: text.index(s)]
        return text

    # -- many at once ----------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str | Sequence[int]] | str,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 lora: str | None | Sequence[str | None] = None) -> list[RequestOutput]:  # fmt: skip
        """Run prompts to completion, all admitted at once and batched continuously; the outputs
        come back in the prompts' order. `lora`: one adapter name (or None) for all, or one per prompt."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
        loras = list(lora) if isinstance(lora, (list, tuple)) else [lora] * len(prompts)
        if len(loras) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(loras)} LoRA adapter names")
        ids = [self.add_request(p, sp, lora=name) for p, sp, name in zip(prompts, params, loras)]
        final: dict[Hashable, RequestOutput] = {}
        while self.has_unfinished_requests():
            for output in self.step():
                if output.finished:
                    final[output.request_id] = output
        return [final[i] for i in ids]
