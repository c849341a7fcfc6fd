"""`reference.pretrained`: models loaded offline from installed packages.

A data loader, not an exercise: like the course machinery, it is tested directly and the same
way under both implementations.
"""

from __future__ import annotations

import torch

from reference.pretrained import minilm


def test_minilm_loads_offline_and_embeds():
    model, tokenizer = minilm()
    assert model.config.num_hidden_layers == 6 and model.config.num_attention_heads == 12
    batch = tokenizer(["a cat sat on the mat", "a kitten rested on the rug", "stock prices fell"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (batch, seq, 384)
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2, sim  # a trained model, not random weights


# ----------------------------------------------------------------------------------------------
# The course's own models (Chapter 6): shipped assets and the code that builds and loads them
# ----------------------------------------------------------------------------------------------

import math  # noqa: E402

import pytest  # noqa: E402

import reference  # noqa: E402
from reference.data import corpus  # noqa: E402
from reference.models import BertForMaskedLM, TransformerLM  # noqa: E402
from reference.pretrained import COURSE_MODELS, load_pretrained, model_card  # noqa: E402
from reference.training import assets  # noqa: E402
from reference.training.objectives import masked_language_modeling  # noqa: E402


def test_weights_round_trip_in_bfloat16_with_tied_tensors(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(50, 16, 16, 1, 2, 24, tie_embeddings=True)
    assets.save_weights(model, tmp_path / "w.safetensors")
    fresh = TransformerLM(50, 16, 16, 1, 2, 24, tie_embeddings=True)
    assets.load_weights(fresh, tmp_path / "w.safetensors")
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    assert fresh.lm_head.weight is fresh.token_embeddings.weight
    with pytest.raises(ValueError, match="shape"):
        assets.load_weights(TransformerLM(51, 16, 16, 1, 2, 24, tie_embeddings=True), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="missing"):
        assets.load_weights(TransformerLM(50, 16, 16, 2, 2, 24, tie_embeddings=True), tmp_path / "w.safetensors")


def test_validation_documents_are_held_out_per_source():
    documents = corpus.load_corpus()
    train_docs, val_docs = assets.split_documents(documents)
    assert len(train_docs) + len(val_docs) == len(documents)
    assert {id(d) for d in train_docs}.isdisjoint(id(d) for d in val_docs)
    for source in corpus.SOURCES:
        total = sum(d.source == source for d in documents)
        assert sum(d.source == source for d in val_docs) == math.ceil(total / assets.VALIDATION_EVERY)


def test_building_an_asset_is_deterministic(tmp_path):
    """The whole chain, shrunk: two builds from scratch write byte-identical weights and tokenizers."""
    cards = [assets.build_asset("llama-tiny", tmp_path / f"run{i}", progress=False, mix_bytes=400_000, max_iters=2)
             for i in range(2)]  # fmt: skip
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / "run0" / "llama-tiny" / name).read_bytes() == (tmp_path / "run1" / "llama-tiny" / name).read_bytes()
    assert cards[0]["training_tokens"] == 2 * 16 * 256 and set(cards[0]["validation_by_source"]) == set(corpus.SOURCES)
    with pytest.raises(ValueError, match="unknown asset"):
        assets.build_asset("gpt-5", tmp_path)
    with pytest.raises(ValueError, match="too little text"):
        assets.build_asset("llama-tiny", tmp_path / "small", progress=False, mix_bytes=50_000, max_iters=2)


def _held_out_tokens(tokenizer, source: str = "books", limit: int = 60_000) -> torch.Tensor:
    _, val_docs = assets.split_documents(corpus.load_corpus())
    text = assets.SEPARATOR.join(d.text for d in val_docs if d.source == source)[:limit]
    return torch.tensor(tokenizer.encode(text))


@pytest.fixture(scope="module")
def unigram_log_probs():
    """A unigram model of the course tokenizer's ids, fitted on 1 MB of the training mixture (add-one smoothing)."""
    _, tokenizer = load_pretrained("llama-tiny")
    train_docs, _ = assets.split_documents(corpus.load_corpus())
    text = assets.SEPARATOR.join(d.text for d in corpus.mix(train_docs, assets.MIXTURE, 1_000_000, seed=0))
    counts = torch.bincount(torch.tensor(tokenizer.encode(text)), minlength=tokenizer.vocab_size).double()
    return ((counts + 1) / (counts.sum() + tokenizer.vocab_size)).log()


@pytest.mark.parametrize("name", COURSE_MODELS)
def test_shipped_models_load_offline_with_their_card(name):
    model, tokenizer = load_pretrained(name)
    card = model_card(name)
    assert not model.training and sum(p.numel() for p in model.parameters()) == card["parameters"]
    assert tokenizer.vocab_size == model.vocab_size == card["tokenizer"]["vocab_size"]
    assert card["training_tokens"] > 1_000_000
    assert tokenizer.decode(tokenizer.encode("To be, or not to be: that is the question.")) == "To be, or not to be: that is the question."
    again, _ = reference.load_pretrained(name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_shipped_decoder_beats_a_unigram_model_and_generates(unigram_log_probs):
    model, tokenizer = load_pretrained("llama-tiny")
    assert isinstance(model, TransformerLM)
    tokens = _held_out_tokens(tokenizer)
    windows = tokens[: (len(tokens) // 257) * 257].view(-1, 257)[:24]
    with torch.no_grad():
        logits = model(windows[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    unigram = -unigram_log_probs[windows[:, 1:]].mean().item()  # held-out loss of the unigram model
    assert loss < unigram - 1.0, (loss, unigram)  # measured: 4.92 against 6.60 nats/token
    prompt = torch.tensor([tokenizer.encode("ROMEO\n")])
    out = model.generate(prompt, 20, temperature=0.8, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, prompt.shape[1] + 20) and isinstance(tokenizer.decode(out[0].tolist()), str)


def test_shipped_encoder_fills_masks_better_than_a_unigram_model(unigram_log_probs):
    model, tokenizer = load_pretrained("bert-tiny")
    assert isinstance(model, BertForMaskedLM)
    tokens = _held_out_tokens(tokenizer)
    windows = tokens[: (len(tokens) // 128) * 128].view(-1, 128)[:32]
    special = [tokenizer.token_to_id(t) for t in assets.SPECIAL_TOKENS]
    inputs, targets, chosen = masked_language_modeling(windows, torch.Generator().manual_seed(0),
                                                       tokenizer.token_to_id("[MASK]"), tokenizer.vocab_size,
                                                       special_ids=special)  # fmt: skip
    with torch.no_grad():
        logits = model(inputs)
    loss = torch.nn.functional.cross_entropy(logits[chosen], targets[chosen]).item()
    unigram = -unigram_log_probs[targets[chosen]].mean().item()
    assert loss < unigram - 0.4, (loss, unigram)  # measured: 5.80 against 6.53 nats/token


def test_readme_model_cards_match_the_shipped_configs():
    import re
    from pathlib import Path

    from reference.pretrained import model_card_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- model-cards:begin -->\n(.*?)\n<!-- model-cards:end -->", readme, re.S)
    assert section, "README has the model cards between their markers"
    assert section.group(1).strip() == model_card_markdown(), "README's model cards: paste reference.pretrained.model_card_markdown()"
