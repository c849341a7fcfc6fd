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
        modules=("prompting.modules", "prompting.core", "prompting.strategies"),
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
)

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
