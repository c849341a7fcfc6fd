"""Chapter 4: the cleaning pipeline — stages in a chain, per-stage statistics, the whole chain on planted data.

Oracles: counts of documents, words and bytes computed by hand for toy stages; planted exact
duplicates and personal data that the chain must drop and scrub.

The plausible bugs these tests catch (each planted by `python -m tests.run_mutants --chapter 4`):
- 4.9 stages not chained; words after a stage counted on its input; characters counted as bytes;
  every kept document counted as changed; one example too many.
"""

from __future__ import annotations

import dataclasses

import pytest

from reference.data import corpus
from reference.data.corpus import Document


def _doc(text: str, title: str = "t") -> Document:
    return Document(text, "prose", title, "test")


@pytest.mark.exercise("4.9")
@pytest.mark.points(2)
def test_pipeline_counts_by_hand(impl):
    p = impl.data.pipeline
    drop_x = p.Stage("no x", lambda d: "has x" if "x" in d.text else d)
    shout = p.Stage("shout", lambda d: dataclasses.replace(d, text=d.text.upper() + " !") if "b" in d.text else d)
    docs = [_doc("a b", "one"), _doc("x y z", "two"), _doc("çé", "three"), _doc("x", "four")]  # ç, é: 2 bytes each
    kept, stats = p.Pipeline([drop_x, shout]).run(docs, progress=False)
    assert [d.text for d in kept] == ["A B !", "çé"]
    first, second = stats
    assert (first.name, first.documents_in, first.documents_out, first.documents_dropped) == ("no x", 4, 2, 2)
    assert (first.words_in, first.words_out, first.bytes_in, first.bytes_out) == (7, 3, 13, 7)
    assert first.reasons == {"has x": 2} and first.changed == 0
    assert first.examples == {"kept": ["one", "three"], "dropped: has x": ["two", "four"]}
    assert (second.documents_in, second.documents_out, second.changed, second.reasons) == (2, 2, 1, {})
    assert (second.words_in, second.words_out, second.bytes_in, second.bytes_out) == (3, 4, 7, 9)
    assert p.Pipeline([drop_x]).run(docs, progress=False, examples=1)[1][0].examples == {
        "kept": ["one"],
        "dropped: has x": ["two"],
    }


@pytest.mark.exercise("4.9")
@pytest.mark.points(1)
def test_pipeline_streams_stateful_stages_in_order(impl):
    p = impl.data.pipeline
    seen = []
    record = p.Stage("record", lambda d: seen.append(d.title) or d)
    kept, stats = p.Pipeline([record, p.exact_dedup_stage()]).run(
        [_doc("Same text", "a"), _doc("same  TEXT", "b"), _doc("other", "c")], progress=False
    )
    assert seen == ["a", "b", "c"] and [d.title for d in kept] == ["a", "c"]
    assert stats[1].reasons == {"exact duplicate": 1}
    kept, stats = p.Pipeline([record]).run([], progress=False)
    assert kept == [] and stats[0].documents_in == stats[0].words_out == 0


@pytest.mark.exercise("4.9")
@pytest.mark.points(1)
def test_pipeline_bad_input(impl):
    p = impl.data.pipeline
    with pytest.raises(ValueError, match="distinct"):
        p.Pipeline([p.Stage("a", lambda d: d), p.Stage("a", lambda d: d)])
    with pytest.raises(TypeError, match="documents\\[1\\]"):
        p.Pipeline([p.Stage("a", lambda d: d)]).run([_doc("ok"), "not a document"], progress=False)
    with pytest.raises(TypeError, match="'bad'"):
        p.Pipeline([p.Stage("bad", lambda d: 42)]).run([_doc("ok")], progress=False)


@pytest.mark.exercise("4.9")
@pytest.mark.points(2)
def test_chapter_pipeline_on_planted_corpus(impl):
    p = impl.data.pipeline
    prose = corpus.load_source("prose")[:40]
    secret = dataclasses.replace(prose[3], text=prose[3].text + "\nWrite to carol@example.com about it.\n", title="with PII")
    docs = [_doc("Too short.", "short"), *prose, prose[5], prose[7], secret]
    chain = p.Pipeline([p.quality_stage(), p.exact_dedup_stage(), p.near_dedup_stage(), p.privacy_stage(), p.toxicity_stage()])
    kept, stats = chain.run(docs, progress=False)
    by_name = {s.name: s for s in stats}
    assert by_name["quality rules"].reasons["quality: word count"] >= 1
    assert "short" in by_name["quality rules"].examples["dropped: quality: word count"]
    assert by_name["exact dedup"].reasons["exact duplicate"] == 2
    assert by_name["near dedup"].reasons["near duplicate"] >= 1  # the copy of topic 3 with an address added
    assert all("carol@example.com" not in d.text for d in kept)
    assert [s.documents_out for s in stats] == sorted((s.documents_out for s in stats), reverse=True)
    table = p.stats_table(stats)
    assert all(s.name in table for s in stats)


class _CountsX:
    """A stand-in classifier: probability 1 for a text with at least five words "x", else 0."""

    def predict_proba(self, texts):
        import numpy as np

        return np.array([float(t.split().count("x") >= 5) for t in texts])


@pytest.mark.exercise("4.9")
@pytest.mark.points(1)
def test_classifier_stage_scores_whole_documents_or_windows(impl):
    p = impl.data.pipeline
    text = " ".join(["x"] * 20 + ["a"] * 80)  # 100 words: one dense stretch, then clean text
    whole = p.Pipeline([p.classifier_stage(_CountsX(), 0.5, "noise")]).run([_doc(text)], progress=False)
    windowed = p.Pipeline([p.classifier_stage(_CountsX(), 0.5, "noise", window_words=10)]).run([_doc(text)], progress=False)
    assert whole[0] == [] and whole[1][0].reasons == {"noise >= 0.5": 1}  # the whole document has 20 x's
    assert len(windowed[0]) == 1  # 2 of its 10 windows are noisy: mean 0.2 < 0.5
    with pytest.raises(ValueError, match="window_words"):
        p.classifier_stage(_CountsX(), window_words=0)
