"""The course's chapters and exercises, in order: the single source for `llm-course list`,
the autograder, the README's chapter table and the tests that keep them in step."""

from __future__ import annotations

from dataclasses import dataclass


# Library code an exercise may not use, because calling it would be the whole exercise. An entry is a
# dotted name, refused with everything below it ("torch.optim.lr_scheduler" refuses its classes);
# one ending in "*" refuses every name that starts with it ("torch.nn.Transformer*"); one starting
# with "." refuses a method of that name on any object (".softmax" for `x.softmax(-1)`). The grader
# resolves import aliases (`F` for `torch.nn.functional`) and checks the exercise's own definition
# and the module-level code it reaches. Every exercise also refuses ALWAYS_REFUSED.
ALWAYS_REFUSED = ("transformers", "torch.ops", "torch._C", "torch._refs", "torch._decomp", "torch._prims")
SOFTMAX = (
    "torch.softmax", "torch.log_softmax", "torch._softmax", "torch._log_softmax", "torch.special.softmax",
    "torch.special.log_softmax", "torch.nn.functional.softmax", "torch.nn.functional.log_softmax",
    "torch.nn.functional.softmin", "torch.nn.functional.gumbel_softmax", "torch.nn.Softmax", "torch.nn.LogSoftmax",
    "torch.nn.Softmin", ".softmax", ".log_softmax",
)  # fmt: skip
MHA_LIBRARY = ("torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward")
SDPA_LIBRARY = MHA_LIBRARY + (
    "torch.nn.functional.scaled_dot_product_attention", "torch.nn.attention", "torch._scaled_dot_product*",
    "torch._fused_sdp*",
)  # fmt: skip
LAYER_NORM = ("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm", "torch.nn.LayerNorm",
              "torch.nn.functional.group_norm", "torch.group_norm", "torch.nn.GroupNorm")  # fmt: skip
RMS_NORM = ("torch.nn.functional.rms_norm", "torch.rms_norm", "torch.nn.RMSNorm", "torch._fused_rms_norm*")
CROSS_ENTROPY = ("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.CrossEntropyLoss",
                 "torch.nn.NLLLoss", "torch.nll_loss*", "torch.cross_entropy*")  # fmt: skip
ADAM = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.adam", "torch.optim.adamw", "torch.optim._functional",
        "torch._fused_adam*")  # fmt: skip
CLIP_GRAD = ("torch.nn.utils.clip_grad*", "torch.nn.utils.clip_grads_with_norm_", "torch.nn.utils.get_total_norm")
TOKENIZER_LIBRARIES = ("tokenizers", "tiktoken", "sentencepiece")
COLLECTIVES_LIBRARY = tuple(
    f"torch.distributed.{name}"
    for name in ("broadcast*", "reduce*", "all_reduce*", "all_gather*", "all_to_all*", "scatter*", "gather*",
                 "_functional_collectives", "nn", "_reduce_scatter_base", "_all_gather_base", "algorithms")
)  # fmt: skip


@dataclass(frozen=True)
class Exercise:
    """One exercise: a function or class of `reference.<module>` that a learner writes in `exercises.<module>`.

    `points` weighs its difficulty (1 to 10), whatever the number of its tests: the grader shares
    them among the exercise's tests in proportion to the tests' `@pytest.mark.points` weights.
    `refused` names the library calls that would make it trivial (see ALWAYS_REFUSED above).
    """

    id: str  # "1.3": chapter number and position in the chapter
    title: str
    module: str  # module path below the package, e.g. "attention" or "models.llama"
    qualname: str  # "causal_mask" or "MultiHeadAttention"
    points: int = 1
    refused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.points, int) or isinstance(self.points, bool) or not 1 <= self.points <= 10:
            raise ValueError(f"exercise {self.id}: points must be an int from 1 to 10, got {self.points!r}")

    @property
    def chapter(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def refused_calls(self) -> tuple[str, ...]:
        """Every library name this exercise may not use: its own list and ALWAYS_REFUSED."""
        return tuple(dict.fromkeys(self.refused + ALWAYS_REFUSED))


@dataclass(frozen=True)
class Chapter:
    """One chapter: its notebook, the reference modules it teaches, its exercises and their tests."""

    number: int
    slug: str
    title: str
    survey_section: str
    modules: tuple[str, ...] = ()
    exercises: tuple[Exercise, ...] = ()
    tests: tuple[str, ...] = ()  # test files, relative to the repository root

    @property
    def notebook(self) -> str:
        return f"chapters/{self.number:02d}_{self.slug}.ipynb"


TENSOR_PARALLEL_LIBRARY = ("torch.distributed.tensor", "torch.distributed._tensor", "torch.distributed.nn",
                           "torch.distributed._functional_collectives")  # Chapter 9: DTensor would do the sharding
# Chapter 8: torch's own data parallelism and sharding, and the collectives called past the course's
# counted ones (reference.distributed.volume), would make the exercises trivial or their byte counts wrong
DATA_PARALLEL_LIBRARY = COLLECTIVES_LIBRARY + (
    "torch.nn.parallel", "torch.distributed.fsdp", "torch.distributed.optim", "torch.distributed._composable",
    "torch.distributed.tensor", "torch.distributed._tensor",
)  # fmt: skip


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(
        number=0,
        slug="getting_started",
        title="Getting started",
        survey_section="I (article overview)",
    ),
    Chapter(
        number=1,
        slug="attention",
        title="Self-attention and multi-head attention",
        survey_section="1.2(a) Self-Attention Mechanism",
        modules=("attention",),
        exercises=(
            Exercise("1.1", "numerically stable softmax", "attention", "softmax", points=2, refused=SOFTMAX),
            Exercise("1.2", "causal mask", "attention", "causal_mask", points=2, refused=("torch.nn.Transformer*",)),
            Exercise("1.3", "padding mask", "attention", "padding_mask", points=2),
            Exercise("1.4", "attention weights", "attention", "attention_weights", points=3, refused=MHA_LIBRARY),
            Exercise("1.5", "scaled dot-product attention", "attention", "scaled_dot_product_attention", points=3, refused=SDPA_LIBRARY),
            Exercise("1.6", "repeat key/value heads (GQA)", "attention", "repeat_kv", points=2),
            Exercise("1.7", "multi-head attention module", "attention", "MultiHeadAttention", points=8, refused=MHA_LIBRARY + ("torch.nn.Transformer*",)),
        ),
        tests=("tests/test_attention.py",),
    ),
    Chapter(
        number=2,
        slug="positional_encoding",
        title="Positional encoding",
        survey_section="1.2(a) Positional Embedding",
        modules=("positional",),
        exercises=(
            Exercise("2.1", "sinusoidal encoding", "positional", "sinusoidal_encoding", points=3),
            Exercise("2.2", "learned position embeddings", "positional", "LearnedPositionalEmbedding", points=2),
            Exercise("2.3", "T5 relative position buckets", "positional", "relative_position_bucket", points=5),
            Exercise("2.4", "T5 relative position bias", "positional", "RelativePositionBias", points=4),
            Exercise("2.5", "RoPE frequencies", "positional", "rope_frequencies", points=2),
            Exercise("2.6", "RoPE layouts: interleaved to half", "positional", "interleaved_to_half", points=2),
            Exercise("2.7", "RoPE layouts: half to interleaved", "positional", "half_to_interleaved", points=2),
            Exercise("2.8", "apply a rotation (both layouts)", "positional", "apply_rope", points=4),
            Exercise("2.9", "rotary embedding with a growing cache", "positional", "RotaryEmbedding", points=5),
            Exercise("2.10", "ALiBi slopes", "positional", "alibi_slopes", points=3),
            Exercise("2.11", "ALiBi bias", "positional", "alibi_bias", points=3),
            Exercise("2.12", "ALiBi as an attention scheme", "positional", "ALiBi", points=4),
        ),
        tests=("tests/test_positional.py",),
    ),
    Chapter(
        number=3,
        slug="prompt_learning",
        title="Prompt learning",
        survey_section="1.2(b) Prompt Learning; 4 zero-shot, few-shot and chain-of-thought prompting",
        modules=("prompting.modules", "prompting.core", "prompting.strategies", "prompting.reasoning"),
        exercises=(
            Exercise("3.1", "prepend a soft prompt", "prompting.modules", "prepend_prompt", points=2),
            Exercise("3.2", "prefix keys and values (peft's layout)", "prompting.modules", "prefix_key_values", points=4),
            Exercise("3.3", "multi-token label-word log-probability", "prompting.core", "word_logprobs", points=4,
                     refused=("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss")),
            Exercise("3.4", "contextual calibration", "prompting.core", "calibrate", points=2),
            Exercise("3.5", "AutoPrompt candidate tokens", "prompting.core", "autoprompt_candidates", points=3),
            Exercise("3.6", "answer extraction from a chain of thought", "prompting.core", "extract_answer", points=3),
        ),
        tests=("tests/test_prompting.py",),
    ),
    Chapter(
        number=4,
        slug="data_and_tokenizer",
        title="Data preparation and tokenization",
        survey_section="2.1 Data Preparation and Preprocessing",
        modules=("data.corpus", "data.quality", "data.dedup", "data.privacy", "data.toxicity", "data.pipeline",
                 "data.samples", "tokenizer"),
        exercises=(
            Exercise("4.1", "quality signals", "data.quality", "quality_signals", points=3),
            Exercise("4.2", "logistic-regression step", "data.quality", "logistic_regression_step", points=4, refused=("sklearn", "scipy")),
            Exercise("4.3", "shingles", "data.dedup", "shingles", points=2),
            Exercise("4.4", "MinHash signature", "data.dedup", "minhash_signature", points=4, refused=("datasketch",)),
            Exercise("4.5", "LSH candidate pairs", "data.dedup", "lsh_candidate_pairs", points=4, refused=("datasketch",)),
            Exercise("4.6", "Luhn check", "data.privacy", "luhn_valid", points=2),
            Exercise("4.7", "find personal data", "data.privacy", "find_pii", points=5),
            Exercise("4.8", "word-list toxicity score", "data.toxicity", "word_list_score", points=2),
            Exercise("4.9", "pipeline with per-stage statistics", "data.pipeline", "Pipeline", points=5),
            Exercise("4.10", "pre-tokenise around special tokens", "tokenizer", "pretokenize", points=3, refused=TOKENIZER_LIBRARIES),
            Exercise("4.11", "merge one pair in a word", "tokenizer", "merge_pair", points=2, refused=TOKENIZER_LIBRARIES),
            Exercise("4.12", "chunk boundaries at special tokens", "tokenizer", "find_chunk_boundaries", points=3, refused=TOKENIZER_LIBRARIES),
            Exercise("4.13", "train byte-level BPE", "tokenizer", "train_bpe", points=9, refused=TOKENIZER_LIBRARIES),
            Exercise("4.14", "encode one pre-token by merge rank", "tokenizer", "apply_merges", points=4, refused=TOKENIZER_LIBRARIES),
            Exercise("4.15", "tokenizer (encode, decode, stream, save, load)", "tokenizer", "Tokenizer", points=8, refused=TOKENIZER_LIBRARIES),
        ),
        tests=("tests/test_data_quality.py", "tests/test_data_dedup.py", "tests/test_data_privacy.py",
               "tests/test_data_toxicity.py", "tests/test_data_pipeline.py", "tests/test_tokenizer.py"),
    ),
    Chapter(
        number=5,
        slug="architectures",
        title="Model architectures",
        survey_section="2.2 Model Architecture",
        modules=("models.parts", "models.masks", "models.llama", "models.gpt", "models.encoder",
                 "models.encoder_decoder", "models.counting", "models.hf"),
        exercises=(
            Exercise("5.1", "LayerNorm", "models.parts", "LayerNorm", points=3, refused=LAYER_NORM),
            Exercise("5.2", "RMSNorm", "models.parts", "RMSNorm", points=2, refused=RMS_NORM),
            Exercise("5.3", "GELU / ReLU feed-forward block", "models.parts", "MLP", points=2),
            Exercise("5.4", "SwiGLU feed-forward block", "models.parts", "SwiGLU", points=3),
            Exercise("5.5", "pre-norm and post-norm residual block", "models.parts", "Block", points=4, refused=("torch.nn.Transformer*",)),
            Exercise("5.6", "prefix-decoder mask", "models.masks", "prefix_mask", points=2),
            Exercise("5.7", "LLaMA-style causal decoder", "models.llama", "TransformerLM", points=8, refused=("torch.nn.Transformer*",)),
            Exercise("5.8", "closed-form parameter count", "models.counting", "llama_parameter_count", points=4),
        ),
        tests=("tests/test_models.py",),
    ),
    Chapter(
        number=6,
        slug="pretraining",
        title="Pre-training",
        survey_section="2.3 Pre-training Tasks, 2.4 Model Training",
        modules=("training.objectives", "training.numerics", "training.data", "training.checkpoint",
                 "training.trainer", "training.assets", "pretrained"),
        exercises=(
            Exercise("6.1", "next-token prediction", "training.objectives", "next_token_prediction", points=2),
            Exercise("6.2", "masked language modelling (80/10/10)", "training.objectives", "masked_language_modeling", points=5),
            Exercise("6.3", "T5 random noise spans", "training.objectives", "random_spans_noise_mask", points=6),
            Exercise("6.4", "span corruption with sentinels", "training.objectives", "span_corruption", points=5),
            Exercise("6.5", "prefix language model", "training.objectives", "prefix_language_modeling", points=3),
            Exercise("6.6", "stable log-softmax", "training.numerics", "log_softmax", points=2, refused=SOFTMAX + ("torch.logsumexp", ".logsumexp")),
            Exercise("6.7", "cross-entropy", "training.numerics", "cross_entropy", points=3, refused=CROSS_ENTROPY),
            Exercise("6.8", "AdamW", "training.numerics", "AdamW", points=6, refused=ADAM),
            Exercise("6.9", "cosine schedule with warm-up", "training.numerics", "cosine_schedule", points=3, refused=("torch.optim.lr_scheduler",)),
            Exercise("6.10", "gradient clipping", "training.numerics", "clip_grad_norm_", points=3, refused=CLIP_GRAD),
            Exercise("6.11", "random batches of a token array", "training.data", "get_batch", points=2),
            Exercise("6.12", "save a checkpoint atomically", "training.checkpoint", "save_checkpoint", points=4),
            Exercise("6.13", "load a checkpoint safely", "training.checkpoint", "load_checkpoint", points=5),
        ),
        tests=("tests/test_training_objectives.py", "tests/test_training_numerics.py", "tests/test_training_data.py",
               "tests/test_training_checkpoint.py"),
    ),
    Chapter(
        number=7,
        slug="collectives",
        title="Collective communication",
        survey_section="2.4(a) Parallel Training",
        modules=("distributed.launch", "distributed.p2p", "distributed.collectives", "distributed.cost", "distributed.measure"),
        exercises=(
            Exercise("7.1", "broadcast along a binomial tree", "distributed.collectives", "broadcast", points=5, refused=COLLECTIVES_LIBRARY),
            Exercise("7.2", "reduce along a binomial tree", "distributed.collectives", "reduce", points=5, refused=COLLECTIVES_LIBRARY),
            Exercise("7.3", "naive all-reduce", "distributed.collectives", "all_reduce_naive", points=3, refused=COLLECTIVES_LIBRARY),
            Exercise("7.4", "ring reduce-scatter step", "distributed.collectives", "ring_reduce_scatter", points=5, refused=COLLECTIVES_LIBRARY),
            Exercise("7.5", "ring all-gather step", "distributed.collectives", "ring_all_gather", points=4, refused=COLLECTIVES_LIBRARY),
            Exercise("7.6", "ring all-reduce", "distributed.collectives", "all_reduce_ring", points=5, refused=COLLECTIVES_LIBRARY),
            Exercise("7.7", "recursive-doubling all-reduce", "distributed.collectives", "all_reduce_recursive_doubling", points=6, refused=COLLECTIVES_LIBRARY),
            Exercise("7.8", "reduce-scatter", "distributed.collectives", "reduce_scatter", points=4, refused=COLLECTIVES_LIBRARY),
            Exercise("7.9", "all-gather", "distributed.collectives", "all_gather", points=4, refused=COLLECTIVES_LIBRARY),
            Exercise("7.10", "all-to-all", "distributed.collectives", "all_to_all", points=5, refused=COLLECTIVES_LIBRARY),
        ),
        tests=("tests/test_collectives.py",),
    ),
    Chapter(
        number=13,
        slug="evaluation",
        title="Evaluation",
        survey_section="2.6 Evaluation",
        modules=("evaluation.bleu", "evaluation.rouge", "evaluation.bertscore", "evaluation.qa", "evaluation.perplexity",
                 "evaluation.harness", "evaluation.instruction_tasks", "evaluation.execution", "evaluation.human",
                 "evaluation.security"),
        exercises=(
            Exercise("13.1", "BLEU brevity penalty", "evaluation.bleu", "brevity_penalty", points=2, refused=("sacrebleu", "nltk")),
            Exercise("13.2", "clipped n-gram matches", "evaluation.bleu", "modified_precision_stats", points=3, refused=("sacrebleu", "nltk")),
            Exercise("13.3", "BLEU from statistics, with smoothing", "evaluation.bleu", "bleu_from_stats", points=5, refused=("sacrebleu", "nltk")),
            Exercise("13.4", "longest common subsequence table", "evaluation.rouge", "lcs_table", points=3, refused=("rouge_score", "nltk")),
            Exercise("13.5", "Porter stemmer", "evaluation.rouge", "porter_stem", points=7, refused=("rouge_score", "nltk")),
            Exercise("13.6", "BERTScore greedy matching", "evaluation.bertscore", "greedy_match", points=4, refused=("bert_score",)),
            Exercise("13.7", "IDF weights", "evaluation.bertscore", "idf_weights", points=2, refused=("bert_score",)),
            Exercise("13.8", "SQuAD answer normalisation", "evaluation.qa", "normalize_answer", points=2),
            Exercise("13.9", "SQuAD token F1", "evaluation.qa", "token_f1", points=3),
            Exercise("13.10", "BM25 index and scores", "evaluation.qa", "BM25", points=5, refused=("rank_bm25",)),
            Exercise("13.11", "strided sliding-window NLL", "evaluation.perplexity", "sliding_window_nll", points=5),
            Exercise("13.12", "acc and acc_norm", "evaluation.harness", "multiple_choice_scores", points=3),
            Exercise("13.13", "unbiased pass@k", "evaluation.harness", "pass_at_k", points=2),
            Exercise("13.14", "Cohen's kappa", "evaluation.human", "cohen_kappa", points=3, refused=("sklearn", "statsmodels")),
            Exercise("13.15", "Fleiss' kappa", "evaluation.human", "fleiss_kappa", points=3, refused=("sklearn", "statsmodels")),
            Exercise("13.16", "canary exposure", "evaluation.security", "exposure", points=2),
        ),
        tests=("tests/test_evaluation.py", "tests/test_evaluation_lm.py"),
    ),
    Chapter(
        number=9,
        slug="model_parallel",
        title="Model parallelism: tensor and pipeline",
        survey_section="2.4(a) Model and Pipeline Parallel, 3.3 Parallel Computing",
        modules=("distributed.tensor_parallel", "distributed.pipeline"),
        exercises=(
            Exercise("9.1", "f: identity forward, all-reduce backward", "distributed.tensor_parallel", "CopyToParallel", points=3, refused=TENSOR_PARALLEL_LIBRARY),
            Exercise("9.2", "g: all-reduce forward, identity backward", "distributed.tensor_parallel", "ReduceFromParallel", points=3, refused=TENSOR_PARALLEL_LIBRARY),
            Exercise("9.3", "column-parallel linear", "distributed.tensor_parallel", "ColumnParallelLinear", points=5, refused=TENSOR_PARALLEL_LIBRARY),
            Exercise("9.4", "row-parallel linear", "distributed.tensor_parallel", "RowParallelLinear", points=5, refused=TENSOR_PARALLEL_LIBRARY),
            Exercise("9.5", "vocabulary-parallel embedding", "distributed.tensor_parallel", "VocabParallelEmbedding", points=4, refused=TENSOR_PARALLEL_LIBRARY),
            Exercise("9.6", "vocabulary-parallel cross-entropy", "distributed.tensor_parallel", "VocabParallelCrossEntropy", points=6, refused=TENSOR_PARALLEL_LIBRARY + CROSS_ENTROPY + SOFTMAX),
            Exercise("9.7", "GPipe schedule", "distributed.pipeline", "gpipe_order", points=2),
            Exercise("9.8", "1F1B (PipeDream-Flush) schedule", "distributed.pipeline", "one_f_one_b_order", points=5, refused=("torch.distributed.pipelining",)),
            Exercise("9.9", "bubble fraction from a timeline", "distributed.pipeline", "bubble_fraction", points=3),
            Exercise("9.10", "interleaved 1F1B schedule", "distributed.pipeline", "interleaved_order", points=5, refused=("torch.distributed.pipelining",)),
        ),
        tests=("tests/test_tensor_parallel.py", "tests/test_pipeline.py"),
    ),
    Chapter(
        number=8,
        slug="data_parallel_zero",
        title="Data parallelism and ZeRO",
        survey_section="2.4(a) Data Parallel and ZeRO, 2.4(c) Offloading, 2.4(d) Overlapping",
        modules=("distributed.ddp", "distributed.zero", "distributed.volume", "distributed.dp_training"),
        exercises=(
            Exercise("8.1", "DDP with one all-reduce per parameter", "distributed.ddp", "DDPIndividualParameters", points=5, refused=DATA_PARALLEL_LIBRARY),
            Exercise("8.2", "bucketed DDP", "distributed.ddp", "DDPBucketed", points=7, refused=DATA_PARALLEL_LIBRARY),
            Exercise("8.3", "flat shards with padding", "distributed.zero", "flat_shard_layout", points=2),
            Exercise("8.4", "ZeRO memory per rank", "distributed.zero", "zero_memory_bytes", points=2),
            Exercise("8.5", "ZeRO communication per rank", "distributed.zero", "zero_communication_bytes", points=2),
            Exercise("8.6", "ZeRO stages 1 and 2 (and offloading)", "distributed.zero", "ZeroOptimizer", points=9, refused=DATA_PARALLEL_LIBRARY),
            Exercise("8.7", "ZeRO stage 3 (sharded parameters)", "distributed.zero", "ShardedModule", points=10, refused=DATA_PARALLEL_LIBRARY),
            Exercise("8.8", "memory per rank, counted from the tensors", "distributed.zero", "memory_per_rank", points=4),
        ),
        tests=("tests/test_data_parallel.py", "tests/test_zero.py"),
    ),
    Chapter(
        number=10,
        slug="mixed_precision_memory",
        title="Mixed precision, activation checkpointing and overlapping",
        survey_section="2.4(b) Mixed Precision Training, 2.4(d) Overlapping, 2.4(e) Checkpoint",
        modules=("precision", "checkpointing", "overlap"),
        exercises=(
            Exercise("10.1", "range and precision of a float format", "precision", "format_limits", points=3, refused=("torch.finfo", "numpy.finfo")),
            Exercise("10.2", "decode a bit pattern", "precision", "decode", points=4, refused=(".view", "struct", "numpy.frombuffer")),
            Exercise("10.3", "round into a format (ties to even)", "precision", "round_to_format", points=6,
                     refused=(".to", ".half", ".bfloat16", ".float", ".type", "torch.Tensor.to", "numpy.float16")),
            Exercise("10.4", "static and dynamic loss scaler", "precision", "LossScaler", points=5, refused=("torch.amp", "torch.cuda.amp", "torch._amp*")),
            Exercise("10.5", "mixed-precision step with fp32 master weights", "precision", "mixed_precision_step", points=6, refused=("torch.amp", "torch.cuda.amp", "torch.autocast")),
            Exercise("10.6", "memory of mixed-precision Adam", "precision", "adam_memory_bytes", points=1),
            Exercise("10.7", "recompute-in-backward checkpoint", "checkpointing", "checkpoint", points=7, refused=("torch.utils.checkpoint",)),
            Exercise("10.8", "sqrt(n) segments", "checkpointing", "segment_boundaries", points=2),
            Exercise("10.9", "saved-activation meter", "checkpointing", "SavedTensorMeter", points=5),
        ),
        tests=("tests/test_precision.py", "tests/test_checkpointing.py"),
    ),
    Chapter(
        number=16,
        slug="paged_attention_serving",
        title="PagedAttention and serving",
        survey_section="3.4 PagedAttention, 3.5 Inference Frameworks, 4 Utilization",
        modules=("serving.blocks", "serving.paged_attention", "serving.scheduler", "serving.beam", "serving.engine",
                 "serving.lora", "serving.server"),
        exercises=(
            Exercise("16.1", "slot mapping through a block table", "serving.blocks", "slot_mapping", points=2),
            Exercise("16.2", "chained prefix hashes of full blocks", "serving.blocks", "block_hashes", points=2),
            Exercise("16.3", "block pool with reference counts", "serving.blocks", "BlockAllocator", points=4),
            Exercise("16.4", "gather keys/values through block tables", "serving.paged_attention", "gather_kv", points=3),
            Exercise("16.5", "paged attention (decode and prefill)", "serving.paged_attention", "paged_attention", points=5,
                     refused=SDPA_LIBRARY),
            Exercise("16.6", "preemption by recomputation or swapping", "serving.scheduler", "Scheduler.preempt", points=4),
            Exercise("16.7", "iteration-level FCFS scheduling", "serving.scheduler", "Scheduler.schedule", points=7),
            Exercise("16.8", "one beam-search step over all beams x vocabulary", "serving.beam", "beam_step", points=4),
            Exercise("16.9", "per-row LoRA update over a shared base (gathered adapters)", "serving.lora", "lora_delta",
                     points=3),
        ),
        tests=("tests/test_serving_blocks.py", "tests/test_serving_attention.py", "tests/test_serving_scheduler.py",
               "tests/test_serving_beam.py", "tests/test_serving_lora.py"),
    ),
    Chapter(
        number=15,
        slug="efficient_inference",
        title="Efficient inference",
        survey_section="3.2 Memory Scheduling, 3.3 Parallelism, 3.4 Structural Optimization",
        modules=("inference.generate", "inference.sampling", "inference.beam", "inference.flash", "inference.speculative",
                 "inference.offload"),
        exercises=(
            Exercise("15.1", "key/value cache update (preallocated and growing)", "inference.generate", "LayerKVCache", points=4),
            Exercise("15.2", "top-k filter", "inference.sampling", "top_k_filter", points=2),
            Exercise("15.3", "top-p (nucleus) filter", "inference.sampling", "top_p_filter", points=3),
            Exercise("15.4", "min-p filter", "inference.sampling", "min_p_filter", points=2),
            Exercise("15.5", "repetition penalty", "inference.sampling", "repetition_penalty", points=2),
            Exercise("15.6", "frequency and presence penalties", "inference.sampling", "frequency_presence_penalty", points=2),
            Exercise("15.7", "FlashAttention forward (online softmax, L)", "inference.flash", "flash_attention_forward", points=8, refused=SDPA_LIBRARY + ("torch.logsumexp", ".logsumexp")),
            Exercise("15.8", "FlashAttention backward (recompute tile by tile)", "inference.flash", "flash_attention_backward", points=8, refused=SDPA_LIBRARY + ("torch.autograd.grad", ".backward")),
            Exercise("15.9", "speculative decoding acceptance rule", "inference.speculative", "accept_draft", points=5),
            Exercise("15.10", "beam search with length penalty", "inference.beam", "beam_search", points=8),
        ),
        tests=("tests/test_inference_generate.py", "tests/test_inference_sampling.py", "tests/test_inference_flash.py",
               "tests/test_inference_speculative.py"),
    ),
    Chapter(
        number=11,
        slug="fine_tuning",
        title="Fine-tuning: SFT, LoRA, QLoRA, prefix and P-tuning v2",
        survey_section="2.5(a) Supervised Fine-Tuning, 2.5(c) Parameter-Efficient Tuning",
        modules=("finetune.lora", "finetune.sft", "finetune.quant", "finetune.instructions", "finetune.accounting",
                 "finetune.results"),
        exercises=(
            Exercise("11.1", "LoRA linear layer (scaling, init, dropout, merge, adapters)", "finetune.lora", "LoRALinear", points=7),
            Exercise("11.2", "inject LoRA by name pattern", "finetune.lora", "inject_lora", points=4),
            Exercise("11.3", "merge and unload", "finetune.lora", "merge_and_unload", points=3),
            Exercise("11.4", "response-only SFT targets", "finetune.sft", "sft_example", points=2),
            Exercise("11.5", "pack examples into rows", "finetune.sft", "pack_examples", points=5),
            Exercise("11.6", "block-diagonal causal mask", "finetune.sft", "packed_attention_mask", points=3),
            Exercise("11.7", "NF4 quantization", "finetune.quant", "quantize_nf4", points=4),
            Exercise("11.8", "NF4 dequantization", "finetune.quant", "dequantize_nf4", points=3),
            Exercise("11.9", "double quantization of the constants", "finetune.quant", "double_quantize", points=3),
            Exercise("11.10", "GGUF Q4_1 dequantization in torch", "finetune.quant", "dequantize_q4_1", points=3),
        ),
        tests=("tests/test_finetune.py",),
    ),
)
CHAPTERS = tuple(sorted(CHAPTERS, key=lambda ch: ch.number))  # each engineer appends a chapter; the course reads them in order


def chapter(key: str | int) -> Chapter:
    """The chapter named by its number (1, "1", "01") or short name ("attention")."""
    text = str(key).strip().lower()
    for ch in CHAPTERS:
        if text.isdigit() and int(text) == ch.number or text in (ch.slug, ch.slug.replace("_", "-")):
            return ch
    known = ", ".join(f"{c.number} ({c.slug})" for c in CHAPTERS)
    raise ValueError(f"no chapter {key!r}; the chapters are {known}")


def exercise(exercise_id: str) -> Exercise:
    """The exercise with this id, e.g. "1.3"."""
    for ch in CHAPTERS:
        for ex in ch.exercises:
            if ex.id == exercise_id:
                return ex
    raise ValueError(f"no exercise {exercise_id!r}")


def test_files() -> dict[str, Chapter]:
    """Every chapter test file, mapped to its chapter."""
    return {path: ch for ch in CHAPTERS for path in ch.tests}


def markdown_table() -> str:
    """The README's chapter table, made from this catalog (`llm-course list --markdown` prints it)."""
    rows = [
        "| # | chapter | survey section | notebook | reference | exercises |",
        "|---|---|---|---|---|---|",
    ]
    for ch in CHAPTERS:
        modules = ", ".join(f"[`reference/{m.replace('.', '/')}.py`](reference/{m.replace('.', '/')}.py)" for m in ch.modules) or "—"
        exercises = f"{len(ch.exercises)} in [`exercises/`](exercises/)" if ch.exercises else "—"
        notebook = f"[`{ch.notebook.split('/')[-1]}`]({ch.notebook})"
        rows.append(f"| {ch.number} | {ch.title} | {ch.survey_section} | {notebook} | {modules} | {exercises} |")
    return "\n".join(rows)
