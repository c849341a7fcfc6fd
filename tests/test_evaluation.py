"""Chapter 13: the automatic metrics, each against the library that defines it.

Oracles: `sacrebleu` 2.x (BLEU, corpus and sentence level, every smoothing method, to 1e-6 on
hundreds of random and real pairs), Google's `rouge-score` (ROUGE-1/2/L/Lsum with and without
stemming, to 1e-9; its stemmer is NLTK's Porter, and NLTK's ORIGINAL_ALGORITHM checks ours word by
word), `bert-score`'s own `bert_cos_score_idf` run on the same MiniLM model object (P/R/F1, with and
without IDF, to 1e-5), `scikit-learn`'s `cohen_kappa_score`, hand-computed Fleiss' kappa
(Fleiss, 1971's table), the SQuAD v1.1 rules on hand-checked cases, pass@k against the closed form.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 13`):
- 13.1 penalty when the hypothesis is longer; r/c inverted; no 0 for an empty hypothesis.
- 13.2 counts not clipped; clipped by the sum over references instead of the max; orders off by one.
- 13.3 add-k applied to unigrams; exp smoothing not halving; effective order ignored; arithmetic mean.
- 13.4 the match case not adding 1; max taken over the diagonal.
- 13.5 step 1c applied after a consonant-only stem; -ion removed after any letter; m > 0 in step 4.
- 13.6 similarities not normalised; precision and recall swapped; weights ignored.
- 13.7 idf without the +1 smoothing; special tokens weighted.
- 13.8 articles kept; punctuation kept; not lowercased.
- 13.9 set instead of multiset overlap; mean instead of max over golds; P and R from the wrong sides.
- 13.10 no length normalisation; idf that goes negative; k1 + 1 missing.
- 13.12 acc_norm by token count or not normalised; ties to the last choice.
- 13.13 biased estimate c/n; C(n-c, k) with the wrong terms.
- 13.14 p_e from pooled labels; observed agreement not normalised.
- 13.15 P_i without the -n; p_c over items only.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

sacrebleu = pytest.importorskip("sacrebleu")

WORDS = ("the a cat dog sat on mat . , ; 3.5 1,000 - ( ) &amp; \" ran quickly over lazy fox brown "
         "it's well-known e.g. U.S. $5 100%").split()  # fmt: skip


def _random_corpus(rng: random.Random, max_len: int = 14):
    n = rng.randint(1, 5)
    hyps = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_len))) for _ in range(n)]
    refs = [[" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_len))) for _ in range(n)]
            for _ in range(rng.randint(1, 3))]  # fmt: skip
    return hyps, refs


def _real_pairs():
    """Sentences of the course corpus and their noisy copies (dropped, swapped and repeated words)."""
    from reference.data.corpus import load_source

    rng = random.Random(1)
    text = " ".join(d.text for d in load_source("prose")[:20])
    sentences = [s.strip() for s in text.split(". ") if 30 < len(s) < 200][:60]
    hyps = []
    for s in sentences:
        words = s.split()
        i = rng.randrange(len(words))
        words = words[:i] + words[i + 1 :] if rng.random() < 0.5 else words + words[:3]
        hyps.append(" ".join(words))
    return hyps, sentences


# ----------------------------------------------------------------------------------------------
# BLEU (13.1-13.3)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("13.1")
@pytest.mark.points(2)
def test_brevity_penalty_known_values(impl):
    bp = impl.evaluation.bleu.brevity_penalty
    assert bp(10, 10) == 1.0 and bp(12, 10) == 1.0
    assert bp(5, 10) == pytest.approx(math.exp(1 - 10 / 5))
    assert bp(9, 10) == pytest.approx(math.exp(-1 / 9))
    assert bp(0, 4) == 0.0


@pytest.mark.exercise("13.1")
@pytest.mark.points(1)
def test_brevity_penalty_checks_input(impl):
    with pytest.raises(ValueError):
        impl.evaluation.bleu.brevity_penalty(-1, 3)


@pytest.mark.exercise("13.2")
@pytest.mark.points(2)
def test_modified_precision_clips_by_the_best_reference(impl):
    stats = impl.evaluation.bleu.modified_precision_stats
    # Papineni et al.'s example: "the the the the the the the" against two references
    hyp = "the the the the the the the".split()
    refs = ["the cat is on the mat".split(), "there is a cat on the mat".split()]
    matches, totals = stats(hyp, refs, 4)
    assert matches == [2, 0, 0, 0] and totals == [7, 6, 5, 4]
    matches, totals = stats("the cat the cat".split(), ["the cat".split(), "the cat the".split()], 2)
    assert matches == [3, 2] and totals == [4, 3]  # "cat" clipped to 1, "the" to 2 (max, not sum, over refs)


@pytest.mark.exercise("13.2")
@pytest.mark.points(2)
def test_modified_precision_matches_sacrebleu_statistics(impl):
    from sacrebleu.metrics import BLEU

    rng = random.Random(3)
    metric = BLEU(tokenize="none")
    for _ in range(100):
        hyps, refs = _random_corpus(rng)
        got = impl.evaluation.bleu.modified_precision_stats(hyps[0].split(), [r[0].split() for r in refs], 4)
        want = metric._extract_corpus_statistics([hyps[0]], [[r[0]] for r in refs])[0]
        assert got == (list(want[2:6]), list(want[6:10]))


@pytest.mark.exercise("13.3")
@pytest.mark.points(4)
@pytest.mark.parametrize("method", ["none", "floor", "add-k", "exp"])
def test_corpus_bleu_matches_sacrebleu_on_random_corpora(impl, method):
    rng = random.Random(hash(method) % 1000)
    for _ in range(80):
        hyps, refs = _random_corpus(rng)
        for effective in (False, True):
            want = sacrebleu.corpus_bleu(hyps, refs, smooth_method=method, use_effective_order=effective).score
            got = impl.evaluation.bleu.corpus_bleu(hyps, refs, smooth_method=method, effective_order=effective).score
            assert got == pytest.approx(want, abs=1e-6), (hyps, refs)


@pytest.mark.exercise("13.3")
@pytest.mark.points(3)
def test_sentence_bleu_matches_sacrebleu_on_real_pairs(impl):
    hyps, refs = _real_pairs()
    for method in ("exp", "floor", "add-k", "none"):
        for hyp, ref in zip(hyps, refs):
            want = sacrebleu.sentence_bleu(hyp, [ref], smooth_method=method).score
            assert impl.evaluation.bleu.sentence_bleu(hyp, [ref], smooth_method=method).score == pytest.approx(want, abs=1e-6)
    want = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert impl.evaluation.bleu.corpus_bleu(hyps, [refs]).score == pytest.approx(want, abs=1e-6)
    assert impl.evaluation.bleu.corpus_bleu(hyps, [refs], lowercase=True).score == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score, abs=1e-6)


@pytest.mark.exercise("13.3")
@pytest.mark.points(2)
def test_bleu_from_stats_smoothing_by_hand(impl):
    f = impl.evaluation.bleu.bleu_from_stats
    # 4 tokens, 3 of 4 unigrams, 1 of 3 bigrams, no trigram or 4-gram match; hypothesis as long as the reference
    m, t = [3, 1, 0, 0], [4, 3, 2, 1]
    assert f(m, t, 4, 4, "none").score == 0.0
    exp = [75.0, 100 / 3, 100 / (2 * 2), 100 / (4 * 1)]
    assert f(m, t, 4, 4, "exp").score == pytest.approx(math.exp(sum(map(math.log, exp)) / 4))
    floor = [75.0, 100 / 3, 100 * 0.1 / 2, 100 * 0.1 / 1]
    assert f(m, t, 4, 4, "floor").score == pytest.approx(math.exp(sum(map(math.log, floor)) / 4))
    addk = [75.0, 200 / 4, 100 / 3, 100 / 2]
    assert f(m, t, 4, 4, "add-k").score == pytest.approx(math.exp(sum(map(math.log, addk)) / 4))
    # effective order: a 2-token hypothesis has no 3- or 4-grams; they leave the mean instead of zeroing it
    assert f([2, 1, 0, 0], [2, 1, 0, 0], 2, 2, "none", effective_order=True).score == pytest.approx(100.0)
    assert f([2, 1, 0, 0], [2, 1, 0, 0], 2, 2, "none").score == 0.0


# ----------------------------------------------------------------------------------------------
# ROUGE (13.4, 13.5)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("13.4")
@pytest.mark.points(2)
def test_lcs_table_known_values(impl):
    table = impl.evaluation.rouge.lcs_table("A B C B D A B".split(), "B D C A B A".split())
    assert table[-1][-1] == 4  # Cormen et al.'s example: BCBA
    assert len(table) == 8 and len(table[0]) == 7 and table[0] == [0] * 7
    assert impl.evaluation.rouge.lcs_table(["x"], ["y"])[-1][-1] == 0
    assert impl.evaluation.rouge.lcs_table(list("aaaa"), list("aa"))[-1][-1] == 2


@pytest.mark.exercise("13.4")
@pytest.mark.points(4)
@pytest.mark.parametrize("stem", [False, True])
def test_rouge_matches_rouge_score(impl, stem):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    from nltk.stem.porter import PorterStemmer

    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
    rng = random.Random(5)
    words = "The cats running runs ran a dog-house sat on mats . , generalizations 3rd x".split() + ["\n"]
    pairs = [(" ".join(rng.choice(words) for _ in range(rng.randint(0, 15))),
              " ".join(rng.choice(words) for _ in range(rng.randint(0, 15)))) for _ in range(150)]  # fmt: skip
    hyps, refs = _real_pairs()
    pairs += list(zip(refs, hyps)) + [("\n".join(refs[:3]), "\n".join(hyps[:3][::-1]))]
    for ref, hyp in pairs:
        want = scorer.score(ref, hyp)
        got = impl.evaluation.rouge.rouge(ref, hyp, types, stemmer=PorterStemmer().stem if stem else None)
        for kind in types:
            for field in ("precision", "recall", "fmeasure"):
                assert getattr(got[kind], field) == pytest.approx(getattr(want[kind], field), abs=1e-9), (kind, ref, hyp)


@pytest.mark.exercise("13.5")
@pytest.mark.points(4)
def test_porter_stem_matches_nltk_original_algorithm(impl):
    import re

    from nltk.stem.porter import PorterStemmer

    from reference.data.corpus import load_source

    nltk_stem = PorterStemmer(PorterStemmer.ORIGINAL_ALGORITHM).stem
    text = " ".join(d.text for d in load_source("prose")[:40]) + " " + " ".join(d.text for d in load_source("books")[:2])
    vocab = sorted(set(re.findall("[a-z]+", text.lower())))
    assert len(vocab) > 5000
    wrong = [(w, impl.evaluation.rouge.porter_stem(w), nltk_stem(w)) for w in vocab
             if impl.evaluation.rouge.porter_stem(w) != nltk_stem(w)]  # fmt: skip
    assert not wrong, wrong[:10]


@pytest.mark.exercise("13.5")
@pytest.mark.points(2)
def test_porter_stem_paper_examples(impl):
    stem = impl.evaluation.rouge.porter_stem
    cases = {"caresses": "caress", "ponies": "poni", "cats": "cat", "feed": "feed", "agreed": "agre", "plastered": "plaster",
             "motoring": "motor", "sing": "sing", "conflated": "conflat", "hopping": "hop", "filing": "file",
             "happy": "happi", "sky": "sky", "relational": "relat", "generalizations": "gener", "adoption": "adopt",
             "controlling": "control", "rolling": "roll", "electrical": "electr", "hopefulness": "hope"}  # fmt: skip
    assert {w: stem(w) for w in cases} == cases


# ----------------------------------------------------------------------------------------------
# BERTScore (13.6, 13.7)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from reference.pretrained import minilm

    return minilm()


CANDIDATES = ["the cat sat on the mat", "hello there", "A completely different sentence about rivers.", "the the the",
              "Python lists are mutable sequences.", "word order matters not mat the on sat cat the"]  # fmt: skip
REFERENCES = ["a cat was sitting on the mat", "hi", "Rivers flow to the sea, said the king.", "the cat",
              "Lists in Python can be changed in place.", "the cat sat on the mat"]  # fmt: skip


@pytest.mark.exercise("13.6")
@pytest.mark.points(2)
def test_greedy_match_by_hand(impl):
    cand = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ref = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, -1.0]])
    p, r, f = impl.evaluation.bertscore.greedy_match(cand, ref, torch.ones(2), torch.tensor([1.0, 1.0, 2.0]))
    s = 1 / math.sqrt(2)
    assert p == pytest.approx((1.0 + s) / 2)  # each candidate row's best cosine
    assert r == pytest.approx((s + 1.0 + 2 * 0.0) / 4)  # ref [0,-1] best matches [1,0] with cos 0
    assert f == pytest.approx(2 * p * r / (p + r))


@pytest.mark.exercise("13.6")
@pytest.mark.points(4)
@pytest.mark.parametrize("idf", [False, True])
def test_bertscore_matches_bert_score_on_the_same_model(impl, minilm, idf):
    from collections import defaultdict

    utils = pytest.importorskip("bert_score.utils")
    model, tokenizer = minilm
    if idf:
        idf_dict = utils.get_idf_dict(REFERENCES, tokenizer, nthreads=1)
    else:
        idf_dict = defaultdict(lambda: 1.0)
        idf_dict[tokenizer.sep_token_id] = idf_dict[tokenizer.cls_token_id] = 0
    want = utils.bert_cos_score_idf(model, REFERENCES, CANDIDATES, tokenizer, idf_dict, device="cpu")  # (n, 3): P, R, F
    got = impl.evaluation.bertscore.bertscore(CANDIDATES, REFERENCES, model, tokenizer, idf=idf)
    for k, name in enumerate(("precision", "recall", "f1")):
        assert got[name] == pytest.approx(want[:, k].tolist(), abs=1e-5)


@pytest.mark.exercise("13.7")
@pytest.mark.points(2)
def test_idf_weights_match_bert_score(impl, minilm):
    utils = pytest.importorskip("bert_score.utils")
    _, tokenizer = minilm
    want = utils.get_idf_dict(REFERENCES, tokenizer, nthreads=1)
    ids = [tokenizer.encode(r) for r in REFERENCES]
    got = impl.evaluation.bertscore.idf_weights(ids, [tokenizer.cls_token_id, tokenizer.sep_token_id])
    assert set(got) == {i for row in ids for i in row}
    for i, w in got.items():
        assert w == pytest.approx(want[i], abs=1e-12)
    # by hand: ids 1 in both documents, 3 and 4 in one, 2 special
    assert impl.evaluation.bertscore.idf_weights([[1, 2, 3], [1, 4, 2]], [2]) == pytest.approx(
        {1: 0.0, 2: 0.0, 3: math.log(3 / 2), 4: math.log(3 / 2)})
    assert impl.evaluation.bertscore.idf_weights([[5, 6], [5]], [6])[6] == 0.0  # special even where rare
    # by hand: "the" in 4 of the 6 references -> log(7 / 5)
    the = tokenizer.convert_tokens_to_ids("the")
    assert got[the] == pytest.approx(math.log(7 / 5))


# ----------------------------------------------------------------------------------------------
# SQuAD EM / F1 (13.8, 13.9), BM25 (13.10)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("13.8")
@pytest.mark.points(2)
def test_normalize_answer_squad_rules(impl):
    n = impl.evaluation.qa.normalize_answer
    assert n("The  Eiffel-Tower!") == "eiffeltower"
    assert n("an apple, a pear and THE plum.") == "apple pear and plum"
    assert n("Theatre anathema") == "theatre anathema"  # articles only as whole words
    assert n("  1,000 (approx.)  ") == "1000 approx"


@pytest.mark.exercise("13.8")
@pytest.mark.points(1)
def test_exact_match_over_golds(impl):
    em = impl.evaluation.qa.exact_match
    assert em("the Louvre.", ["Louvre Museum", "louvre"]) == 1.0
    assert em("Louvre Museum in Paris", ["Louvre Museum", "louvre"]) == 0.0


@pytest.mark.exercise("13.9")
@pytest.mark.points(3)
def test_token_f1_hand_checked(impl):
    f1 = impl.evaluation.qa.token_f1
    # pred "the big red dog" -> [big, red, dog]; gold "a red dog barked" -> [red, dog, barked]: P = R = 2/3
    assert f1("the big red dog", ["a red dog barked"]) == pytest.approx(2 / 3)
    # multiset overlap: pred [dog, dog, dog] vs gold [dog, cat]: common 1, P 1/3, R 1/2 -> F 0.4
    assert f1("dog dog dog", ["dog cat"]) == pytest.approx(0.4)
    # pred [dog, dog, cat] vs gold [dog, dog]: common 2 (a set would say 1), P 2/3, R 1 -> F 0.8
    assert f1("dog dog cat", ["dog dog"]) == pytest.approx(0.8)
    # max over golds, not the mean
    assert f1("Denver Broncos", ["Broncos", "Denver Broncos", "Carolina"]) == pytest.approx(1.0)
    assert f1("Denver", ["Denver Broncos", "Carolina"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert f1("Denver Broncos", ["Denver Broncos", "Broncos"]) == pytest.approx(1.0)  # the best gold comes first
    # P and R from the right sides: pred 4 tokens, gold 1, 1 common: P 1/4, R 1 -> F 0.4
    assert f1("seven hundred forty two", ["seven"]) == pytest.approx(0.4)
    assert f1("", ["x"]) == 0.0 and f1("nothing in common", ["zebra"]) == 0.0


def _bm25_by_hand(docs, query, k1=1.5, b=0.75):
    tokenized = [d.lower().split() for d in docs]
    avgdl = sum(map(len, tokenized)) / len(docs)
    out = []
    for doc in tokenized:
        total = 0.0
        for t in query.lower().split():
            n = sum(t in d for d in tokenized)
            idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
            f = doc.count(t)
            total += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(total)
    return out


@pytest.mark.exercise("13.10")
@pytest.mark.points(3)
def test_bm25_scores_by_hand(impl):
    docs = ["the cat sat on the mat", "the dog chased the cat around the garden and the house",
            "a bird sang", "cat cat cat", "the the the the the"]  # fmt: skip
    index = impl.evaluation.qa.BM25(docs)
    for query in ("cat", "the cat", "bird garden", "cat cat", "zebra"):
        assert index.scores(query) == pytest.approx(_bm25_by_hand(docs, query), abs=1e-12), query
    index = impl.evaluation.qa.BM25(docs, k1=0.9, b=0.3)
    assert index.scores("the dog") == pytest.approx(_bm25_by_hand(docs, "the dog", 0.9, 0.3), abs=1e-12)
    assert index.top("cat sat", 2) == [0, 3]
    assert min(index.scores("the")) >= 0.0  # the idf of a term in most documents stays positive


# ----------------------------------------------------------------------------------------------
# pass@k (13.13), kappa (13.14, 13.15)
# ----------------------------------------------------------------------------------------------


@pytest.mark.exercise("13.13")
@pytest.mark.points(2)
def test_pass_at_k_matches_the_closed_form(impl):
    for n in range(1, 30):
        for c in range(n + 1):
            for k in range(1, n + 1):
                want = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert impl.evaluation.harness.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
    assert impl.evaluation.harness.pass_at_k(200, 3, 1) == pytest.approx(3 / 200)
    assert 0 < impl.evaluation.harness.pass_at_k(2000, 1, 100) < 1  # large n: no overflow


@pytest.mark.exercise("13.13")
@pytest.mark.points(1)
def test_pass_at_k_checks_input(impl):
    with pytest.raises(ValueError):
        impl.evaluation.harness.pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        impl.evaluation.harness.pass_at_k(5, 1, 6)


@pytest.mark.exercise("13.14")
@pytest.mark.points(3)
def test_cohen_kappa_matches_sklearn(impl):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    for trial in range(200):
        labels = ["A", "B", "tie", "x"][: rng.randint(2, 4)]
        n = rng.randint(2, 40)
        r1 = [rng.choice(labels) for _ in range(n)]
        r2 = [a if rng.random() < 0.6 else rng.choice(labels) for a in r1]
        if len(set(r1) | set(r2)) == 1:
            continue
        assert impl.evaluation.human.cohen_kappa(r1, r2) == pytest.approx(metrics.cohen_kappa_score(r1, r2), abs=1e-12)
    # by hand: 50 items, agree on 20 yes and 15 no; rater 1 says yes 25 times, rater 2 30 times
    r1 = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    r2 = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert impl.evaluation.human.cohen_kappa(r1, r2) == pytest.approx((0.7 - 0.5) / 0.5)


@pytest.mark.exercise("13.15")
@pytest.mark.points(3)
def test_fleiss_kappa_hand_computed(impl):
    # Fleiss (1971)'s worked example as tabulated on Wikipedia: 10 items, 14 raters, 5 categories, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip
    assert impl.evaluation.human.fleiss_kappa(table) == pytest.approx(0.20993070442195522, abs=1e-12)
    # two raters: P_bar is the agreement rate and P_e uses the pooled shares (Scott's pi)
    assert impl.evaluation.human.fleiss_kappa([[2, 0], [0, 2], [1, 1], [2, 0]]) == pytest.approx(
        (0.75 - (5 / 8) ** 2 - (3 / 8) ** 2) / (1 - (5 / 8) ** 2 - (3 / 8) ** 2))
    with pytest.raises(ValueError):
        impl.evaluation.human.fleiss_kappa([[2, 0], [1, 0]])
