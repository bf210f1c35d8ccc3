"""Themes: keywords extracted per poem, read by the model before the start token but never scored,
dropped for a fixed share of poems, and fed to the decoder before the start token."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tangshi_pipeline.pipelines.data_processing.nodes import extract_keywords
from tangshi_pipeline.pipelines.generate.nodes import GenerationError, generate_poems
from tangshi_pipeline.poet.artifact import Artifact
from tangshi_pipeline.poet.batching import Buckets, themed_sequences
from tangshi_pipeline.poet.decoding import Decoder
from tangshi_pipeline.poet.model import nll
from tangshi_pipeline.poet.params import GenerateParams, parse
from tangshi_pipeline.poet.vocab import END_ID, PAD_ID, START_ID
from tests.helpers import shipped_params
from tests.helpers_models import POEMS, keywords_of, pingshui_prosody, tiny_model, vectors_of, vocab_of

# Four poems: every term held by two of them (the rest by one, below min_df) has the same idf, so a
# term's score is its count in the text plus 3 × its count in the title.
FIXTURE = pd.DataFrame({"id": ["a", "b", "c", "d"], "title": ["秋月", "山行", "江雪", "江村"],
                        "text": ["秋月照山。", "山中秋月。", "江上雪飞。", "江村雪夜。"]})
SETTINGS = {"per_poem": 2, "title_weight": 3, "min_df": 2, "max_df": 0.5, "word_association": 0.5}


def test_keywords_are_the_best_tf_idf_terms_of_title_and_text():
    vocab = vocab_of(FIXTURE["text"].tolist())
    table, report = extract_keywords(FIXTURE, vocab.to_json(), SETTINGS)
    # a: 秋月 (1 + 3·1) beats 山 (1); 秋 and 月 give way to the word. b: 山 (1 + 3) before 秋月 (1).
    # c: 江 and 雪 tie (1 + 3 each): by code point. d: 江 (1 + 3) before 雪 (1); 村 is in one poem only.
    assert table["keywords"].map(list).tolist() == [["秋月", "山"], ["山", "秋月"], ["江", "雪"], ["江", "雪"]]
    index = vocab.index
    assert table["keyword_ids"].map(list).tolist()[0] == [index["秋"], index["月"], index["山"]]
    assert report["words"] == 2 and report["with_keywords"] == 4
    none, _ = extract_keywords(FIXTURE, vocab.to_json(), {**SETTINGS, "min_df": 3})
    assert none["keywords"].map(len).sum() == 0 and none["keyword_ids"].map(len).sum() == 0


def test_a_word_needs_its_association_and_a_term_at_most_max_df():
    vocab = vocab_of(FIXTURE["text"].tolist())
    table, _ = extract_keywords(FIXTURE, vocab.to_json(), {**SETTINGS, "word_association": 1.01})
    assert table["keywords"].map(list).tolist()[0] == ["月", "秋"]  # no word: its characters (tie: code point)
    table, _ = extract_keywords(FIXTURE, vocab.to_json(), {**SETTINGS, "max_df": 0.25})
    assert table["keywords"].map(len).sum() == 0  # every candidate is in 2 of the 4 poems


VOCAB = vocab_of(POEMS)
VECTORS = vectors_of(VOCAB, POEMS, ["train"] * 5)
KEYWORDS = keywords_of(VOCAB, [["明月"], ["山", "海"], ["山"], ["秋"], ["雪", "江"]])


def test_the_keyword_prefix_is_read_but_not_scored():
    seqs, skips = themed_sequences(VECTORS, "train", KEYWORDS)
    assert skips == [2, 2, 1, 1, 2]
    assert [list(s[:k + 1]) for s, k in zip(seqs, skips)][0] == [VOCAB.index["明"], VOCAB.index["月"], START_ID]
    buckets = Buckets(seqs, 8, skips=skips)
    plain = Buckets([np.asarray(ids) for ids in VECTORS["ids"]], 8)
    assert buckets.tokens == plain.tokens  # the same targets are predicted: the poem and its end token
    model = tiny_model(len(VOCAB))
    total, expected = 0.0, 0.0
    with torch.no_grad():
        for batch in buckets.ordered():
            total += float(nll(model(batch.inputs)[0], batch.targets))
    for seq, skip in zip(seqs, skips):  # by hand: logits after the start token, against the poem
        with torch.no_grad():
            logits = model(torch.as_tensor(seq[None, :-1], dtype=torch.long))[0][0, skip:]
        expected += float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(seq[skip + 1:]).long(),
                                                            reduction="sum"))
    assert total == pytest.approx(expected, rel=1e-5)
    batch = next(buckets.ordered())
    assert (batch.targets[:, 0] == PAD_ID).all()  # every prefix's first target is unscored


def test_keyword_dropout_is_fixed_per_poem_and_a_share_of_them():
    many = pd.concat([VECTORS.assign(id=VECTORS["id"] + f"-{i}") for i in range(100)], ignore_index=True)
    words = pd.concat([KEYWORDS.assign(id=KEYWORDS["id"] + f"-{i}") for i in range(100)], ignore_index=True)
    _, skips = themed_sequences(many, "train", words, dropout=0.25, seed=7)
    assert themed_sequences(many, "train", words, dropout=0.25, seed=7)[1] == skips  # the same every time
    dropped = np.mean([s == 0 for s in skips])
    assert 0.17 < dropped < 0.33
    assert themed_sequences(many, "train", words, dropout=0.25, seed=8)[1] != skips  # the seed chooses
    assert not any(themed_sequences(many, "train", words, dropout=1.0)[1])
    assert all(themed_sequences(many, "train", words, dropout=0.0)[1])


@pytest.fixture(scope="module")
def poet():
    vocab, prosody, lexicon, rhyme = pingshui_prosody()
    model = tiny_model(len(vocab), seed=3)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.mul_(8)  # sharper distributions: the prefix visibly changes the greedy poems
    return model, vocab, prosody, lexicon, rhyme


def _greedy_after(model, vocab, prefix: str, begin: str, length: int) -> str:
    """The classic re-feeding loop, with ``prefix`` before the start token: the reference."""
    ids = [vocab.index[c] for c in prefix] + [START_ID, vocab.index[begin]]
    never = torch.tensor([PAD_ID, 1, START_ID, END_ID])
    with torch.inference_mode():
        while len(ids) - len(prefix) - 1 < length:
            last = model(torch.tensor([ids]))[0][0, -1].clone()
            last[never] = -torch.inf
            ids.append(int(last.argmax()))
    return vocab.decode(ids[len(prefix):])


def test_the_decoder_reads_the_keywords_before_the_start_token(poet):
    model, vocab, prosody, *_ = poet
    decoder = Decoder(model, vocab, prosody)
    p = parse(GenerateParams, "generate", {**shipped_params("generate"), "max_length": 8, "keywords": ["秋", "明月"],
                                          "keyword_boost": 0})  # the conditioning alone
    themed = decoder.generate(["山", "江"], [None, None], p)
    assert themed.texts == [_greedy_after(model, vocab, "秋明月", b, 8) for b in ("山", "江")]
    plain = decoder.generate(["山", "江"], [None, None], p.model_copy(update={"keywords": []}))
    assert plain.texts == [_greedy_after(model, vocab, "", b, 8) for b in ("山", "江")]
    assert themed.texts != plain.texts


def test_keywords_asked_of_a_model_without_themes_name_its_version(poet):
    model, vocab, _, lexicon, rhyme = poet
    old = Artifact(model, {"vocab_fingerprint": vocab.fingerprint}, version="2026-01-01T00.00.00.000Z")
    vectors = vectors_of(vocab, [], [])
    params = {**shipped_params("generate"), "begin_words": ["山"], "keywords": ["秋"]}
    with pytest.raises(GenerationError, match="model version 2026-01-01T00.00.00.000Z was trained without themes"):
        generate_poems(old, vocab.to_json(), lexicon, rhyme, vectors, params)
    with pytest.raises(GenerationError, match="generate.keywords: 'xy' is not made of characters"):
        generate_poems(old, vocab.to_json(), lexicon, rhyme, vectors, {**params, "keywords": ["xy"]})
    themed = Artifact(model, {"vocab_fingerprint": vocab.fingerprint, "themes": {"keyword_dropout": 0.25}})
    records, page = generate_poems(themed, vocab.to_json(), lexicon, rhyme, vectors, params)
    assert records[0]["settings"]["keywords"] == ["秋"] and "theme 秋" in page


@pytest.mark.parametrize("form", ["free", "wujue"])
def test_beam_search_reads_the_keywords_too(poet, form):
    # beam size 1 is greedy: with a theme as without one
    model, vocab, prosody, *_ = poet
    decoder = Decoder(model, vocab, prosody)
    p = parse(GenerateParams, "generate", {**shipped_params("generate"), "max_length": 8, "form": form,
                                          "keywords": ["秋", "明月"], "keyword_boost": 0})  # beam is not boosted
    greedy = decoder.generate(["山", "江"], [None, None], p)
    beam = decoder.generate(["山", "江"], [None, None], p.model_copy(update={"strategy": "beam", "beam_size": 1}))
    assert beam.texts == greedy.texts and beam.scores == pytest.approx(greedy.scores, abs=1e-5)


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_the_keyword_boost_brings_each_theme_character_in_once_and_leaves_the_score_alone(poet, strategy):
    model, vocab, prosody, *_ = poet
    decoder = Decoder(model, vocab, prosody)
    base = {**shipped_params("generate"), "max_length": 12, "strategy": strategy, "beam_size": 2,
            "keywords": ["秋", "明月"]}
    plain = decoder.generate(["山", "江"], [None, None], parse(GenerateParams, "generate", {**base, "keyword_boost": 0}))
    p = parse(GenerateParams, "generate", {**base, "keyword_boost": 10})
    boosted = decoder.generate(["山", "江"], [None, None], p)
    assert plain.texts != boosted.texts
    for text, score in zip(boosted.texts, boosted.scores):
        assert [text.count(c) for c in "秋明月"] == [1, 1, 1], text  # once each: the nudge stops when written
        # the score is still the model's own: the text's mean log-probability after the keywords
        ids = [vocab.index[c] for c in "秋明月"] + [START_ID] + [vocab.index[c] for c in text]
        with torch.no_grad():
            logp = model(torch.tensor([ids]))[0][0].log_softmax(-1)
        own = [float(logp[i, ids[i + 1]]) for i in range(3, len(ids) - 1)]
        assert score == pytest.approx(sum(own) / len(own), abs=1e-5)


def test_beam_search_is_not_steered_by_the_keyword_boost(poet):
    model, vocab, prosody, *_ = poet
    decoder = Decoder(model, vocab, prosody)
    base = {**shipped_params("generate"), "max_length": 12, "strategy": "beam", "beam_size": 2, "keywords": ["秋"]}
    runs = [decoder.generate(["山"], [None], parse(GenerateParams, "generate", {**base, "keyword_boost": b})).texts
            for b in (0, 10)]
    assert runs[0] == runs[1]
