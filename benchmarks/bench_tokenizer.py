"""Reference byte-level BPE against Hugging Face `tokenizers` (Rust): training time, encoding speed
and compression, on the same text.

Trains `reference.tokenizer.train_bpe` and `tokenizers`' `BpeTrainer` (ByteLevel pre-tokeniser, the
256 bytes as initial alphabet, "<|endoftext|>" special) on a sample of the course corpus mixed from
all three sources, for each vocabulary size, then encodes the same sample with each. `tokenizers` is
given the documents whole (from a file it would train on each line apart, and its pre-tokens would
break at every newline), so both count the same pre-tokens. Our encoder is
timed cold (empty pre-token cache) and warm (second pass). Both run in this process; `tokenizers`
runs on one thread unless --hf-threads says otherwise (it reads TOKENIZERS_PARALLELISM and
RAYON_NUM_THREADS at its first parallel call). --whole-corpus also trains on the whole corpus, with
--processes worker processes for our pre-token counting.

    python benchmarks/bench_tokenizer.py [--sample-bytes 4000000] [--vocab 2000 8192] [--whole-corpus] [--processes 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from reference.data.corpus import SOURCES, load_corpus, mix, write_corpus
from reference.tokenizer import Tokenizer, train_bpe

EOT = "<|endoftext|>"


def seconds(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def train_hf(path: Path, vocab_size: int):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(path.read_text(encoding="utf-8").split(EOT), trainer)  # documents whole, not by line
    return hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-bytes", type=int, default=4_000_000)
    parser.add_argument("--vocab", type=int, nargs="+", default=[2000, 8192])
    parser.add_argument("--hf-threads", type=int, default=1)
    parser.add_argument("--whole-corpus", action="store_true")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.hf_threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if args.hf_threads > 1 else "false"

    corpus = load_corpus()
    with tempfile.TemporaryDirectory() as folder:
        weights = dict.fromkeys(SOURCES, 1.0)
        sample = write_corpus(mix(corpus, weights, args.sample_bytes, seed=0), Path(folder) / "sample.txt", EOT)
        text = sample.read_text(encoding="utf-8")
        megabytes = len(text.encode()) / 1e6
        print(f"sample: {megabytes:.2f} MB of the course corpus (books, prose, code equally weighted); "
              f"tokenizers on {args.hf_threads} thread(s); ours in one process")
        header = (f"{'vocab':>6} {'train s':>8} {'hf train s':>10} {'ratio':>7} {'enc MB/s':>9} {'warm MB/s':>10} "
                  f"{'hf MB/s':>8} {'ratio':>7} {'bytes/tok':>10} {'hf bytes/tok':>13}")
        print(header)
        print("-" * len(header))
        for vocab_size in args.vocab:
            t_ours, (vocab, merges) = seconds(partial(train_bpe, sample, vocab_size, [EOT]))
            t_hf, hf = seconds(partial(train_hf, sample, vocab_size))
            tokenizer = Tokenizer(vocab, merges, [EOT])
            e_cold, ids = seconds(partial(tokenizer.encode, text))
            e_warm, _ = seconds(partial(tokenizer.encode, text))
            e_hf, encoding = seconds(partial(hf.encode, text))
            assert tokenizer.decode(ids) == text
            print(
                f"{vocab_size:>6} {t_ours:>8.2f} {t_hf:>10.2f} {t_ours / t_hf:>6.1f}x {megabytes / e_cold:>9.2f} "
                f"{megabytes / e_warm:>10.2f} {megabytes / e_hf:>8.2f} {e_cold / e_hf:>6.1f}x "
                f"{len(text.encode()) / len(ids):>10.3f} {len(text.encode()) / len(encoding.ids):>13.3f}"
            )
        print("ratios > 1: ours is slower than tokenizers (training; cold encoding).")
        if args.whole_corpus:
            whole = write_corpus(corpus, Path(folder) / "corpus.txt", EOT)
            size = whole.stat().st_size / 1e6
            vocab_size = max(args.vocab)
            t_ours, _ = seconds(lambda: train_bpe(whole, vocab_size, [EOT], num_processes=args.processes))
            t_hf, _ = seconds(lambda: train_hf(whole, vocab_size))
            print(f"whole corpus, {size:.1f} MB, vocab {vocab_size}: ours {t_ours:.1f} s with {args.processes} "
                  f"process(es), tokenizers {t_hf:.1f} s ({t_ours / t_hf:.1f}x)")


if __name__ == "__main__":
    main()
